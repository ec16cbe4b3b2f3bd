"""The router's session store, against a real Redis: the embedded one, or ``REDIS_URL`` if set.

Pure pieces (hashing, records, ``extends``) are ``unit``; the rest talk to a redis-server over
a unix socket or loopback and are ``service``. Coroutines run under ``asyncio.run`` in plain
test functions: no asyncio plugin. Each test uses its own key prefix, so an external Redis is
safe to share.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import socket
import struct
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from specdec.router.redis_server import (
    EmbeddedRedis,
    free_loopback_port,
    redis_url,
    redis_url_from_env,
)
from specdec.router.sessions import (
    SessionKeys,
    SessionRecord,
    SessionStore,
    extends,
    pack_tokens,
)

unit = pytest.mark.unit
service = pytest.mark.service

SECRET = b"0123456789abcdef0123456789abcdef"
KEYS = SessionKeys(SECRET)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with redis_url() as server_url:
        yield server_url


@pytest.fixture
def prefix(url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    key_prefix = f"specdec-test:{uuid.uuid4().hex}:"
    yield key_prefix
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=key_prefix + "*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def record(
    session_id: str = "s1", tokens: tuple[int, ...] = (1, 2, 3), **kw: object
) -> SessionRecord:
    fields: dict[str, object] = {
        "verifier": "10.0.0.7:50052",
        "draft": "10.0.0.9:50051",
        "committed_len": len(tokens),
        "prefix_hash": KEYS.prefix(tokens),
        "draft_tokens": 40,
        "accepted_tokens": 31,
        "updated_unix_s": 1_700_000_000.5,
    }
    fields.update(kw)
    return SessionRecord(session_id=session_id, **fields)  # type: ignore[arg-type]


def closed_port_url() -> str:
    return f"redis://127.0.0.1:{free_loopback_port()}/0"


# --- pure pieces ---------------------------------------------------------------------------


@unit
def test_prefix_hash_is_hmac_sha256_of_little_endian_uint32() -> None:
    ids = [0, 1, 255, 65_536, 2**32 - 1]
    assert pack_tokens(ids) == struct.pack("<5I", *ids)
    expected = hmac.new(SECRET, struct.pack("<5I", *ids), hashlib.sha256).hexdigest()
    assert KEYS.prefix(ids) == expected
    assert KEYS.prefix(tuple(ids)) == expected
    assert len(expected) == 64
    assert KEYS.prefix([1, 2]) != KEYS.prefix([1, 2, 0])  # the length is part of the input
    assert KEYS.prefix(ids) != SessionKeys(b"another secret of 32 bytes......").prefix(ids)
    for bad in ([-1], [2**32]):
        with pytest.raises(OverflowError):
            KEYS.prefix(bad)


@unit
def test_session_keys_separate_identities_and_need_a_real_secret(tmp_path) -> None:
    key = KEYS.session("alice", "chat-1")
    assert key == hmac.new(SECRET, b"alice\0chat-1", hashlib.sha256).hexdigest()
    assert key != KEYS.session("bob", "chat-1")
    assert KEYS.owner("alice") != KEYS.owner("bob")
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    assert SessionKeys.from_file(str(secret_file)).session("alice", "chat-1") == key
    assert SessionKeys.from_file(None).session("alice", "chat-1") != key  # random per process
    with pytest.raises(ValueError, match="at least"):
        SessionKeys(b"short")
    with pytest.raises(ValueError, match="cannot read"):
        SessionKeys.from_file(str(tmp_path / "missing"))


@unit
def test_record_json_round_trip_and_old_or_new_versions() -> None:
    original = record()
    assert SessionRecord.from_json(original.to_json()) == original
    assert SessionRecord.from_json(original.to_json().encode()) == original
    # A newer writer's extra field is ignored; an older writer's missing fields take defaults.
    newer = '{"session_id":"s","verifier":"v:1","committed_len":5,"kv_pages":[1,2]}'
    assert SessionRecord.from_json(newer) == SessionRecord("s", "v:1", committed_len=5)
    older = '{"session_id":"s","verifier":"v:1","draft":null}'
    assert SessionRecord.from_json(older) == SessionRecord("s", "v:1")
    for bad in ('{"session_id":"s"}', "[1,2]", "not json", '{"session_id":"s","verifier":"v",'):
        with pytest.raises(ValueError):
            SessionRecord.from_json(bad)
    with pytest.raises(ValueError, match="malformed"):
        SessionRecord.from_json('{"session_id":"s","verifier":"v","committed_len":null}')


@unit
def test_extends_needs_the_committed_prefix_and_at_least_one_new_token() -> None:
    committed = (5, 6, 7, 8)
    rec = record(tokens=committed)
    assert extends(rec, [5, 6, 7, 8, 9], KEYS)
    assert extends(rec, (5, 6, 7, 8, 9, 10, 11), KEYS)
    assert not extends(rec, [5, 6, 7, 8], KEYS)  # equal: nothing new to prefill
    assert not extends(rec, [5, 6, 7], KEYS)  # shorter: the conversation was edited
    assert not extends(rec, [5, 6, 0, 8, 9], KEYS)  # a different prefix
    assert not extends(rec, [], KEYS)
    empty = record(tokens=())
    assert empty.committed_len == 0
    assert not extends(empty, [1, 2, 3], KEYS)  # nothing committed: nothing to reuse


@unit
def test_redis_url_from_env() -> None:
    assert redis_url_from_env({}) is None
    assert redis_url_from_env({"REDIS_URL": "  "}) is None
    assert redis_url_from_env({"REDIS_URL": "redis://r:6379/0"}) == "redis://r:6379/0"
    with redis_url({"REDIS_URL": "redis://r:6379/0"}) as chosen:
        assert chosen == "redis://r:6379/0"  # an external server is used as is, none started


# --- against a real Redis ------------------------------------------------------------------


@service
def test_embedded_redis_starts_and_cleans_up() -> None:
    with EmbeddedRedis() as server:
        assert server.url.startswith("unix://") and server.alive
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        assert client.config_get("save") == {"save": ""}  # a cache: no snapshots
        client.close()
        workdir, process = server.workdir, server.process
    assert process is not None and process.poll() is not None
    assert not workdir.exists()
    server.close()  # idempotent


@service
def test_put_then_get_round_trip_through_redis(url: str, prefix: str) -> None:
    async def scenario() -> None:
        async with SessionStore(url, key_prefix=prefix) as writer:
            writer.put(record("a"))
            assert await writer.get("a") == record("a")  # still queued: served from memory
            assert await writer.flush(timeout_s=2.0)
            assert writer.writes_ok == 1 and writer.writes_dropped == 0
        async with SessionStore(url, key_prefix=prefix) as reader:  # nothing queued here
            assert await reader.get("a") == record("a")
            assert await reader.get("unknown") is None
            assert reader.read_errors == 0

    asyncio.run(scenario())


@service
def test_an_identity_keeps_at_most_its_cap_of_sessions_the_oldest_go(url: str, prefix: str) -> None:
    async def scenario() -> SessionStore:
        async with SessionStore(url, key_prefix=prefix, max_per_identity=3) as store:
            now = time.time()
            for i in range(5):
                store.put(record(f"a{i}", owner="A", updated_unix_s=now + i))
            store.put(record("b0", owner="B", updated_unix_s=now))
            assert await store.flush(timeout_s=2.0)
            store.put(record("a5", owner="A", updated_unix_s=now + 5))  # a later batch
            assert await store.flush(timeout_s=2.0)
            assert [await store.get(f"a{i}") is not None for i in range(6)] == [
                False, False, False, True, True, True
            ]  # fmt: skip
            assert await store.get("b0") is not None  # another identity's count is its own
            return store

    store = asyncio.run(scenario())
    assert store.sessions_capped == 3 and store.writes_ok == 7


@unit
def test_external_redis_auth_and_tls_come_from_the_url() -> None:
    """``rediss://user:password@host`` (with a private CA as a query parameter) is understood
    by ``redis.asyncio.from_url``, which ``SessionStore`` uses: TLS connections, AUTH."""

    async def scenario() -> dict[str, object]:
        store = SessionStore("rediss://specdec:s3cret@redis.example:6380/2?ssl_ca_certs=/ca.pem")
        pool = store._client.connection_pool
        kwargs = dict(pool.connection_kwargs, cls=pool.connection_class.__name__)
        await store.close()
        return kwargs

    kwargs = asyncio.run(scenario())
    assert kwargs["cls"] == "SSLConnection"
    assert (kwargs["username"], kwargs["password"]) == ("specdec", "s3cret")
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis.example", 6380, 2)
    assert kwargs["ssl_ca_certs"] == "/ca.pem"


@service
def test_writes_carry_the_ttl(url: str, prefix: str) -> None:
    async def scenario() -> None:
        async with SessionStore(url, key_prefix=prefix) as store:
            store.put(record("default"))
            await store.flush(2.0)
        async with SessionStore(url, key_prefix=prefix, ttl_s=120) as store:
            store.put(record("short"))
            await store.flush(2.0)

    asyncio.run(scenario())
    client = redis.Redis.from_url(url)
    assert 3590 <= client.ttl(prefix + "default") <= 3600
    assert 110 <= client.ttl(prefix + "short") <= 120
    client.close()


@service
def test_many_puts_go_out_in_few_pipelines(url: str, prefix: str) -> None:
    async def scenario() -> SessionStore:
        async with SessionStore(url, key_prefix=prefix, max_batch=256) as store:
            for i in range(1000):
                store.put(record(f"s{i}", committed_len=i))
            assert await store.flush(timeout_s=5.0)
            return store

    store = asyncio.run(scenario())
    assert store.writes_ok == 1000
    assert store.batches_written == 4  # ceil(1000 / 256)
    client = redis.Redis.from_url(url)
    values = client.mget([f"{prefix}s{i}" for i in range(1000)])
    client.close()
    assert [SessionRecord.from_json(v).committed_len for v in values] == list(range(1000))


@service
def test_puts_of_one_session_collapse_into_the_newest(url: str, prefix: str) -> None:
    async def scenario() -> None:
        async with SessionStore(url, key_prefix=prefix) as store:
            for n in range(1, 11):
                store.put(record("chat", committed_len=n))
            await store.flush(2.0)
            assert (store.writes_ok, store.writes_coalesced, store.batches_written) == (1, 9, 1)
        async with SessionStore(url, key_prefix=prefix) as reader:
            got = await reader.get("chat")
            assert got is not None and got.committed_len == 10

    asyncio.run(scenario())


@service
def test_delete_forgets_written_and_queued_records(url: str, prefix: str) -> None:
    async def scenario() -> None:
        async with SessionStore(url, key_prefix=prefix) as store:
            store.put(record("a"))
            await store.flush(2.0)
            assert await store.delete("a")
            assert await store.get("a") is None
        store = SessionStore(url, key_prefix=prefix)  # not started: the put stays queued
        store.put(record("b"))
        assert await store.delete("b")
        assert await store.get("b") is None
        await store.close()
        assert store.writes_dropped == 0 and store.writes_ok == 0

    asyncio.run(scenario())


@service
def test_close_flushes_pending_writes(url: str, prefix: str) -> None:
    async def scenario() -> None:
        store = SessionStore(url, key_prefix=prefix)
        await store.start()
        store.put(record("late"))
        await store.close()  # no flush() before: close does it
        assert store.writes_ok == 1
        store.put(record("after"))  # after close: dropped, not raised
        assert store.writes_dropped == 1
        async with SessionStore(url, key_prefix=prefix) as reader:
            assert await reader.get("late") == record("late")

    asyncio.run(scenario())


@service
def test_unreadable_record_reads_as_none_without_backing_off(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    client.set(prefix + "junk", b"\x00not json")
    client.set(prefix + "good", record("good").to_json())
    client.close()

    async def scenario() -> None:
        async with SessionStore(url, key_prefix=prefix) as store:
            assert await store.get("junk") is None
            assert store.read_errors == 1
            assert await store.get("good") == record("good")  # Redis itself is fine

    asyncio.run(scenario())


# --- Redis down ----------------------------------------------------------------------------


@service
def test_redis_down_reads_none_fast_and_drops_writes(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> SessionStore:
        async with SessionStore(closed_port_url()) as store:
            start = time.perf_counter()
            assert await store.get("a") is None
            assert time.perf_counter() - start < 0.5
            assert store.read_errors == 1
            assert await store.get("a") is None  # within the back-off: not even tried
            assert store.reads_skipped == 1
            for i in range(5):  # five batches, five failures
                store.put(record(f"s{i}"))  # never raises
                assert await store.flush(timeout_s=2.0)
            assert await store.delete("a") is False
            return store

    with caplog.at_level(logging.WARNING, logger="specdec.router.sessions"):
        store = asyncio.run(scenario())
    assert store.writes_dropped == 5 and store.writes_ok == 0
    # Rate limited: one warning per kind of failure, not one per call.
    messages = sorted(r.getMessage() for r in caplog.records)
    assert len(messages) == 3, messages
    assert messages[0].startswith("session store: delete of session 'a' failed")
    assert messages[1].startswith("session store: dropped 1 session writes")
    assert messages[2].startswith("session store: read of session 'a' failed")


@service
def test_unresponsive_redis_costs_one_read_timeout() -> None:
    # A socket that accepts connections (the kernel does) but never answers.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]

        async def scenario() -> float:
            async with SessionStore(
                f"redis://127.0.0.1:{port}/0", read_timeout_s=0.05, write_timeout_s=0.2
            ) as store:
                start = time.perf_counter()
                assert await store.get("a") is None
                elapsed = time.perf_counter() - start
                store.put(record("a"))
                assert await store.flush(timeout_s=2.0)
                assert store.writes_dropped == 1
                return elapsed

        assert asyncio.run(scenario()) < 0.5


@service
def test_store_recovers_when_redis_comes_back() -> None:
    port = free_loopback_port()

    async def scenario() -> None:
        server = EmbeddedRedis(port=port)
        store = SessionStore(server.url, down_backoff_s=0.0)
        await store.start()
        try:
            store.put(record("before"))
            await store.flush(2.0)
            assert store.writes_ok == 1

            server.close()
            assert await store.get("before") is None
            store.put(record("while-down"))
            await store.flush(2.0)
            assert store.read_errors == 1 and store.writes_dropped == 1

            server = EmbeddedRedis(port=port)  # a fresh, empty server at the same address
            store.put(record("after"))
            await store.flush(2.0)
            assert store.writes_ok == 2
            async with SessionStore(server.url) as reader:
                assert await reader.get("after") == record("after")
                assert await reader.get("while-down") is None
        finally:
            await store.close()
            server.close()

    asyncio.run(scenario())
