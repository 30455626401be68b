"""Benchmarks: Lightning DB side by side with its peers (RocksDB via rocksdict,
LMDB, LevelDB via plyvel, SQLite) on LevelDB's db_bench workloads.

Run ``python -m bench.run --quick`` (or ``make bench``); see bench/run.py.
Not part of the installed package.
"""
