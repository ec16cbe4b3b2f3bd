"""The systems under test, behind one call: token ids in, generated tokens and timing out.

A ``System`` is the pipeline with one request setting (k = 0, a fixed k, a depth policy;
draft-ahead on or off), the engine in-process (speculative at a fixed k, or target-only), or a
transformers peer (``hf_peer.py``). Each run is timed around the whole call, on the client's
side: tokens/s is generated tokens ÷ that wall time, whatever each system counts internally;
time to first token is the client's wait for the first token.
The bench's own client thread runs where the router runs while it measures a pipeline system
(as a client on that machine would compete with the router, not with the verifier), and
anywhere while it measures the in-process engine (``pin_client``).
Non-goals: sampling (greedy only); load (``load.py``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from specdec.core.limits import MAX_SPEC_DEPTH
from specdec.core.rounds import Tally
from specdec.v1 import generation_pb2, generation_pb2_grpc

PIPELINE, IN_PROCESS, TRANSFORMERS = "pipeline", "in-process", "transformers"
BASELINE = "pipeline k=0"  # what the "× k=0" ratios are to
REFERENCE = "in-process target-only"  # what every greedy output is checked against


def request_id(phase: str, system: str, *parts: object) -> str:
    """``phase/system/parts...`` within the router's request-id alphabet (no spaces)."""
    return "/".join([phase, system.replace(" ", "+"), *map(str, parts)])


def system_of(rid: str) -> str:
    return rid.split("/")[1].replace("+", " ")


def _padded(values: Sequence[int]) -> list[int]:
    return (list(values) + [0] * MAX_SPEC_DEPTH)[:MAX_SPEC_DEPTH]


def tally_from_proto(s: generation_pb2.GenerationStats) -> Tally:
    """A request's tally as the router reported it in its last response."""
    tally = Tally()
    for name in (
        "rounds",
        "draft_tokens",
        "accepted_tokens",
        "rejections",
        "output_tokens",
        "ahead_hits",
        "ahead_misses",
        "ahead_hits_after_full",
        "ahead_rounds_after_full",
        "draft_ns",
        "verify_forward_ns",
        "verify_queue_ns",
        "verify_service_ns",
        "network_ns",
        "router_ns",
        "cached_prompt_tokens",
    ):
        setattr(tally, name, getattr(s, name))
    tally.depths = list(s.depths)
    for name in (
        "accepted_per_position",
        "proposed_per_position",
        "ahead_hits_after_rejection",
        "ahead_rounds_after_rejection",
    ):
        setattr(tally, name, _padded(getattr(s, name)))
    return tally


@dataclass
class Run:
    """One request's outcome."""

    token_ids: list[int]
    elapsed_s: float  # client-side wall time of the whole call
    counts: Tally | None = None  # None: the system reports no speculation stats
    ttft_s: float | None = None  # client-side wait for the first token


@dataclass
class System:
    name: str  # e.g. "pipeline k=3", "pipeline goodput ahead=off", "in-process k=4"
    kind: str  # PIPELINE, IN_PROCESS or TRANSFORMERS
    run: Callable[[Sequence[int], str], Run]  # (prompt ids, request id) → Run
    k: int | None = None  # fixed depth; None for a policy or a peer
    policy: str | None = None  # adaptive depth policy, if any
    ahead: bool | None = None  # draft-ahead (pipeline systems that draft)
    cpus: frozenset[int] | None = None  # where the bench's client runs for it; None: anywhere


ALL_CPUS = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def pin_client(cpus: frozenset[int] | None) -> None:
    """Run the calling thread on ``cpus`` (None: every CPU this process started with)."""
    target = cpus or ALL_CPUS
    if target and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, target)


POLICY_ENUMS = {
    "heuristic": generation_pb2.DEPTH_POLICY_HEURISTIC,
    "goodput": generation_pb2.DEPTH_POLICY_GOODPUT,
}


