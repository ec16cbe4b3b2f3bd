"""Session metadata in Redis: which replicas hold a conversation's KV cache, for multi-turn reuse.

At the end of a request the router records, per ``session_id``, the verifier (and draft) that
hold the session's KV cache, how many tokens they hold (``committed_len``), a hash of those
tokens (``prefix_hash``) and acceptance statistics. When the next turn arrives, ``get`` finds
the record and ``extends`` checks that the new prompt starts with exactly those tokens; if so
the router goes back to the same replicas and prefills only the new tokens.

Redis is never on the per-token path and never a reason to fail a request:

- ``put`` only enqueues; a background task writes pending records in batches, one pipeline of
  ``SET key json EX ttl`` per batch. Several puts of one session before it is written collapse
  into the newest. If Redis is down, the batch is dropped and counted.
- ``get`` waits at most ``read_timeout_s`` (50 ms by default) and returns None on any Redis
  error; after a failure, reads skip Redis for ``down_backoff_s`` so a dead server costs one
  timeout per back-off period, not one per request. A record still waiting to be written is
  served from memory (read-your-writes inside one router process).
- Warnings are rate limited: one per kind of failure per ``warn_interval_s``.

Isolation. A session belongs to the caller identity that made it (``Request.identity``, from
its API key). ``SessionKeys`` derives everything that names a session from the deployment's
secret: the Redis key and the session id the replicas park slots by are
``HMAC-SHA256(secret, identity + "\\0" + session_id)`` (hex), so another identity using the same
``session_id`` gets a separate session: it finds no record, no parked cache, no timing
difference, and cannot overwrite the owner's. The prefix hashes in the records are
HMAC-SHA256 under the same secret, so a record read out of Redis cannot confirm a guessed
prompt offline. The secret comes from a file (``--session-secret-file``: one Secret shared by
every router replica, so they agree on keys), else it is random per process (sessions then do
not survive a router restart nor move between router replicas; the router logs so). Callers
without API keys all share the identity "" and so one namespace of sessions.

Each identity holds at most ``max_sessions_per_identity`` sessions: every record joins a sorted
set of its owner's sessions (key ``key_prefix + "owner:" + HMAC(identity)``, scored by update
time), and after each batch the owner's oldest sessions beyond the cap are deleted. A dropped
session only loses its cache affinity: its next turn is prefilled in full, nothing fails.

An external Redis with AUTH and TLS is reached through the URL, as ``redis.asyncio.from_url``
reads it: ``rediss://user:password@host:6379/0`` (TLS, verifying the server against the system
CAs), ``rediss://...?ssl_ca_certs=/path/ca.pem`` (a private CA),
``&ssl_certfile=...&ssl_keyfile=...`` (a client certificate), ``redis://:password@host`` (AUTH
without TLS; loopback only).

Not here: choosing replicas or checking they are alive (the router's balancer), the KV cache
itself (the engine's), and any guarantee across router replicas beyond what Redis gives.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import logging
import secrets
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

DEFAULT_KEY_PREFIX = "specdec:session:"
DEFAULT_TTL_S = 3600
DEFAULT_MAX_PER_IDENTITY = 1000
MIN_SECRET_BYTES = 16
# Errors that mean "Redis is unavailable", never a bug in the router.
_REDIS_FAILURES = (RedisError, OSError, asyncio.TimeoutError)

if array("I").itemsize != 4:  # pragma: no cover - every platform CPython supports today
    raise ImportError("pack_tokens needs a 4-byte array('I')")


def pack_tokens(token_ids: Sequence[int]) -> bytes:
    """``token_ids`` as little-endian uint32 (the length is implied)."""
    packed = array("I", token_ids)
    if sys.byteorder != "little":  # pragma: no cover
        packed.byteswap()
    return packed.tobytes()


class SessionKeys:
    """Names derived from the deployment's secret: session keys, owner keys, prefix hashes."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the session secret must be at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret

    @classmethod
    def from_file(cls, path: str | None) -> SessionKeys:
        """The secret in ``path`` (surrounding whitespace stripped); none: a random one."""
        if not path:
            logger.warning(
                "no --session-secret-file: session keys use a random secret of this process; "
                "sessions do not survive a restart and are not shared with other routers"
            )
            return cls(secrets.token_bytes(32))
        try:
            secret = Path(path).read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the session secret file {path}: {exc}") from exc
        return cls(secret)  # (refuses one shorter than MIN_SECRET_BYTES)

    def _mac(self, data: bytes) -> str:
        return hmac.new(self._secret, data, hashlib.sha256).hexdigest()

    def session(self, identity: str, session_id: str) -> str:
        """The session's Redis key suffix and the id the replicas park its slot by."""
        return self._mac(f"{identity}\0{session_id}".encode())

    def owner(self, identity: str) -> str:
        """The name of ``identity``'s set of sessions (the identity itself is not stored)."""
        return self._mac(b"owner\0" + identity.encode())

    def prefix(self, token_ids: Sequence[int]) -> str:
        """Keyed hash of a session's committed tokens (cannot be confirmed without the secret)."""
        return self._mac(pack_tokens(token_ids))


