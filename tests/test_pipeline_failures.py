"""What happens when parts fail: a draft dies, a verifier dies, slots run out, the internal
streams get bad messages, a follow-up turn reuses its session's cache."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from specdec.core.tokenizer import Tokenizer
from specdec.engine.checkpoint import load_model
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.speculative import generate as engine_generate
from specdec.local_pipeline import Pipeline
from specdec.router.redis_server import redis_url
from specdec.v1 import common_pb2, generation_pb2, verifier_pb2, verifier_pb2_grpc

pytestmark = pytest.mark.service

PROMPT = "def add(a, b):\n"


@pytest.fixture(scope="module")
def reference(model_dir: Path):
    runner = ModelRunner(load_model(model_dir / "target"), num_slots=1, max_seq_len=256)
    tokenizer = Tokenizer.from_folder(model_dir / "target")

    def ref(prompt_ids: list[int], max_tokens: int) -> list[int]:
        return engine_generate(runner, prompt_ids, SamplingParams(), max_tokens, None, 0).token_ids

    ref.encode = tokenizer.encode  # type: ignore[attr-defined]
    return ref


def collect(responses) -> tuple[list[int], generation_pb2.GenerateResponse]:
    tokens: list[int] = []
    last = None
    for r in responses:
        tokens.extend(r.token_ids)
        last = r
    return tokens, last


def test_draft_dying_mid_request_falls_back_to_k0_with_the_same_output(model_dir, reference):
    p = Pipeline(str(model_dir / "target"), str(model_dir / "draft_close")).start()
    try:
        stream = p.client().Generate(
            generation_pb2.GenerateRequest(
                prompt_text=PROMPT,
                max_tokens=120,
                depth_policy=generation_pb2.DEPTH_POLICY_FIXED,
                fixed_depth=3,
            )
        )
        first = next(stream)
        p.stop_server("draft")  # the draft pod dies
        tokens, last = collect(stream)
        tokens = list(first.token_ids) + tokens
        assert tokens == reference(reference.encode(PROMPT), 120)
        assert last.stats.draft_fallback
        # Later requests go on without a draft, still exact.
        again, last = collect(
            p.client().Generate(generation_pb2.GenerateRequest(prompt_text=PROMPT, max_tokens=20))
        )
        assert again == reference(reference.encode(PROMPT), 20)
    finally:
        p.close()


def test_verifier_dying_mid_request_fails_over_with_the_same_output(model_dir, reference):
    p = Pipeline(str(model_dir / "target"), str(model_dir / "draft_close"), num_verifiers=2).start()
    try:
        stream = p.client().Generate(
            generation_pb2.GenerateRequest(
                prompt_text=PROMPT,
                max_tokens=120,
                depth_policy=generation_pb2.DEPTH_POLICY_FIXED,
                fixed_depth=2,
            )
        )
        first = next(stream)
        busy = next(n for n in ("verifier", "verifier2") if p.status(n).slots_in_use)
        p.stop_server(busy)  # the verifier pod holding the request dies
        tokens, _last = collect(stream)
        assert list(first.token_ids) + tokens == reference(reference.encode(PROMPT), 120)
    finally:
        p.close()


def test_more_requests_than_slots_wait_their_turn_not_a_crash(model_dir):
    p = Pipeline(str(model_dir / "target"), str(model_dir / "draft_close"), slots=2).start()
    try:
        barrier = threading.Barrier(4)

        def one(i: int) -> str:
            barrier.wait()
            try:
                collect(
                    p.client().Generate(
                        generation_pb2.GenerateRequest(prompt_text=f"{PROMPT} {i}", max_tokens=200)
                    )
                )
                return "ok"
            except grpc.RpcError as err:
                return err.code().name

        with ThreadPoolExecutor(4) as pool:
            outcomes = list(pool.map(one, range(4)))
        assert outcomes == ["ok"] * 4  # the router's queue (test_admission.py has the details)
        # The replica still serves afterwards, and nothing leaked.
        assert collect(
            p.client().Generate(generation_pb2.GenerateRequest(prompt_text=PROMPT, max_tokens=5))
        )[0]
        assert p.wait_idle() == 0
    finally:
        p.close()


def test_second_turn_of_a_session_prefills_only_new_tokens(model_dir, reference):
    with redis_url() as url:
        p = Pipeline(
            str(model_dir / "target"),
            str(model_dir / "draft_close"),
            redis_url=url,
            num_verifiers=2,
        ).start()
        try:
            prompt = reference.encode(PROMPT)
            turn1, _ = collect(
                p.client().Generate(
                    generation_pb2.GenerateRequest(
                        prompt_token_ids=generation_pb2.TokenIds(ids=prompt),
                        max_tokens=20,
                        session_id="chat-1",
                    )
                )
            )
            follow = prompt + turn1 + reference.encode("\nprint(add(1, 2))")
            before = {n: p.status(n) for n in ("verifier", "verifier2")}
            time.sleep(0.2)  # let the session record reach Redis
            turn2, last = collect(
                p.client().Generate(
                    generation_pb2.GenerateRequest(
                        prompt_token_ids=generation_pb2.TokenIds(ids=follow),
                        max_tokens=10,
                        session_id="chat-1",
                    )
                )
            )
            assert turn2 == reference(follow, 10)
            # Everything the first turn fed is reused: at least all but its last token (more
            # when its last round fed drafts past the token budget).
            reused = last.stats.cached_prompt_tokens
            assert len(prompt) + len(turn1) - 1 <= reused <= len(prompt) + len(turn1)
            after = {n: p.status(n) for n in before}
            prefilled = sum(
                after[n].prefill_tokens_total - before[n].prefill_tokens_total for n in before
            )
            assert prefilled == len(follow) - reused
        finally:
            p.close()


def test_verifier_rejects_bad_internal_messages(model_dir):
    p = Pipeline(str(model_dir / "target"), str(model_dir / "draft_close")).start()
    try:
        stub = verifier_pb2_grpc.VerifierStub(grpc.insecure_channel(p.address("verifier")))
        open_msg = verifier_pb2.VerifyRequest(
            open=verifier_pb2.OpenSequence(
                prompt_token_ids=[1, 2, 3], sampling=common_pb2.SamplingParams(), seed=1
            )
        )

        def exchange(*steps: verifier_pb2.VerifyStep) -> grpc.RpcError:
            msgs = [open_msg] + [verifier_pb2.VerifyRequest(step=s) for s in steps]
            with pytest.raises(grpc.RpcError) as err:
                list(stub.Verify(iter(msgs)))
            return err.value

        err = exchange(verifier_pb2.VerifyStep(position=7))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "position" in err.details()
        err = exchange(verifier_pb2.VerifyStep(position=3, draft_token_ids=[5, 320]))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "draft_token_ids" in err.details()
        err = exchange(verifier_pb2.VerifyStep(position=3, draft_token_ids=[1] * 17))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as bad_open:
            list(
                stub.Verify(
                    iter(
                        [
                            verifier_pb2.VerifyRequest(
                                open=verifier_pb2.OpenSequence(prompt_token_ids=[1, 1000], seed=1)
                            )
                        ]
                    )
                )
            )
        assert bad_open.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert p.status("verifier").slots_in_use == 0
    finally:
        p.close()
