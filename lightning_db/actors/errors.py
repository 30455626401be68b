"""Errors of the actor runtime (any process). They are defined in
``lightning_db.errors`` with the rest of the taxonomy and registered with the
mailbox, so they cross process boundaries as themselves; their names are
part of the wire format."""

from __future__ import annotations

from ..errors import ActorDead, ActorStartError, PlacementRefused, PoisonMessage

__all__ = ["ActorStartError", "ActorDead", "PoisonMessage", "PlacementRefused"]
