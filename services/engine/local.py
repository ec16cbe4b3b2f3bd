"""Load a target (and a draft) from folders and generate once, in this process.

The library behind ``specdec generate --in-process``: picks device and dtype, checks that draft
and target share a tokenizer, builds the proposer, and returns a JSON-ready result.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from specdec.core.tokenizer import Tokenizer, check_same_tokenizer
from specdec.engine.checkpoint import load_model
from specdec.engine.compiled import compile_by_default
from specdec.engine.draft_dtype import load_draft
from specdec.engine.proposer import Proposer
from specdec.engine.proposer_feature import model_proposer
from specdec.engine.proposer_ngram import NgramProposer
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.speculative import GenerationResult, generate


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_dtype(device: str) -> torch.dtype:
    """A target's dtype: fp32 on CPU (exact and fast enough), bf16 on GPU."""
    return torch.float32 if device == "cpu" else torch.bfloat16


def run_in_process(
    target: str,
    prompt: str,
    draft: str | None = None,
    ngram: bool = False,
    k: int = 4,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    max_tokens: int = 128,
    device: str | None = None,
    compile: bool | None = None,
) -> dict[str, Any]:
    """Generate a continuation of ``prompt``; returns text, generated token ids and stats.
    ``compile``: compile both models' forwards first (None: ``SPECDEC_COMPILE``)."""
    device = device or default_device()
    dtype = default_dtype(device)
    compile = compile_by_default(compile)
    tokenizer = Tokenizer.from_folder(target)
    target_runner = ModelRunner(load_model(target, dtype, device), num_slots=1, compile=compile)
    target_runner.warm_compiled()
    proposer: Proposer | None = None
    if draft:
        check_same_tokenizer(tokenizer, Tokenizer.from_folder(draft), draft)
        draft_runner = ModelRunner(load_draft(draft, device), num_slots=1, compile=compile)
        draft_runner.warm_compiled()
        proposer = model_proposer(draft_runner, vocab_limit=target_runner.vocab_size)
    elif ngram:
        proposer = NgramProposer()
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    result = generate(
        target_runner,
        tokenizer.encode(prompt),
        params,
        max_tokens,
        proposer=proposer,
        depth=k if proposer else 0,
    )
    return to_json(result, tokenizer.decode(result.token_ids))


def to_json(result: GenerationResult, text: str) -> dict[str, Any]:
    stats = asdict(result.stats)
    stats.update(
        acceptance_rate=result.stats.acceptance_rate,
        mean_acceptance_length=result.stats.mean_acceptance_length,
        elapsed_s=result.elapsed_s,
        first_token_s=result.first_token_s,
        tokens_per_s=result.tokens_per_s,
    )
    return {
        "text": text,
        "token_ids": result.token_ids,
        "finish_reason": result.finish_reason,
        "stats": stats,
    }
