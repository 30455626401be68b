"""``python -m lightning_db.stress``: the same as ``lightning-db stress``."""

import sys

from .run import main

sys.exit(main())
