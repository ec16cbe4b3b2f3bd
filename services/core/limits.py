"""Bounds every role agrees on, spelled once: the router validates against them at the edge, the
replicas validate again at theirs.
"""

from __future__ import annotations

from collections.abc import Sequence

from specdec.core.errors import InvalidRequest

# The deepest speculation any caller may ask for in one round (draft tokens verified at once).
MAX_SPEC_DEPTH = 16

# Draft probabilities shipped per position when sampling (the draft's top tokens).
MAX_SPARSE_WIDTH = 256

# Likeliest alternatives returned with each generated token's logprob (OpenAI's and vLLM's bound).
MAX_TOP_LOGPROBS = 20


def check_logprobs(num_top: int | None, field: str = "logprobs") -> None:
    """Raise ``InvalidRequest`` unless logprobs are off (None) or 0 <= num_top <= 20."""
    if num_top is not None and not 0 <= num_top <= MAX_TOP_LOGPROBS:
        raise InvalidRequest(
            field, f"alternatives per token must be in [0, {MAX_TOP_LOGPROBS}], got {num_top}"
        )


def check_depth(k: int, field: str = "k") -> None:
    """Raise ``InvalidRequest`` unless 0 <= k <= MAX_SPEC_DEPTH."""
    if not 0 <= k <= MAX_SPEC_DEPTH:
        raise InvalidRequest(field, f"speculation depth must be in [0, {MAX_SPEC_DEPTH}], got {k}")


def check_prompt(prompt_ids: Sequence[int], vocab_size: int, max_seq_len: int) -> None:
    """Raise ``InvalidRequest`` naming the prompt unless it fits the vocabulary and leaves room
    to generate within ``max_seq_len``."""
    if not prompt_ids:
        raise InvalidRequest("prompt", "is empty; give at least one token")
    if len(prompt_ids) >= max_seq_len:
        raise InvalidRequest(
            "prompt",
            f"has {len(prompt_ids)} tokens; the context holds "
            f"{max_seq_len}, leaving no room to generate",
        )
    bad = [t for t in prompt_ids if not 0 <= t < vocab_size]
    if bad:
        raise InvalidRequest(
            "prompt", f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})"
        )
