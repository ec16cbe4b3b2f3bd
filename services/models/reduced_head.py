"""Give a draft checkpoint an LM head over a subset of the vocabulary (FR-Spec, arXiv 2502.14856).

A draft's LM head costs ``vocab × hidden`` reads per step: over SmolLM2's 49k tokens that is as
much as several of the target's layers. Frequency-ranked speculative sampling keeps only the
rows of the most frequent tokens: the draft then proposes only those, with probability exactly
zero elsewhere, and the target's verification keeps the output exact whatever the subset.

``write_reduced_head`` copies a Hugging Face folder and replaces ``lm_head.weight`` [V, C] by its
rows for ``token_ids`` [Vh, C], adds the ids as ``lm_head.token_ids`` (int64) and writes
``specdec_head_vocab_size`` into config.json (the engine reads both; ``engine/model.py``).
``frequent_tokens`` ranks ids by their count in a corpus of token ids.
Reads and writes with safetensors' torch API (checkpoints are often bf16, which numpy lacks).
Non-goals: sharded checkpoints (drafts are small), choosing the subset size (measured per pair).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from specdec.core.model_config import HEAD_VOCAB_KEY

WEIGHTS = "model.safetensors"


def frequent_tokens(corpus: Iterable[Iterable[int]], vocab_size: int, size: int) -> np.ndarray:
    """The ``size`` most frequent ids in ``corpus`` (ties to the lower id), sorted by id.

    Ids that never occur rank by id after those that do, so a small corpus still fills ``size``.
    """
    counts = np.zeros(vocab_size, dtype=np.int64)
    for ids in corpus:
        np.add.at(counts, np.fromiter(ids, dtype=np.int64), 1)
    order = np.lexsort((np.arange(vocab_size), -counts))  # by count desc, then id asc
    return np.sort(order[:size])


def write_reduced_head(src: Path, dst: Path, token_ids: np.ndarray) -> Path:
    """Copy the checkpoint folder ``src`` to ``dst`` with its LM head cut to ``token_ids``."""
    ids = np.asarray(token_ids, dtype=np.int64)
    config = json.loads((src / "config.json").read_text())
    vocab = int(config["vocab_size"])
    if ids.ndim != 1 or len(np.unique(ids)) != len(ids) or ids.min() < 0 or ids.max() >= vocab:
        raise ValueError(f"token_ids must be distinct ids in [0, {vocab})")
    state = load_file(str(src / WEIGHTS))
    head = state.get("lm_head.weight")
    if head is None or config.get("tie_word_embeddings"):
        head = state["model.embed_tokens.weight"]
    index = torch.from_numpy(ids)
    state["lm_head.weight"] = head[index].contiguous()  # [Vh, C]
    state["lm_head.token_ids"] = index
    config.update({"tie_word_embeddings": False, HEAD_VOCAB_KEY: len(ids)})
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.is_file() and path.name not in (WEIGHTS, "config.json"):
            shutil.copy2(path, dst / path.name)
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(state, str(dst / WEIGHTS), metadata={"format": "pt"})
    return dst