@dataclass
class SessionRecord:
    """What the router remembers about one conversation between its turns."""

    session_id: str  # SessionKeys.session(identity, the client's session_id)
    verifier: str  # verifier replica holding the session's KV cache, "host:port"
    draft: str | None = None  # draft replica holding its draft KV cache, "host:port"
    committed_len: int = 0  # tokens whose KV the replicas hold: prompt + generated
    prefix_hash: str = ""  # SessionKeys.prefix() of those committed_len token ids
    draft_tokens: int = 0  # draft tokens proposed over the session's life
    accepted_tokens: int = 0  # of which the verifier accepted
    updated_unix_s: float = 0.0  # wall clock of the last write, seconds since the epoch
    owner: str = ""  # SessionKeys.owner(identity): the set of sessions it counts in

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes) -> SessionRecord:
        """Parse a record; unknown fields are ignored, missing optional ones take defaults.

        Raises ValueError for anything that is not a record (bad JSON, wrong types, no
        ``session_id`` or ``verifier``).
        """
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError(f"session record must be a JSON object, got {type(raw).__name__}")
        try:
            return cls(
                session_id=str(raw["session_id"]),
                verifier=str(raw["verifier"]),
                draft=None if raw.get("draft") is None else str(raw["draft"]),
                committed_len=int(raw.get("committed_len", 0)),
                prefix_hash=str(raw.get("prefix_hash", "")),
                draft_tokens=int(raw.get("draft_tokens", 0)),
                accepted_tokens=int(raw.get("accepted_tokens", 0)),
                updated_unix_s=float(raw.get("updated_unix_s", 0.0)),
                owner=str(raw.get("owner", "")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed session record: {exc!r}") from exc


def extends(record: SessionRecord, prompt_ids: Sequence[int], keys: SessionKeys) -> bool:
    """True when ``prompt_ids`` is the session's committed tokens plus at least one new token.

    Then the follow-up turn can go back to the same replicas and prefill only
    ``prompt_ids[committed_len:]``. A prompt exactly equal to the committed tokens gives False:
    there is nothing new to prefill, and the replicas hold no logits for the last position, so
    the router starts afresh. A record with ``committed_len == 0`` never extends anything.
    """
    n = record.committed_len
    return 0 < n < len(prompt_ids) and hmac.compare_digest(
        keys.prefix(prompt_ids[:n]), record.prefix_hash
    )


class _RateLimitedWarning:
    """Log a warning per kind at most once per ``interval_s``, saying how many were held back."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held_back: dict[str, int] = {}

    def __call__(self, kind: str, message: str) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_s:
            self._held_back[kind] = self._held_back.get(kind, 0) + 1
            return
        self._last[kind] = now
        held_back = self._held_back.pop(kind, 0)
        suffix = f" ({held_back} more since the last warning)" if held_back else ""
        logger.warning("session store: %s%s", message, suffix)


class SessionStore:
    """Session records in Redis, read with a short timeout and written in background batches.

    Args:
        url: ``redis://host:port/db``, ``rediss://user:password@host:port/db`` (TLS and AUTH, see
            above) or ``unix:///path`` (see ``redis_server.redis_url``).
        key_prefix: keys are ``key_prefix + session_id``; default ``specdec:session:``.
        ttl_s: expiry set on every write, seconds; default 3600 (one hour).
        read_timeout_s: the most ``get`` waits for Redis, seconds; default 0.05.
        write_timeout_s: the most one batch or delete waits for Redis, seconds; default 1.0.
        down_backoff_s: after a failed read, reads skip Redis this long, seconds; default 1.0.
        max_batch: records per pipeline at most; default 256.
        max_pending: records waiting to be written at most; beyond, puts are dropped; 10000.
        close_timeout_s: the most ``close`` spends flushing pending writes, seconds; default 2.0.
        warn_interval_s: one warning per kind of failure per this many seconds; default 30.
        max_per_identity: sessions one identity keeps at most (its oldest beyond are deleted);
            default 1000.

    Counters (for tests and metrics; see ``stats``): ``writes_ok`` records written,
    ``writes_coalesced`` puts superseded by a newer put of the same session before being
    written, ``writes_dropped`` records lost (queue full, Redis error, store closed),
    ``batches_written`` pipelines that succeeded, ``read_errors`` failed or timed-out reads,
    ``reads_skipped`` reads not sent during a back-off, ``sessions_capped`` sessions deleted for
    their owner's cap. Every put ends in exactly one of
    ``writes_ok``, ``writes_coalesced`` or ``writes_dropped`` once it leaves the queue.
    """

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        ttl_s: int = DEFAULT_TTL_S,
        read_timeout_s: float = 0.05,
        write_timeout_s: float = 1.0,
        down_backoff_s: float = 1.0,
        max_batch: int = 256,
        max_pending: int = 10_000,
        close_timeout_s: float = 2.0,
        warn_interval_s: float = 30.0,
        max_per_identity: int = DEFAULT_MAX_PER_IDENTITY,
    ) -> None:
        if ttl_s <= 0 or max_batch <= 0 or max_pending <= 0 or max_per_identity <= 0:
            raise ValueError("ttl_s, max_batch, max_pending and max_per_identity must be positive")
        self.max_per_identity = max_per_identity
        self.key_prefix = key_prefix
        self.ttl_s = ttl_s
        self.read_timeout_s = read_timeout_s
        self.write_timeout_s = write_timeout_s
        self.down_backoff_s = down_backoff_s
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.close_timeout_s = close_timeout_s
        # No client-side retries: a failure is handled (and counted) here, at once.
        self._client = aioredis.from_url(
            url,
            socket_timeout=write_timeout_s,
            socket_connect_timeout=write_timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._warn = _RateLimitedWarning(warn_interval_s)
        self._pending: dict[str, SessionRecord] = {}  # waiting for the writer, oldest first
        self._in_flight: dict[str, SessionRecord] = {}  # in the pipeline being written
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._write_lock = asyncio.Lock()  # orders delete() after a batch already sent
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self._reads_resume_at = 0.0  # time.monotonic() before which reads skip Redis
        self.writes_ok = 0
        self.writes_coalesced = 0
        self.writes_dropped = 0
        self.batches_written = 0
        self.read_errors = 0
        self.reads_skipped = 0
        self.sessions_capped = 0

    def key(self, session_id: str) -> str:
        return self.key_prefix + session_id

    def owner_key(self, owner: str) -> str:
        return self.key_prefix + "owner:" + owner

    async def start(self) -> None:
        """Start the background writer (puts made before this wait for it)."""
        if self._closed:
            raise RuntimeError("SessionStore is closed")
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="session-store-writer")

    async def close(self) -> None:
        """Flush pending writes for at most ``close_timeout_s``, drop the rest, disconnect."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            await self.flush(self.close_timeout_s)
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        self._drop(len(self._pending) + len(self._in_flight), "closed with unwritten records")
        self._pending.clear()
        self._in_flight.clear()
        await self._client.aclose()

    async def __aenter__(self) -> SessionStore:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def get(self, session_id: str) -> SessionRecord | None:
        """The session's record, or None if unknown, expired, or Redis is unavailable."""
        local = self._pending.get(session_id) or self._in_flight.get(session_id)
        if local is not None:
            return dataclasses.replace(local)  # a copy: the queued record stays as put
        if time.monotonic() < self._reads_resume_at:
            self.reads_skipped += 1
            return None
        try:
            data = await asyncio.wait_for(
                self._client.get(self.key(session_id)), self.read_timeout_s
            )
        except _REDIS_FAILURES as exc:
            self.read_errors += 1
            self._reads_resume_at = time.monotonic() + self.down_backoff_s
            self._warn("read", f"read of session {session_id!r} failed, going on without: {exc!r}")
            return None
        if data is None:
            return None
        try:
            return SessionRecord.from_json(data)
        except ValueError as exc:  # written by a bug or a stranger; Redis itself is fine
            self.read_errors += 1
            self._warn("decode", f"unreadable record for session {session_id!r}: {exc}")
            return None

    def put(self, record: SessionRecord) -> None:
        """Queue ``record`` for writing and return at once; never raises for Redis' sake."""
        if self._closed:
            self._drop(1, "put after close")
            return
        if record.session_id in self._pending:
            self.writes_coalesced += 1
            del self._pending[record.session_id]  # re-insert as the newest
        elif len(self._pending) >= self.max_pending:
            self._drop(1, f"more than {self.max_pending} records waiting to be written")
            return
        self._pending[record.session_id] = record
        self._idle.clear()
        self._wakeup.set()

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued record has been written or dropped; False on timeout."""
        if self._writer is None and self._pending:
            raise RuntimeError("flush() before start(): nothing would write the queue")
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def delete(self, session_id: str) -> bool:
        """Forget a session (queued writes included); False if Redis could not be reached."""
        self._pending.pop(session_id, None)
        try:
            async with self._write_lock:
                await asyncio.wait_for(
                    self._client.delete(self.key(session_id)), self.write_timeout_s
                )
        except _REDIS_FAILURES as exc:
            self._warn("delete", f"delete of session {session_id!r} failed: {exc!r}")
            return False
        return True

    def stats(self) -> dict[str, int]:
        """The counters and the queue depth, for metrics."""
        return {
            "writes_ok": self.writes_ok,
            "writes_coalesced": self.writes_coalesced,
            "writes_dropped": self.writes_dropped,
            "batches_written": self.batches_written,
            "read_errors": self.read_errors,
            "reads_skipped": self.reads_skipped,
            "sessions_capped": self.sessions_capped,
            "pending": len(self._pending) + len(self._in_flight),
        }

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                for session_id in list(self._pending)[: self.max_batch]:
                    self._in_flight[session_id] = self._pending.pop(session_id)
                async with self._write_lock:
                    await self._write_batch(list(self._in_flight.values()))
                self._in_flight.clear()
            if not self._pending:
                self._idle.set()

    async def _write_batch(self, records: list[SessionRecord]) -> None:
        """One pipeline of SET ... EX for ``records``; on failure they are dropped and counted."""
        try:
            pipe = self._client.pipeline(transaction=False)
            for record in records:
                pipe.set(self.key(record.session_id), record.to_json(), ex=self.ttl_s)
                if record.owner:
                    owner = self.owner_key(record.owner)
                    pipe.zadd(owner, {record.session_id: record.updated_unix_s})
                    pipe.expire(owner, self.ttl_s)
            await asyncio.wait_for(pipe.execute(), self.write_timeout_s)
        except Exception as exc:  # the writer must outlive any failure, a bug's included
            if not isinstance(exc, _REDIS_FAILURES):
                logger.exception("session store: unexpected error writing a batch")
            self._drop(len(records), f"write of {len(records)} records failed: {exc!r}")
            return
        self.writes_ok += len(records)
        self.batches_written += 1
        self._reads_resume_at = 0.0  # Redis answers again
        owners = {r.owner for r in records if r.owner}
        if owners:
            try:
                await asyncio.wait_for(self._cap(owners), self.write_timeout_s)
            except _REDIS_FAILURES as exc:  # the next batch of these owners tries again
                self._warn("cap", f"trimming sessions per identity failed: {exc!r}")

    async def _cap(self, owners: set[str]) -> None:
        """Delete each owner's oldest sessions beyond ``max_per_identity`` (and forget the
        expired ones its set still names)."""
        pipe = self._client.pipeline(transaction=False)
        for owner in owners:
            pipe.zremrangebyscore(self.owner_key(owner), "-inf", time.time() - self.ttl_s)
            pipe.zrange(self.owner_key(owner), 0, -(self.max_per_identity + 1))
        replies = await pipe.execute()
        pipe = self._client.pipeline(transaction=False)
        excess = 0
        for owner, oldest in zip(owners, replies[1::2], strict=True):
            if oldest:
                excess += len(oldest)
                pipe.zrem(self.owner_key(owner), *oldest)
                pipe.delete(*(self.key(k.decode()) for k in oldest))
        if excess:
            await pipe.execute()
            self.sessions_capped += excess

    def _drop(self, count: int, reason: str) -> None:
        if count:
            self.writes_dropped += count
            self._warn("write", f"dropped {count} session writes: {reason}")
