"""A misbehaving internal peer harms no one else: bad ``Verify`` and ``Propose`` streams, and
items that fail inside a batch, cost their batch-mates nothing.

The public requests run through the router (real servers on loopback, real tiny models) while
a bad client talks to the verifier or the draft directly; every public request must succeed
with the output of a clean run, and the bad client gets INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from specdec.core.errors import InvalidRequest
from specdec.draft.core import DraftCore
from specdec.engine.checkpoint import load_model
from specdec.engine.draft_engine import NO_AHEAD, Ahead
from specdec.engine.proposer import Proposal
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.local_pipeline import Pipeline
from specdec.v1 import (
    common_pb2,
    draft_pb2,
    draft_pb2_grpc,
    generation_pb2,
    verifier_pb2,
    verifier_pb2_grpc,
)
from specdec.verifier.core import VerifierCore

pytestmark = pytest.mark.service

PROMPTS = [f"def f{i}(a, b):\n" for i in range(8)]
MAX_TOKENS = 24
SAMPLED = common_pb2.SamplingParams(temperature=1.0)


def _row(ids: list[int], probs: list[float]) -> common_pb2.SparseDistribution:
    return common_pb2.SparseDistribution(token_ids=ids, probs=probs)


# (what is wrong, the step after a 3-token prompt and its first token)
BAD_VERIFY_STEPS = [
    ("probs sum to 0.5", dict(draft_token_ids=[5], draft_probs=[_row([5, 6], [0.25, 0.25])])),
    ("NaN", dict(draft_token_ids=[5], draft_probs=[_row([5, 6], [float("nan"), 0.5])])),
    ("negative", dict(draft_token_ids=[5], draft_probs=[_row([5, 6], [1.5, -0.5])])),
    ("infinite", dict(draft_token_ids=[5], draft_probs=[_row([5, 6], [float("inf"), 0.0])])),
    ("duplicate ids", dict(draft_token_ids=[5], draft_probs=[_row([5, 5], [0.5, 0.5])])),
    ("id out of range", dict(draft_token_ids=[5], draft_probs=[_row([5, 10**6], [0.5, 0.5])])),
    ("draft out of range", dict(draft_token_ids=[10**6], draft_probs=[_row([5], [1.0])])),
    ("draft not in its row", dict(draft_token_ids=[7], draft_probs=[_row([5, 6], [0.5, 0.5])])),
    ("too few rows", dict(draft_token_ids=[5, 6], draft_probs=[_row([5], [1.0])])),
    ("oversize k", dict(draft_token_ids=[5] * 17)),
]
BAD_POSITIONS = [0, 3, 5, 10**6]  # after the open, the sequence holds 4 committed tokens


@pytest.fixture(scope="module")
def pipeline(model_dir: Path):
    p = Pipeline(str(model_dir / "target"), str(model_dir / "draft_close"), slots=16).start()
    yield p
    p.close()


@pytest.fixture(scope="module")
def clean(pipeline: Pipeline) -> list[list[int]]:
    return [_generate(pipeline, prompt) for prompt in PROMPTS]


def _generate(p: Pipeline, prompt: str) -> list[int]:
    request = generation_pb2.GenerateRequest(prompt_text=prompt, max_tokens=MAX_TOKENS)
    return [t for r in p.client().Generate(request, timeout=60) for t in r.token_ids]


def _under_attack(p: Pipeline, attack) -> tuple[list[list[int] | str], dict[str, int]]:
    """The public requests, run while ``attack(stop)`` runs on another thread; its tally."""
    stop = threading.Event()
    tally: dict[str, int] = {}
    attacker = threading.Thread(target=lambda: tally.update(attack(stop)))
    attacker.start()

    def one(prompt: str) -> list[int] | str:
        try:
            return _generate(p, prompt)
        except grpc.RpcError as err:
            return f"{err.code().name}: {err.details()}"

    try:
        with ThreadPoolExecutor(4) as pool:
            outputs = list(pool.map(one, PROMPTS))
    finally:
        stop.set()
        attacker.join(timeout=30)
    return outputs, tally


def _refused(err: grpc.RpcError, tally: dict[str, int], what: str) -> None:
    key = f"{what} -> {err.code().name}"
    tally[key] = tally.get(key, 0) + 1


def test_a_bad_verify_client_fails_no_public_request(pipeline: Pipeline, clean):
    def attack(stop: threading.Event) -> dict[str, int]:
        stub = verifier_pb2_grpc.VerifierStub(grpc.insecure_channel(pipeline.address("verifier")))
        opening = verifier_pb2.VerifyRequest(
            open=verifier_pb2.OpenSequence(prompt_token_ids=[1, 2, 3], sampling=SAMPLED, seed=1)
        )
        cases = [(name, verifier_pb2.VerifyStep(position=4, **s)) for name, s in BAD_VERIFY_STEPS]
        cases += [(f"position {n}", verifier_pb2.VerifyStep(position=n)) for n in BAD_POSITIONS]
        tally: dict[str, int] = {}
        while not stop.is_set():
            for name, step in cases:
                try:
                    list(stub.Verify(iter([opening, verifier_pb2.VerifyRequest(step=step)])))
                    tally[f"{name} -> OK"] = 1
                except grpc.RpcError as err:
                    _refused(err, tally, name)
        return tally

    outputs, tally = _under_attack(pipeline, attack)
    assert outputs == clean  # 0 failed, every output as in the clean run
    assert tally and [k for k in tally if not k.endswith("INVALID_ARGUMENT")] == []
    assert pipeline.wait_idle() == 0


def test_a_bad_propose_client_fails_no_public_request(pipeline: Pipeline, clean):
    open_ok = draft_pb2.OpenDraft(prompt_token_ids=[1, 2, 3], sampling=SAMPLED, seed=1)
    bad_streams = {
        "position past the end": [open_ok, draft_pb2.ProposeStep(position=9, token_ids=[4])],
        "depth 17": [open_ok, draft_pb2.ProposeStep(position=3, token_ids=[4], depth=17)],
        "token out of range": [open_ok, draft_pb2.ProposeStep(position=3, token_ids=[10**6])],
        "ahead too wide": [
            open_ok,
            draft_pb2.ProposeStep(position=3, depth=2, ahead=draft_pb2.AheadSettings(width=99)),
        ],
        "prompt out of range": [draft_pb2.OpenDraft(prompt_token_ids=[10**6])],
        "empty prompt": [draft_pb2.OpenDraft(sampling=SAMPLED)],
        "temperature NaN": [
            draft_pb2.OpenDraft(
                prompt_token_ids=[1], sampling=common_pb2.SamplingParams(temperature=float("nan"))
            )
        ],
        "step first": [draft_pb2.ProposeStep(position=0, token_ids=[1], depth=2)],
        "context overflow": [
            open_ok,
            draft_pb2.ProposeStep(position=3, token_ids=[4] * 300, depth=2),
        ],
    }

    def as_request(msg) -> draft_pb2.ProposeRequest:
        if isinstance(msg, draft_pb2.OpenDraft):
            return draft_pb2.ProposeRequest(open=msg)
        return draft_pb2.ProposeRequest(step=msg)

    def attack(stop: threading.Event) -> dict[str, int]:
        stub = draft_pb2_grpc.DraftStub(grpc.insecure_channel(pipeline.address("draft")))
        tally: dict[str, int] = {}
        while not stop.is_set():
            for name, msgs in bad_streams.items():
                try:
                    list(stub.Propose(iter([as_request(m) for m in msgs]), timeout=10))
                    tally[f"{name} -> OK"] = 1
                except grpc.RpcError as err:
                    _refused(err, tally, name)
        return tally

    outputs, tally = _under_attack(pipeline, attack)
    assert outputs == clean
    assert tally and [k for k in tally if not k.endswith("INVALID_ARGUMENT")] == []
    assert pipeline.wait_idle() == 0


@pytest.fixture(scope="module")
def runner(model_dir: Path) -> ModelRunner:
    return ModelRunner(load_model(model_dir / "target"), num_slots=6, max_seq_len=64)


def test_an_item_failing_inside_a_verify_batch_fails_alone(runner: ModelRunner):
    """A step past every edge check that still breaks the forward (a draft id outside the
    vocabulary, handed to the core directly) fails alone; its batch-mates get their answers."""
    greedy = SamplingParams()

    async def main() -> list[object]:
        core = VerifierCore(runner)
        core.start()
        seqs = [(await core.open([5, 6, 7 + i], greedy, 0, ""))[0] for i in range(4)]
        for seq in seqs:
            await core.verify(seq, 3, Proposal([]))  # prefills
        steps = [core.verify(seq, 4, Proposal([9])) for seq in seqs[:3]]
        steps.insert(1, core.verify(seqs[3], 4, Proposal([runner.vocab_size + 5])))
        results = await asyncio.gather(*steps, return_exceptions=True)
        again = await core.verify(seqs[0], len(seqs[0].committed), Proposal([]))
        results.append(again)
        for seq in seqs:
            core.close(seq, "")
        await asyncio.sleep(0.05)
        await core.stop()
        return results

    results = asyncio.run(main())
    assert isinstance(results[1], InvalidRequest), results[1]
    ok = [r for i, r in enumerate(results) if i != 1]
    assert not any(isinstance(r, Exception) for r in ok), ok
    assert runner.cache.slots_in_use == 0


def test_a_cursor_failing_inside_a_draft_forward_fails_alone(model_dir: Path):
    draft = ModelRunner(load_model(model_dir / "draft_close"), num_slots=4, max_seq_len=64)
    greedy = SamplingParams()

    async def main() -> list[object]:
        core = DraftCore(draft)
        core.start()
        seqs = [core.open([5, 6, 7 + i], greedy, 0, ngram=False) for i in range(3)]
        bad = [draft.vocab_size + 5]  # past the server's edge check, into the forward
        futures = [
            core.step(seq, 3, bad if i == 1 else [], 3, 0, NO_AHEAD) for i, seq in enumerate(seqs)
        ]
        results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 10)
        for seq in seqs:
            core.close(seq)
        await core.stop()
        return results

    results = asyncio.run(main())
    assert isinstance(results[1], InvalidRequest), results[1]
    assert [len(r) for i, r in enumerate(results) if i != 1] == [3, 3]
    assert draft.cache.slots_in_use == 0


def test_back_to_back_steps_that_wait_for_nothing_leave_the_draft_loop_serving(
    model_dir: Path, caplog
):
    """Two "verifying" steps (no drafts asked) in a row, with draft-ahead on: the second makes
    the first's drafting stale. Found by the fuzz: both cursors fed one slot, draft-ahead then
    raised, and the draft's model loop died (every later request drafted nothing)."""
    draft = ModelRunner(load_model(model_dir / "draft_close"), num_slots=8, max_seq_len=64)
    greedy = SamplingParams()

    async def main() -> list[int]:
        core = DraftCore(draft)
        core.start()
        seq = core.open([260], greedy, 1, False, Ahead(4, 1), lambda base, results: None)
        await asyncio.sleep(0.05)
        for _ in range(2):
            core.step(seq, 0, [112, 98, 139, 256], 0, 4, Ahead(1, 3))
        await asyncio.sleep(0.1)
        other = core.open([5, 6, 7], greedy, 0, ngram=False)
        proposal = await asyncio.wait_for(core.step(other, 3, [], 3, 0, NO_AHEAD), 10)
        for s in (seq, other):
            core.close(s)
        await core.stop()
        return proposal.draft_token_ids

    assert len(asyncio.run(main())) == 3
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert draft.cache.slots_in_use == 0
