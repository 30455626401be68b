"""Sharding: the hash ring that maps keys to shards (and, as it grows, the
shard actor, the router and cross-shard commit)."""
