"""Loading model folders: every broken folder is a ``CheckpointError`` that names the culprit.

Also: sharded checkpoints load like single-file ones, ``generation_config.json`` eos ids win,
the caller picks the dtype, and the tokenizer round-trips text.
Non-goals: numerics against transformers (see ``test_model_hf.py``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fixtures import CORPUS, TINY, save_random_model
from safetensors.torch import load_file, save_file

from specdec.core.errors import CheckpointError
from specdec.core.model_config import SUPPORTED_MODEL_TYPES
from specdec.core.tokenizer import Tokenizer
from specdec.engine.batch import Chunk
from specdec.engine.checkpoint import INDEX_FILE, SINGLE_FILE, load_config, load_model
from specdec.engine.runner import ModelRunner

pytestmark = pytest.mark.unit

PROMPT = list(range(3, 43))  # 40 token ids


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A good llama folder (config, weights, generation config, tokenizer); never modified."""
    return save_random_model(tmp_path_factory.mktemp("pristine"), "llama", seed=3)


@pytest.fixture
def folder(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of ``pristine`` for a test to break."""
    return Path(shutil.copytree(pristine, tmp_path / "model"))


def edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    raw = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    path.write_text(json.dumps(raw))


def edit_weights(folder: Path, edit: Callable[[dict[str, torch.Tensor]], object]) -> None:
    path = folder / SINGLE_FILE
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path), metadata={"format": "pt"})


def logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:  # → [T, V] fp32
    runner = ModelRunner(model, num_slots=1)
    slot = runner.cache.allocate()
    return runner.step([Chunk(slot, ids, 0, num_logits=len(ids))])[0]


def assert_error(load: Callable[[], object], *fragments: str) -> None:
    """``load()`` raises a ``CheckpointError`` whose message holds every fragment."""
    with pytest.raises(CheckpointError) as info:
        load()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# --- the folder and config.json ------------------------------------------------------------------


def test_pristine_folder_loads(pristine: Path) -> None:
    model = load_model(pristine)
    assert model.config.model_type == "llama"
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert logits(model, PROMPT).shape == (len(PROMPT), TINY["vocab_size"])


def test_missing_folder(tmp_path: Path) -> None:
    assert_error(
        lambda: load_model(tmp_path / "nowhere"), str(tmp_path / "nowhere"), "not a directory"
    )


def test_missing_config_json(folder: Path) -> None:
    (folder / "config.json").unlink()
    assert_error(lambda: load_model(folder), str(folder / "config.json"), "missing")


@pytest.mark.parametrize("text", ["{not json", "", "\xff\xfe"])
def test_config_json_not_json(folder: Path, text: str) -> None:
    (folder / "config.json").write_text(text, encoding="latin-1")
    assert_error(lambda: load_model(folder), str(folder / "config.json"), "not valid JSON")


def test_config_json_not_an_object(folder: Path) -> None:
    (folder / "config.json").write_text("[1, 2, 3]")
    assert_error(lambda: load_model(folder), "config.json", "JSON object")


@pytest.mark.parametrize("model_type", ["gpt2", None])
def test_unknown_model_type_lists_supported_ones(folder: Path, model_type: str | None) -> None:
    edit_config(folder, model_type=model_type)
    assert_error(
        lambda: load_model(folder), "config.json", repr(model_type), *SUPPORTED_MODEL_TYPES
    )


@pytest.mark.parametrize("layout", ["rope_parameters", "rope_scaling"])  # transformers 5 / 4.x
def test_unsupported_rope_type(folder: Path, layout: str) -> None:
    yarn = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    edit_config(folder, **{layout: yarn})
    assert_error(lambda: load_model(folder), "config.json", "'yarn'", "llama3", "linear")


def test_rope_scaling_in_4x_layout_is_read(folder: Path) -> None:
    edit_config(
        folder,
        rope_parameters=None,
        rope_theta=500000.0,
        rope_scaling={"type": "linear", "factor": 2.0},
    )
    cfg = load_config(folder)
    assert cfg.rope_theta == 500000.0
    assert cfg.rope_scaling == {"type": "linear", "factor": 2.0, "rope_type": "linear"}


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"hidden_size": None}, "hidden_size"),
        ({"vocab_size": "many"}, "many"),
        ({"hidden_act": "gelu"}, "gelu"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
    ],
    ids=["missing-field", "malformed-field", "activation", "heads-ratio", "zero-layers"],
)
def test_malformed_config(folder: Path, changes: dict, fragment: str) -> None:
    edit_config(folder, **changes)
    assert_error(lambda: load_model(folder), "config.json", fragment)


# --- weights -------------------------------------------------------------------------------------


def test_missing_weights(folder: Path) -> None:
    (folder / SINGLE_FILE).unlink()
    assert_error(lambda: load_model(folder), SINGLE_FILE, INDEX_FILE, str(folder))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "bad-header"])
def test_corrupt_safetensors(folder: Path, damage: str) -> None:
    path = folder / SINGLE_FILE
    data = path.read_bytes()
    broken = {
        "truncated": data[: len(data) // 2],
        "garbage": bytes(range(256)) * 8,
        "empty": b"",
        "bad-header": (9).to_bytes(8, "little") + b"{not json",
    }[damage]
    path.write_bytes(broken)
    assert_error(lambda: load_model(folder), str(path), "safetensors")


def test_missing_tensor_is_named(folder: Path) -> None:
    edit_weights(folder, lambda state: state.pop("model.layers.1.mlp.up_proj.weight"))
    assert_error(lambda: load_model(folder), "missing model.layers.1.mlp.up_proj.weight")


def test_unexpected_tensor_is_named(folder: Path) -> None:
    edit_weights(folder, lambda state: state.update({"model.extra.weight": torch.zeros(2)}))
    assert_error(lambda: load_model(folder), "unexpected model.extra.weight")


def test_wrong_shape_is_named(folder: Path) -> None:
    name = "model.layers.0.self_attn.k_proj.weight"
    edit_weights(folder, lambda state: state.update({name: torch.zeros(16, 64)}))
    assert_error(lambda: load_model(folder), name, "(16, 64)", "(32, 64)")


def test_config_disagreeing_with_weights(folder: Path) -> None:
    edit_config(folder, intermediate_size=96)
    assert_error(lambda: load_model(folder), "mlp", "(96, 64)", "(128, 64)")


def test_rotary_inv_freq_in_checkpoint_is_ignored(folder: Path, pristine: Path) -> None:
    """Older checkpoints carry ``rotary_emb.inv_freq``; the engine recomputes it."""
    stale = {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.full((8,), 123.0)}
    edit_weights(folder, lambda state: state.update(stale))
    assert torch.equal(logits(load_model(folder), PROMPT), logits(load_model(pristine), PROMPT))


def test_tied_embeddings_stay_tied(tmp_path: Path) -> None:
    folder = save_random_model(tmp_path, "llama", seed=3, tokenizer=False, tie_word_embeddings=True)
    assert "lm_head.weight" not in load_file(str(folder / SINGLE_FILE))
    model = load_model(folder)
    assert model.lm_head.weight is model.model.embed_tokens.weight


# --- sharded checkpoints -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded(pristine: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pristine`` re-saved by transformers in shards of at most 50 KB."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("sharded")
    hf = AutoModelForCausalLM.from_pretrained(pristine, dtype=torch.float32)
    hf.save_pretrained(folder, max_shard_size="50KB")
    return folder


def test_sharded_checkpoint_matches_single_file(sharded: Path, pristine: Path) -> None:
    assert (sharded / INDEX_FILE).is_file() and not (sharded / SINGLE_FILE).exists()
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 1
    single, multi = load_model(pristine).state_dict(), load_model(sharded).state_dict()
    assert single.keys() == multi.keys()
    assert all(torch.equal(single[k], multi[k]) for k in single)


def test_missing_shard_is_named(sharded: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(sharded, tmp_path / "model"))
    weight_map = json.loads((folder / INDEX_FILE).read_text())["weight_map"]
    shard = sorted(set(weight_map.values()))[1]
    (folder / shard).unlink()
    assert_error(lambda: load_model(folder), str(folder / shard), INDEX_FILE)


@pytest.mark.parametrize("index", ["{}", '{"weight_map": {}}', "nope"])
def test_broken_index(sharded: Path, tmp_path: Path, index: str) -> None:
    folder = Path(shutil.copytree(sharded, tmp_path / "model"))
    (folder / INDEX_FILE).write_text(index)
    assert_error(lambda: load_model(folder), str(folder / INDEX_FILE))


# --- generation_config.json ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("generation_config", "eos"),
    [(None, (0,)), ({}, (0,)), ({"eos_token_id": 7}, (7,)), ({"eos_token_id": [5, 9]}, (5, 9))],
    ids=["absent", "no-eos", "int", "list"],
)
def test_generation_config_eos_wins(
    folder: Path, generation_config: dict | None, eos: tuple[int, ...]
) -> None:
    assert json.loads((folder / "config.json").read_text())["eos_token_id"] == 0
    path = folder / "generation_config.json"
    if generation_config is None:
        path.unlink()
    else:
        path.write_text(json.dumps(generation_config))
    assert load_config(folder).eos_token_ids == eos


def test_generation_config_not_json(folder: Path) -> None:
    (folder / "generation_config.json").write_text("{")
    assert_error(lambda: load_config(folder), str(folder / "generation_config.json"))


# --- dtype ---------------------------------------------------------------------------------------


def test_bf16_loading_gives_bf16_weights(pristine: Path) -> None:
    model = load_model(pristine, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.inv_freq.dtype == torch.float32  # RoPE frequencies stay fp32
    runner = ModelRunner(model, num_slots=1)
    assert runner.cache.keys[0].dtype == torch.bfloat16
    slot = runner.cache.allocate()
    got = runner.step([Chunk(slot, PROMPT, 0, num_logits=len(PROMPT))])[0]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, logits(load_model(pristine), PROMPT), atol=0.05, rtol=0)


def test_bf16_checkpoint_loads_as_fp32_when_asked(folder: Path, pristine: Path) -> None:
    edit_weights(folder, lambda s: s.update({k: v.to(torch.bfloat16) for k, v in s.items()}))
    model = load_model(folder, dtype=torch.float32)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    reference = load_model(pristine, dtype=torch.bfloat16).float()
    assert torch.equal(logits(model, PROMPT), logits(reference, PROMPT))


# --- tokenizer.json ------------------------------------------------------------------------------


def test_tokenizer_round_trip(pristine: Path) -> None:
    tok = Tokenizer.from_folder(pristine)
    assert tok.vocab_size <= TINY["vocab_size"]
    assert "<|endoftext|>" in tok.vocabulary()
    for text in [*CORPUS[:5], "unseen wörds ✓ and\ttabs\n"]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text


def test_tokenizer_missing(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()
    assert_error(lambda: Tokenizer.from_folder(folder), str(folder / "tokenizer.json"), "missing")


@pytest.mark.parametrize("text", ["{garbage", "{}", '{"model": {"type": "Nope"}}'])
def test_tokenizer_garbage(folder: Path, text: str) -> None:
    (folder / "tokenizer.json").write_text(text)
    assert_error(
        lambda: Tokenizer.from_folder(folder),
        str(folder / "tokenizer.json"),
        "not a valid tokenizer",
    )
