"""Every string and keyspace command through redis-py (with hiredis) against
a server started by the test; return values and error texts as the Redis
documentation gives them."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from tests.waiting import wait_until


def error(fn, *args, **kw) -> str:
    """The text of the error reply (redis-py drops a leading 'ERR ')."""
    with pytest.raises(redis.ResponseError) as info:
        fn(*args, **kw)
    return str(info.value)


def test_hiredis_parser_is_in_use(r):
    from redis.utils import HIREDIS_AVAILABLE
    assert HIREDIS_AVAILABLE


# --- strings ----------------------------------------------------------------------------------


def test_get_set_and_conditions(r):
    assert r.get("k") is None
    assert r.set("k", "v") is True
    assert r.get("k") == b"v"
    assert r.set("k", "w", nx=True) is None and r.get("k") == b"v"
    assert r.set("missing", "v", xx=True) is None and r.exists("missing") == 0
    assert r.set("k", "w", xx=True) is True and r.get("k") == b"w"
    assert r.set("k", "new", get=True) == b"w"
    assert r.set("fresh", "x", get=True) is None and r.get("fresh") == b"x"
    assert r.set("k", "z", nx=True, get=True) == b"new" and r.get("k") == b"new"
    assert r.set("bin", b"\x00\xff\r\n") and r.get("bin") == b"\x00\xff\r\n"
    assert r.set("empty", "") and r.get("empty") == b""


def test_set_errors(r):
    assert error(r.execute_command, "SET", "k") == "wrong number of arguments for 'set' command"
    assert error(r.execute_command, "SET", "k", "v", "NX", "XX") == "syntax error"
    assert error(r.execute_command, "SET", "k", "v", "EX", "10", "PX", "100") == "syntax error"
    assert error(r.execute_command, "SET", "k", "v", "KEEPTTL", "EX", "10") == "syntax error"
    assert error(r.execute_command, "SET", "k", "v", "EX") == "syntax error"
    assert error(r.execute_command, "SET", "k", "v", "FOO") == "syntax error"
    assert error(r.execute_command, "SET", "k", "v", "EX", "abc") == "value is not an integer or out of range"
    assert error(r.execute_command, "SET", "k", "v", "EX", "0") == "invalid expire time in 'set' command"
    assert error(r.execute_command, "SET", "k", "v", "PX", "-5") == "invalid expire time in 'set' command"
    assert r.exists("k") == 0


def test_setnx_getset_getdel_mget_mset(r):
    assert r.setnx("a", "1") is True and r.setnx("a", "2") is False and r.get("a") == b"1"
    assert r.getset("a", "3") == b"1" and r.get("a") == b"3"
    assert r.getset("nope", "x") is None and r.get("nope") == b"x"
    assert r.getdel("a") == b"3" and r.exists("a") == 0
    assert r.getdel("a") is None
    assert r.mset({"m1": "a", "m2": "b"}) is True
    assert r.mget("m1", "zz", "m2") == [b"a", None, b"b"]
    assert error(r.execute_command, "MSET", "m1") == "wrong number of arguments for 'mset' command"
    assert error(r.execute_command, "MSET", "m1", "a", "m2") == "wrong number of arguments for 'mset' command"
    assert r.msetnx({"n1": "a", "n2": "b"}) is True
    assert r.msetnx({"n2": "c", "n3": "d"}) is False
    assert r.mget("n2", "n3") == [b"b", None]


def test_append_strlen_getrange_setrange(r):
    assert r.append("s", "Hello") == 5
    assert r.append("s", " World") == 11
    assert r.get("s") == b"Hello World" and r.strlen("s") == 11 and r.strlen("none") == 0
    r.set("t", "This is a string")
    assert r.getrange("t", 0, 3) == b"This"
    assert r.getrange("t", -3, -1) == b"ing"
    assert r.getrange("t", 0, -1) == b"This is a string"
    assert r.getrange("t", 10, 100) == b"string"
    assert r.getrange("t", 5, 3) == b"" and r.getrange("none", 0, -1) == b""
    assert r.execute_command("SUBSTR", "t", 0, 3) == b"This"
    assert r.setrange("s", 6, "Redis") == 11 and r.get("s") == b"Hello Redis"
    assert r.setrange("z", 6, "Redis") == 11 and r.get("z") == b"\x00" * 6 + b"Redis"
    assert r.setrange("never", 3, "") == 0 and r.exists("never") == 0
    assert error(r.setrange, "s", -1, "x") == "offset is out of range"
    assert error(r.setrange, "s", 1 << 30, "x") == "string exceeds maximum allowed size (proto-max-bulk-len)"
    assert error(r.getrange, "t", "a", 1) == "value is not an integer or out of range"


def test_counters(r):
    assert r.incr("c") == 1
    r.set("c", "10")
    assert r.incr("c") == 11 and r.incrby("c", 5) == 16 and r.decr("c") == 15 and r.decrby("c", 20) == -5
    assert r.get("c") == b"-5"
    for bad in ("abc", " 1", "01", "1.5", "99999999999999999999"):
        r.set("bad", bad)
        assert error(r.incr, "bad") == "value is not an integer or out of range"
    assert error(r.incrby, "c", "x") == "value is not an integer or out of range"
    r.set("big", str(2**63 - 1))
    assert error(r.incr, "big") == "increment or decrement would overflow"
    assert error(r.decrby, "c", -(2**63)) == "decrement would overflow"
    r.set("f", "10.50")
    assert r.incrbyfloat("f", 0.1) == pytest.approx(10.6) and r.get("f") == b"10.6"
    assert r.incrbyfloat("f", -5) == pytest.approx(5.6) and r.get("f") == b"5.6"
    r.set("f", "5.0e3")
    assert r.incrbyfloat("f", "2.0e2") == 5200 and r.get("f") == b"5200"
    r.set("bad", "1.5x")
    assert error(r.incrbyfloat, "bad", 1) == "value is not a valid float"
    assert error(r.incrbyfloat, "f", "x") == "value is not a valid float"
    r.set("h", "1")
    assert r.incrbyfloat("h", "0x10") == 17 and r.incrbyfloat("h", "-0x1.8p1") == 14    # strtold reads hex too
    assert error(r.incrbyfloat, "h", "0x") == "value is not a valid float"


def test_concurrent_increments_are_atomic(server, r):
    clients = [server.client() for _ in range(4)]

    def work(c):
        for _ in range(40):
            c.incr("shared")
            c.append("log", "x")

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert r.get("shared") == b"160" and r.strlen("log") == 160
    for c in clients:
        c.close()


def test_database_limits_answer_errors(r):
    assert error(r.set, "", "v").startswith("key must be 1 to")
    assert error(r.set, "k" * 70000, "v").startswith("key must be 1 to")


# --- expiry -----------------------------------------------------------------------------------


def test_set_expiry_options(r):
    assert r.set("e", "v", ex=100) and 80 <= r.ttl("e") <= 100
    assert r.set("e", "v", px=100000) and 80000 < r.pttl("e") <= 100000
    at = int(time.time()) + 200
    assert r.set("e", "v", exat=at) and r.expiretime("e") == at
    at_ms = int(time.time() * 1000) + 300000
    assert r.set("e", "v", pxat=at_ms) and r.pexpiretime("e") == at_ms
    assert r.set("e", "v2", keepttl=True) and r.pexpiretime("e") == at_ms and r.get("e") == b"v2"
    assert r.set("e", "v3") and r.ttl("e") == -1
    assert r.set("past", "v", exat=1) is True and r.get("past") is None
    assert r.execute_command("SETEX", "sx", 100, "v") and 80 <= r.ttl("sx") <= 100
    assert r.execute_command("PSETEX", "psx", 100000, "v") and 80000 < r.pttl("psx") <= 100000
    assert error(r.execute_command, "SETEX", "sx", 0, "v") == "invalid expire time in 'setex' command"
    assert error(r.execute_command, "PSETEX", "sx", -1, "v") == "invalid expire time in 'psetex' command"


def test_keys_expire(r):
    r.set("short", "v", px=150)
    r.set("stays", "v")
    wait_until(lambda: r.get("short") is None, timeout=20, what="the key to expire")
    assert r.exists("short") == 0 and r.ttl("short") == -2 and r.get("stays") == b"v"
    assert b"short" not in r.keys("*")


def test_expire_family_ttl_persist(r):
    r.set("k", "v")
    assert r.ttl("k") == -1 and r.pttl("k") == -1 and r.ttl("none") == -2 and r.pttl("none") == -2
    assert r.expiretime("k") == -1 and r.expiretime("none") == -2
    assert r.expire("k", 100) is True and 80 <= r.ttl("k") <= 100
    assert r.expire("none", 100) is False
    assert r.pexpire("k", 50000) is True and 30000 < r.pttl("k") <= 50000
    at = int(time.time()) + 1000
    assert r.expireat("k", at) is True and r.expiretime("k") == at
    at_ms = int(time.time() * 1000) + 2_000_000
    assert r.pexpireat("k", at_ms) is True and r.pexpiretime("k") == at_ms
    assert r.expire("k", 10, nx=True) is False
    assert r.expire("k", 10, xx=True) is True and r.ttl("k") <= 10
    assert r.expire("k", 5, gt=True) is False and r.expire("k", 500, gt=True) is True
    assert r.expire("k", 1000, lt=True) is False and r.expire("k", 50, lt=True) is True
    assert r.persist("k") is True and r.ttl("k") == -1 and r.persist("k") is False
    assert r.persist("none") is False
    assert r.expire("k", 100, gt=True) is False and r.expire("k", 100, lt=True) is True
    r.append("k", "w")                                   # in-place changes keep the expiry
    r.setrange("k", 0, "V")
    assert r.get("k") == b"Vw" and r.ttl("k") > 0
    r.set("n", "1", ex=100)
    r.incr("n")
    assert r.ttl("n") > 0
    assert r.getset("n", "5") == b"2" and r.ttl("n") == -1
    assert r.expire("k", -1) is True and r.exists("k") == 0
    assert error(r.execute_command, "EXPIRE", "n", "10", "NX", "XX") == \
        "NX and XX, GT or LT options at the same time are not compatible"
    assert error(r.execute_command, "EXPIRE", "n", "10", "GT", "LT") == \
        "GT and LT options at the same time are not compatible"
    assert error(r.execute_command, "EXPIRE", "n", "10", "FOO") == "Unsupported option FOO"
    assert error(r.execute_command, "EXPIRE", "n", "abc") == "value is not an integer or out of range"
    assert error(r.execute_command, "EXPIRE", "n", str(2**62)) == "invalid expire time in 'expire' command"


def test_getex(r):
    r.set("g", "v")
    assert r.getex("g") == b"v" and r.ttl("g") == -1
    assert r.getex("g", ex=100) == b"v" and 80 <= r.ttl("g") <= 100
    assert r.getex("g", px=200000) == b"v" and r.pttl("g") > 100000
    at = int(time.time()) + 300
    assert r.getex("g", exat=at) == b"v" and r.expiretime("g") == at
    assert r.getex("g", persist=True) == b"v" and r.ttl("g") == -1
    assert r.getex("none", ex=10) is None
    assert error(r.execute_command, "GETEX", "g", "EX", "0") == "invalid expire time in 'getex' command"
    assert error(r.execute_command, "GETEX", "g", "KEEPTTL") == "syntax error"
    assert error(r.execute_command, "GETEX", "g", "EX", "10", "PERSIST") == "syntax error"


# --- keyspace ---------------------------------------------------------------------------------


def test_del_unlink_exists_type_touch(r):
    r.mset({"a": "1", "b": "2", "c": "3"})
    assert r.exists("a", "a", "zz") == 2
    assert r.delete("a", "a", "zz") == 1
    assert r.unlink("b", "c", "zz") == 2
    assert r.exists("a", "b", "c") == 0
    r.set("t", "v")
    assert r.type("t") == b"string" and r.type("zz") == b"none"
    assert r.touch("t", "zz", "t") == 2
    assert error(r.execute_command, "DEL") == "wrong number of arguments for 'del' command"


def test_keys_glob_patterns(r):
    names = ["hello", "hallo", "hxllo", "hllo", "heeeello", "hbllo", "h*llo", "h?llo"]
    r.mset({n: "1" for n in names})

    def keys(p):
        return sorted(k.decode() for k in r.keys(p))

    assert keys("h?llo") == sorted(["hello", "hallo", "hxllo", "hbllo", "h*llo", "h?llo"])
    assert keys("h*llo") == sorted(names)
    assert keys("h[ae]llo") == ["hallo", "hello"]
    assert keys("h[^e]llo") == sorted(["hallo", "hxllo", "hbllo", "h*llo", "h?llo"])
    assert keys("h[a-b]llo") == ["hallo", "hbllo"]
    assert keys("h[b-a]llo") == ["hallo", "hbllo"]
    assert keys(r"h\*llo") == ["h*llo"] and keys(r"h\?llo") == ["h?llo"]
    assert keys("hello") == ["hello"] and keys("nothing*") == []
    assert len(keys("*")) == len(names)


def test_scan_options(r):
    r.mset({f"key:{i:03d}": "v" for i in range(50)})
    r.mset({f"other:{i}": "v" for i in range(10)})
    seen, cursor, calls = [], 0, 0
    while True:
        cursor, batch = r.scan(cursor, count=7)
        seen += batch
        calls += 1
        if cursor == 0:
            break
    assert sorted(seen) == sorted(r.keys("*")) and len(seen) == 60 and calls >= 60 // 7
    assert sorted(r.scan_iter(match="key:01*")) == [f"key:01{i}".encode() for i in range(10)]
    assert len(list(r.scan_iter(_type="string"))) == 60
    assert list(r.scan_iter(_type="list")) == []
    assert error(r.scan, 12345) == "invalid cursor"
    assert error(r.execute_command, "SCAN", "abc") == "invalid cursor"
    assert error(r.execute_command, "SCAN", "0", "COUNT", "0") == "syntax error"
    assert error(r.execute_command, "SCAN", "0", "FOO", "1") == "syntax error"
    assert error(r.execute_command, "SCAN", "0", "COUNT") == "syntax error"


def test_randomkey_rename_dbsize_flush(r):
    assert r.randomkey() is None and r.dbsize() == 0
    names = {f"user:{i}".encode() for i in range(30)}
    r.mset({n: "v" for n in names})
    assert r.dbsize() == 30
    assert {r.randomkey() for _ in range(20)} <= names
    assert r.rename("user:1", "moved") is True and r.get("moved") == b"v" and r.exists("user:1") == 0
    assert error(r.rename, "user:1", "x") == "no such key"
    assert r.rename("moved", "moved") is True
    assert r.renamenx("moved", "user:2") is False and r.renamenx("moved", "back") is True
    assert r.flushdb() is True and r.dbsize() == 0
    r.mset({"a": "1", "b": "2"})
    assert r.flushall(asynchronous=True) is True and r.keys("*") == []
    assert error(r.execute_command, "FLUSHDB", "FOO") == "syntax error"


def test_rename_keeps_expiry(r):
    r.set("src", "v", ex=100)
    r.rename("src", "dst")
    assert 80 <= r.ttl("dst") <= 100 and r.exists("src") == 0