def pipeline_request(k: int | None, policy: str | None, ahead: bool = True) -> dict[str, Any]:
    """GenerateRequest fields for k = 0 (no drafting), a fixed k, or a named policy; with
    ``ahead`` the router decides draft-ahead as it does by default (on, unless too many
    requests are in flight), without it draft-ahead is off."""
    off = {} if ahead else {"draft_ahead": False}
    if policy is not None:
        return {"depth_policy": POLICY_ENUMS[policy], **off}
    if not k:
        return {"draft_method": generation_pb2.DRAFT_METHOD_NONE}
    return {"depth_policy": generation_pb2.DEPTH_POLICY_FIXED, "fixed_depth": k, **off}


def pipeline_name(k: int | None, policy: str | None, ahead: bool = True) -> str:
    name = f"pipeline {policy}" if policy else f"pipeline k={k or 0}"
    return name if ahead or not (k or policy) else f"{name} ahead=off"


def pipeline_system(
    stub: generation_pb2_grpc.GenerationStub,
    max_tokens: int,
    k: int | None = None,
    policy: str | None = None,
    ahead: bool = True,
    cpus: frozenset[int] | None = None,
) -> System:
    fields_ = pipeline_request(k, policy, ahead)

    def run(ids: Sequence[int], request_id: str) -> Run:
        req = generation_pb2.GenerateRequest(
            prompt_token_ids=generation_pb2.TokenIds(ids=ids),
            max_tokens=max_tokens,
            request_id=request_id,
            **fields_,
        )
        tokens: list[int] = []
        stats, first = None, None
        start = time.perf_counter()
        for response in stub.Generate(req):
            if first is None and response.token_ids:
                first = time.perf_counter() - start
            tokens += response.token_ids
            if response.HasField("stats"):
                stats = response.stats
        elapsed = time.perf_counter() - start
        return Run(tokens, elapsed, tally_from_proto(stats) if stats else None, first)

    drafting = bool(k or policy)
    return System(
        pipeline_name(k, policy, ahead),
        PIPELINE,
        run,
        k=None if policy else (k or 0),
        policy=policy,
        ahead=ahead if drafting else None,
        cpus=cpus,
    )


class InProcess:
    """The engine without services: the target and the draft, one KV-cache slot each."""

    def __init__(self, target_dir: str, draft_dir: str, max_seq_len: int) -> None:
        from specdec.engine.checkpoint import load_model
        from specdec.engine.draft_dtype import load_draft
        from specdec.engine.runner import ModelRunner

        # Each model in the dtype the services load it in, as it is served.
        draft = load_draft(draft_dir, "cpu")
        self.target = ModelRunner(load_model(target_dir), num_slots=1, max_seq_len=max_seq_len)
        self.draft = ModelRunner(draft, num_slots=1, max_seq_len=max_seq_len)

    def systems(self, ks: Sequence[int], max_tokens: int) -> list[System]:
        """Speculative decoding at each depth in ``ks``, and target-only decoding (the
        reference)."""
        out = [System(f"in-process k={k}", IN_PROCESS, self._runner(k, max_tokens), k) for k in ks]
        return [*out, System(REFERENCE, IN_PROCESS, self._runner(0, max_tokens), 0)]

    def _runner(self, k: int, max_tokens: int) -> Callable[[Sequence[int], str], Run]:
        from specdec.engine.proposer_feature import model_proposer
        from specdec.engine.sampling import SamplingParams
        from specdec.engine.speculative import generate

        def run(ids: Sequence[int], _request_id: str) -> Run:
            proposer = model_proposer(self.draft, self.target.vocab_size) if k else None
            start = time.perf_counter()
            result = generate(self.target, ids, SamplingParams(), max_tokens, proposer, k)
            elapsed = time.perf_counter() - start
            return Run(result.token_ids, elapsed, result.stats, result.first_token_s)

        return run
