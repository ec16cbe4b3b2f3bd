"""Sessions belong to the caller identity that made them (issue 21, part 4).

A real pipeline (two verifiers, a draft, the router with API keys for alice and bob, Redis):
bob, who knows alice's ``session_id``, gets a session of his own (no cached tokens), cannot
change alice's cache, and Redis holds nothing that names the session or confirms its tokens
without the deployment's secret. An identity's sessions are capped, its oldest dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from specdec.core.tokenizer import Tokenizer
from specdec.local_pipeline import Pipeline
from specdec.router.redis_server import redis_url
from specdec.router.sessions import pack_tokens
from specdec.serving.auth import hash_key
from specdec.v1 import generation_pb2

pytestmark = pytest.mark.service

PROMPT = "def add(a, b):\n"
ALICE = (("authorization", "Bearer key-alice"),)
BOB = (("authorization", "Bearer key-bob"),)


@pytest.fixture
def setup(model_dir: Path, tmp_path: Path) -> Iterator[tuple[Pipeline, str, Tokenizer]]:
    keys = tmp_path / "keys"
    keys.write_text(f"alice:{hash_key('key-alice')}\nbob:{hash_key('key-bob')}\n")
    secret = tmp_path / "secret"
    secret.write_text("a deployment secret of more than 16 bytes\n")
    with redis_url() as url:
        p = Pipeline(
            str(model_dir / "target"), str(model_dir / "draft_close"), num_verifiers=2
        ).start()
        try:
            p.redis_url = url
            p.add_router(
                api_keys_file=str(keys),
                session_secret_file=str(secret),
                max_sessions_per_identity=2,
            )
            yield p, url, Tokenizer.from_folder(model_dir / "target")
        finally:
            p.close()


def turn(p: Pipeline, ids: list[int], session: str, who) -> tuple[list[int], int]:
    """Generate 12 greedy tokens; the tokens and cached_prompt_tokens."""
    tokens: list[int] = []
    last = None
    request = generation_pb2.GenerateRequest(
        prompt_token_ids=generation_pb2.TokenIds(ids=ids), max_tokens=12, session_id=session
    )
    for response in p.client().Generate(request, metadata=who):
        tokens.extend(response.token_ids)
        last = response
    p.loop.run(p.router_deps.sessions.flush(2.0))  # the record is in Redis
    return tokens, last.stats.cached_prompt_tokens


def test_another_identity_with_the_same_session_id_gets_a_session_of_its_own(setup) -> None:
    p, url, tok = setup
    prompt = tok.encode(PROMPT)
    out1, cached = turn(p, prompt, "chat-1", ALICE)
    assert cached == 0
    follow = prompt + out1 + tok.encode("\nprint(add(1, 2))")
    # Bob guesses the conversation exactly: nothing cached for him...
    bob_out, bob_cached = turn(p, follow, "chat-1", BOB)
    assert bob_cached == 0
    # ...and a wrong guess of his with the same id does not overwrite alice's cache.
    wrong = prompt + tok.encode("x = 1\n")
    wrong_out, _ = turn(p, wrong, "chat-1", BOB)
    out2, cached = turn(p, follow, "chat-1", ALICE)
    assert len(prompt) + len(out1) - 1 <= cached <= len(prompt) + len(out1)
    assert out2 == bob_out  # same greedy output, whoever's cache served it

    # Redis: no key or value names the session, the identities or the plain prefix hash.
    client = redis.Redis.from_url(url)
    try:
        stored = {k: client.get(k) for k in client.scan_iter() if client.type(k) == b"string"}
        owners = [k for k in client.scan_iter() if client.type(k) == b"zset"]
    finally:
        client.close()
    assert len(stored) == 2 and len(owners) == 2  # alice's session, bob's; one set per owner
    committed = [prompt + out1, follow + out2, follow + bob_out, wrong + wrong_out]
    unkeyed = {hashlib.blake2b(pack_tokens(c), digest_size=32).hexdigest() for c in committed}
    blob = b" ".join([*stored, *stored.values(), *owners])
    for plain in [b"chat-1", b"alice", b"bob", *(h.encode() for h in unkeyed)]:
        assert plain not in blob


def test_an_identity_keeps_at_most_its_cap_of_sessions(setup) -> None:
    p, _url, tok = setup
    prompt = tok.encode(PROMPT)
    outs = {s: turn(p, prompt, s, ALICE)[0] for s in ("s1", "s2", "s3")}  # cap is 2
    assert turn(p, prompt, "b1", BOB)[1] == 0
    assert p.router_deps.sessions.sessions_capped == 1
    # alice's oldest session is gone from Redis (its next turn just finds no record)...
    keys, sessions = p.router_deps.session_keys, p.router_deps.sessions
    for name, kept in (("s1", False), ("s2", True), ("s3", True)):
        record = p.loop.run(sessions.get(keys.session("alice", name)))
        assert (record is not None) == kept
    assert p.loop.run(sessions.get(keys.session("bob", "b1"))) is not None
    # ...and her newer ones still serve their cache.
    assert turn(p, prompt + outs["s3"] + tok.encode("\n"), "s3", ALICE)[1] > 0
