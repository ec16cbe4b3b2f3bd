"""Engine logits against ``transformers`` for every supported architecture (fp32, CPU).

Each case writes a tiny random-weight checkpoint with ``transformers``, loads it twice (the engine
and ``AutoModelForCausalLM``) and compares logits: a full prefill, token-by-token decoding, a
k+1-token verify chunk continuing the cache, a batched step against each sequence run alone, and
"rollback then overwrite" against a clean run.
Non-goals: bf16 accuracy, speed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from fixtures import TINY, save_random_model

from specdec.engine.batch import Chunk
from specdec.engine.checkpoint import load_model
from specdec.engine.model import DecoderModel
from specdec.engine.runner import ModelRunner

pytestmark = pytest.mark.unit

HF_TOL = 1e-4  # engine vs transformers, max abs diff of fp32 logits
BATCH_TOL = 1e-5  # engine vs engine: batched vs alone, rolled back vs clean
SEQ_LEN = 120  # past llama3's original_max_position_embeddings (64), far past the window (8)

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}

# case id → (model_type, config overrides). TINY has 4 query heads and 2 kv heads (GQA).
ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-gqa": ("llama", {}),
    "llama-mha": ("llama", {"num_key_value_heads": 4}),
    "llama-mqa": ("llama", {"num_key_value_heads": 1}),
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
    "llama-rope-llama3": ("llama", {"rope_scaling": LLAMA3_SCALING}),
    "llama-rope-linear": ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    "llama-attention-bias": ("llama", {"attention_bias": True}),
    "mistral": ("mistral", {}),
    "mistral-sliding-window": ("mistral", {"sliding_window": 8}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {"head_dim": 32}),  # head_dim * heads = 128 != hidden_size = 64
}


def load_hf(folder: Path, attn_implementation: str = "eager") -> torch.nn.Module:
    """The reference: the same folder through ``transformers`` (``dtype``, not ``torch_dtype``)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation=attn_implementation
    ).eval()


def hf_logits(model: torch.nn.Module, token_ids: list[int]) -> torch.Tensor:
    """Logits of every position of one sequence.  # → [T, V] fp32"""
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0].float()


def random_ids(n: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY["vocab_size"], (n,), generator=gen).tolist()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def run_alone(model: DecoderModel, chunks: list[list[int]], num_logits: int) -> torch.Tensor:
    """Feed ``chunks`` one step each into a fresh slot; the last chunk's last logits.  # [n, V]"""
    runner = ModelRunner(model, num_slots=1)
    slot, pos = runner.cache.allocate(), 0
    for ids in chunks[:-1]:
        runner.step([Chunk(slot, ids, pos, num_logits=0)])
        pos += len(ids)
    return runner.step([Chunk(slot, chunks[-1], pos, num_logits=num_logits)])[0]


