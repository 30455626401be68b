"""One shard's storage engine: a pure library (no processes, sockets or zmq)."""
