"""The Redis-protocol (RESP2/RESP3) server: ``lightning-db serve``.

serve.py starts the database and the front-end processes (frontend.py)
that share the port; resp.py frames requests and replies; dispatch.py runs
a request through the command table (commands.py, with the handlers in
strings.py, keyspace.py, admin.py and multi.py) against a ``Store``
(store.py: the database, or one transaction for MULTI/EXEC).

Nothing is imported here, so ``python -m lightning_db.server.serve`` runs
its module once; import ``lightning_db.server.serve`` for ``serve``/``main``.
"""
