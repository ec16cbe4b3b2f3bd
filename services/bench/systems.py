"""The systems under test, behind one call: token ids in, generated tokens and timing out.

A ``System`` is the pipeline with one request setting (k = 0, a fixed k, a depth policy), the
engine in-process (speculative at a fixed k, or target-only), or a transformers peer
(``hf_peer.py``). Each run is timed around the whole call, on the client's side: tokens/s is
generated tokens ÷ that wall time, whatever each system counts internally.
Non-goals: sampling (greedy only); streaming timings (``load.py`` measures those).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from specdec.core.limits import MAX_SPEC_DEPTH
from specdec.v1 import generation_pb2, generation_pb2_grpc

PIPELINE, IN_PROCESS, TRANSFORMERS = "pipeline", "in-process", "transformers"
BASELINE = "pipeline k=0"  # what every ratio is to
REFERENCE = "in-process target-only"  # what every greedy output is checked against


def request_id(phase: str, system: str, *parts: object) -> str:
    """``phase/system/parts...`` within the router's request-id alphabet (no spaces); trace
    spans carry it, so ``system_of`` tells which system a span served."""
    return "/".join([phase, system.replace(" ", "+"), *map(str, parts)])


def system_of(rid: str) -> str:
    return rid.split("/")[1].replace("+", " ")


@dataclass
class SpecCounts:
    """Speculation counters of one or many requests, from the stats each system reports."""

    rounds: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    output_tokens: int = 0
    depths: list[int] = field(default_factory=list)  # k per round, requests concatenated
    accepted_per_position: list[int] = field(default_factory=lambda: [0] * MAX_SPEC_DEPTH)

    def add(self, other: SpecCounts) -> None:
        self.rounds += other.rounds
        self.draft_tokens += other.draft_tokens
        self.accepted_tokens += other.accepted_tokens
        self.output_tokens += other.output_tokens
        self.depths += other.depths
        for i, n in enumerate(other.accepted_per_position[:MAX_SPEC_DEPTH]):
            self.accepted_per_position[i] += n

    @classmethod
    def from_proto(cls, s: generation_pb2.GenerationStats) -> SpecCounts:
        per_pos = list(s.accepted_per_position) + [0] * MAX_SPEC_DEPTH
        return cls(
            s.rounds,
            s.draft_tokens,
            s.accepted_tokens,
            s.output_tokens,
            list(s.depths),
            per_pos[:MAX_SPEC_DEPTH],
        )


@dataclass
class Run:
    """One request's outcome."""

    token_ids: list[int]
    elapsed_s: float  # client-side wall time of the whole call
    counts: SpecCounts | None = None  # None: the system reports no speculation stats


@dataclass
class System:
    name: str  # e.g. "pipeline k=3", "pipeline goodput", "in-process k=4"
    kind: str  # PIPELINE, IN_PROCESS or TRANSFORMERS
    run: Callable[[Sequence[int], str], Run]  # (prompt ids, request id) → Run
    k: int | None = None  # fixed depth; None for a policy or a peer
    policy: str | None = None  # adaptive depth policy, if any


def pipeline_request(k: int | None, policy: str | None) -> dict[str, int]:
    """GenerateRequest fields for k = 0 (no drafting), a fixed k, or a named policy."""
    if policy is not None:
        return {"depth_policy": POLICY_ENUMS[policy]}
    if not k:
        return {"draft_method": generation_pb2.DRAFT_METHOD_NONE}
    return {"depth_policy": generation_pb2.DEPTH_POLICY_FIXED, "fixed_depth": k}


POLICY_ENUMS = {
    "heuristic": generation_pb2.DEPTH_POLICY_HEURISTIC,
    "goodput": generation_pb2.DEPTH_POLICY_GOODPUT,
}


def pipeline_system(
    stub: generation_pb2_grpc.GenerationStub,
    max_tokens: int,
    k: int | None = None,
    policy: str | None = None,
) -> System:
    fields_ = pipeline_request(k, policy)
    name = f"pipeline {policy}" if policy else f"pipeline k={k}"

    def run(ids: Sequence[int], request_id: str) -> Run:
        req = generation_pb2.GenerateRequest(
            prompt_token_ids=generation_pb2.TokenIds(ids=ids),
            max_tokens=max_tokens,
            request_id=request_id,
            **fields_,
        )
        tokens: list[int] = []
        stats = None
        start = time.perf_counter()
        for response in stub.Generate(req):
            tokens += response.token_ids
            if response.HasField("stats"):
                stats = response.stats
        elapsed = time.perf_counter() - start
        return Run(tokens, elapsed, SpecCounts.from_proto(stats) if stats else None)

    return System(name, PIPELINE, run, k=None if policy else (k or 0), policy=policy)


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

    def systems(self, k: int, max_tokens: int) -> list[System]:
        """Speculative decoding at depth ``k``, and target-only decoding (the reference)."""
        return [
            System(f"in-process k={k}", IN_PROCESS, self._runner(k, max_tokens), k),
            System(REFERENCE, IN_PROCESS, self._runner(0, max_tokens), 0),
        ]

    def _runner(self, k: int, max_tokens: int) -> Callable[[Sequence[int], str], Run]:
        from specdec.engine.proposer_draft import DraftModelProposer
        from specdec.engine.sampling import SamplingParams
        from specdec.engine.speculative import generate

        def run(ids: Sequence[int], _request_id: str) -> Run:
            proposer = DraftModelProposer(self.draft, self.target.vocab_size) if k else None
            start = time.perf_counter()
            result = generate(self.target, ids, SamplingParams(), max_tokens, proposer, k)
            elapsed = time.perf_counter() - start
            s = result.stats
            counts = SpecCounts(
                s.rounds,
                s.draft_tokens,
                s.accepted_tokens,
                s.output_tokens,
                list(s.depths),
                list(s.accepted_per_position),
            )
            return Run(result.token_ids, elapsed, counts if k else None)

        return run