def edited_copy(src: Path, dst: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of a checkpoint with ``edit`` applied to its config.json."""
    shutil.copytree(src, dst)
    raw = json.loads((dst / "config.json").read_text())
    edit(raw)
    (dst / "config.json").write_text(json.dumps(raw))
    return dst


@dataclass
class Case:
    folder: Path
    hf: torch.nn.Module
    engine: DecoderModel
    ids: list[int]  # [SEQ_LEN]
    ref: torch.Tensor  # [SEQ_LEN, V] transformers' logits of ids


@pytest.fixture(scope="module", params=list(ARCHS))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    model_type, overrides = ARCHS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    save_random_model(folder, model_type, seed=7, tokenizer=False, **overrides)
    hf = load_hf(folder)
    ids = random_ids(SEQ_LEN, seed=11)
    return Case(folder, hf, load_model(folder), ids, hf_logits(hf, ids))


# --- engine vs transformers ----------------------------------------------------------------------


def test_prefill_matches_transformers(case: Case) -> None:
    runner = ModelRunner(case.engine, num_slots=1)
    slot = runner.cache.allocate()
    logits = runner.step([Chunk(slot, case.ids, 0, num_logits=SEQ_LEN)])[0]
    assert max_diff(logits, case.ref) <= HF_TOL


def test_incremental_decode_matches_transformers(case: Case) -> None:
    runner = ModelRunner(case.engine, num_slots=1)
    slot, prefix = runner.cache.allocate(), 100
    first = runner.step([Chunk(slot, case.ids[:prefix], 0, num_logits=1)])[0]
    assert max_diff(first, case.ref[prefix - 1 : prefix]) <= HF_TOL
    for pos in range(prefix, SEQ_LEN):
        logits = runner.step([Chunk(slot, [case.ids[pos]], pos, num_logits=1)])[0]
        assert max_diff(logits, case.ref[pos : pos + 1]) <= HF_TOL, f"position {pos}"
    assert runner.cache.length(slot) == SEQ_LEN


def test_verify_chunk_continuing_cache_matches_transformers(case: Case) -> None:
    """The verifier's shape: k+1 = 5 new tokens on top of a cache, all 5 logits wanted."""
    runner = ModelRunner(case.engine, num_slots=1)
    slot = runner.cache.allocate()
    runner.step([Chunk(slot, case.ids[:60], 0, num_logits=0)])
    for start in (60, 65, 70):
        logits = runner.step([Chunk(slot, case.ids[start : start + 5], start, num_logits=5)])[0]
        assert max_diff(logits, case.ref[start : start + 5]) <= HF_TOL, f"chunk at {start}"


# --- engine vs engine ----------------------------------------------------------------------------


def test_batched_step_equals_each_sequence_alone(case: Case) -> None:
    """A prefill chunk, a 5-token verify and a 1-token decode in one step, each at its own place."""
    seqs = [random_ids(90, seed=s) for s in (1, 2, 3)]
    runner = ModelRunner(case.engine, num_slots=4)
    slots = [runner.cache.allocate() for _ in seqs]
    runner.step(
        [
            Chunk(slots[1], seqs[1][:50], 0, num_logits=0),
            Chunk(slots[2], seqs[2][:80], 0, num_logits=0),
        ]
    )
    out = runner.step(
        [
            Chunk(slots[0], seqs[0][:30], 0, num_logits=30),  # prefill
            Chunk(slots[1], seqs[1][50:55], 50, num_logits=5),  # verify k+1 = 5
            Chunk(slots[2], seqs[2][80:81], 80, num_logits=1),  # decode
        ]
    )
    alone = [
        run_alone(case.engine, [seqs[0][:30]], 30),
        run_alone(case.engine, [seqs[1][:50], seqs[1][50:55]], 5),
        run_alone(case.engine, [seqs[2][:80], seqs[2][80:81]], 1),
    ]
    for b, (got, want) in enumerate(zip(out, alone, strict=True)):
        assert torch.isfinite(got).all(), f"chunk {b}"
        assert max_diff(got, want) <= BATCH_TOL, f"chunk {b}"
    assert [runner.cache.length(s) for s in slots] == [30, 55, 81]


def test_batched_decode_at_different_and_equal_positions(case: Case) -> None:
    """Batches of 1-token decodes: at different positions (masked) and at one position."""
    seqs = [random_ids(60, seed=s) for s in (4, 5, 6)]
    runner = ModelRunner(case.engine, num_slots=3)
    slots = [runner.cache.allocate() for _ in seqs]
    lens = [40, 40, 47]
    runner.step(
        [Chunk(s, q[:n], 0, num_logits=0) for s, q, n in zip(slots, seqs, lens, strict=True)]
    )
    out = runner.step(
        [Chunk(s, q[n : n + 1], n, num_logits=1) for s, q, n in zip(slots, seqs, lens, strict=True)]
    )
    for b, (q, n) in enumerate(zip(seqs, lens, strict=True)):
        want = run_alone(case.engine, [q[:n], q[n : n + 1]], 1)
        assert max_diff(out[b], want) <= BATCH_TOL, f"slot {b}"
    # The first two now sit at the same position 41: a batch with no padding at all.
    out = runner.step(
        [Chunk(s, q[41:42], 41, num_logits=1) for s, q in zip(slots[:2], seqs[:2], strict=True)]
    )
    for b in range(2):
        want = run_alone(case.engine, [seqs[b][:40], seqs[b][40:41], seqs[b][41:42]], 1)
        assert max_diff(out[b], want) <= BATCH_TOL, f"slot {b}"


def test_rollback_then_overwrite_equals_clean_run(case: Case) -> None:
    """Draft A is half rejected: roll back, write B at the same positions, keep decoding.

    A (6 tokens) is longer than B (3): position 45 keeps A's stale keys inside the context a
    longer companion slot gives the batch, so only the causal mask keeps them out.
    """
    prefix, tokens_a, tokens_b = case.ids[:40], random_ids(6, seed=21), random_ids(3, seed=22)
    tail, companion = case.ids[40:43], random_ids(80, seed=23)
    kept = prefix + tokens_a[:2]
    runner = ModelRunner(case.engine, num_slots=2)
    slot, other = runner.cache.allocate(), runner.cache.allocate()
    runner.step([Chunk(slot, prefix, 0, num_logits=0)])
    runner.step([Chunk(slot, tokens_a, 40, num_logits=6)])
    runner.cache.rollback_to(slot, len(kept))
    assert runner.cache.length(slot) == 42
    got = [
        runner.step(
            [Chunk(slot, tokens_b, 42, num_logits=3), Chunk(other, companion[:70], 0, num_logits=0)]
        )[0]
    ]
    for i, t in enumerate(tail):
        got += runner.step(
            [
                Chunk(slot, [t], 45 + i, num_logits=1),
                Chunk(other, [companion[70 + i]], 70 + i, num_logits=0),
            ]
        )[:1]

    clean = ModelRunner(case.engine, num_slots=1)
    fresh = clean.cache.allocate()
    clean.step([Chunk(fresh, kept, 0, num_logits=0)])
    want = [clean.step([Chunk(fresh, tokens_b, 42, num_logits=3)])[0]]
    want += [clean.step([Chunk(fresh, [t], 45 + i, num_logits=1)])[0] for i, t in enumerate(tail)]
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert max_diff(g, w) <= BATCH_TOL, f"step {i}"
    # And both agree with transformers on the sequence the slot really holds.
    ref = hf_logits(case.hf, kept + tokens_b + tail)
    assert max_diff(torch.cat(got), ref[42:]) <= HF_TOL


# --- the cases really exercise what they claim ----------------------------------------------------


def _engine_logits(folder: Path, ids: list[int]) -> torch.Tensor:
    runner = ModelRunner(load_model(folder), num_slots=1)
    slot = runner.cache.allocate()
    return runner.step([Chunk(slot, ids, 0, num_logits=len(ids))])[0]


@pytest.mark.parametrize("arch", ["llama-rope-llama3", "llama-rope-linear"])
def test_rope_scaling_matters_at_this_length(arch: str, tmp_path: Path) -> None:
    """Dropping the scaling moves logits far past HF_TOL: the comparison above would catch it."""
    model_type, overrides = ARCHS[arch]
    folder = save_random_model(tmp_path / "m", model_type, seed=7, tokenizer=False, **overrides)
    ids = random_ids(SEQ_LEN, seed=11)
    ref = hf_logits(load_hf(folder), ids)

    def unscaled(raw: dict[str, Any]) -> None:
        raw.pop("rope_scaling", None)
        raw["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}

    plain = edited_copy(folder, tmp_path / "plain", unscaled)
    assert max_diff(_engine_logits(folder, ids), ref) <= HF_TOL
    assert max_diff(_engine_logits(plain, ids), ref) > 10 * HF_TOL


def test_sliding_window_masks_in_transformers_and_engine(tmp_path: Path) -> None:
    """transformers 5 applies Mistral's window (eager and sdpa agree); so does the engine."""
    folder = save_random_model(tmp_path / "m", "mistral", seed=7, tokenizer=False, sliding_window=8)
    ids = random_ids(40, seed=11)
    eager, sdpa = hf_logits(load_hf(folder), ids), hf_logits(load_hf(folder, "sdpa"), ids)
    assert max_diff(eager, sdpa) <= HF_TOL
    unwindowed = edited_copy(folder, tmp_path / "full", lambda raw: raw.update(sliding_window=None))
    hf_full = hf_logits(load_hf(unwindowed), ids)
    moved = (eager - hf_full).abs().amax(-1)  # [T]
    assert moved[:8].max() <= HF_TOL  # inside the window nothing is masked
    assert moved[8:].min() > 10 * HF_TOL  # past it every position loses keys
    assert max_diff(_engine_logits(folder, ids), eager) <= HF_TOL
    assert max_diff(_engine_logits(unwindowed, ids), hf_full) <= HF_TOL
