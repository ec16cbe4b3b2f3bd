"""Load a Hugging Face-format model folder from local disk into a ``DecoderModel``.

A folder holds ``config.json``, ``model.safetensors`` or a sharded set named by
``model.safetensors.index.json``, ``tokenizer.json`` and optionally ``generation_config.json``
(its eos ids win over config.json's). Every problem is a ``CheckpointError`` that names the file.
Non-goals: downloading from a hub, .bin (pickle) weights, quantized formats.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from specdec.core.errors import CheckpointError
from specdec.core.model_config import (
    FEATURE_DRAFT_KEY,
    HEAD_VOCAB_KEY,
    ModelConfig,
    load_config,
    read_json,
)
from specdec.engine.feature_draft import FeatureDraft
from specdec.engine.model import DecoderModel
from specdec.engine.rope import inv_frequencies

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Tensors some checkpoints carry that the engine recomputes instead of loading.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of the folder: one file, or the shards its index names."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: has no weight_map")
        return [folder / name for name in sorted(set(weight_map.values()))]
    single = folder / SINGLE_FILE
    if single.is_file():
        return [single]
    raise CheckpointError(f"{folder}: no {SINGLE_FILE} and no {INDEX_FILE}")


def load_state_dict(
    folder: Path, dtype: torch.dtype, device: torch.device | str
) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint, cast to ``dtype`` (floating ones) and moved to ``device``."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (named by {INDEX_FILE})")
        try:
            tensors = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
        for name, tensor in tensors.items():
            if name.endswith(_IGNORED_SUFFIXES):
                continue
            if tensor.is_floating_point():
                tensor = tensor.to(dtype)
            state[name] = tensor.to(device)
    return state


def load_model(
    folder: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> DecoderModel:
    """Build the model from ``folder`` in ``dtype`` on ``device``, ready for inference."""
    folder = Path(folder)
    cfg = load_config(folder)
    state = load_state_dict(folder, dtype, device)
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    with torch.device("meta"):
        model = FeatureDraft(cfg) if cfg.feature_draft else DecoderModel(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{folder}: weights do not match config.json"
            + (f"; missing {_few(missing)}" if missing else "")
            + (f"; unexpected {_few(unexpected)}" if unexpected else "")
        )
    for name, shape in expected.items():
        if state[name].shape != shape:
            raise CheckpointError(
                f"{folder}: tensor {name} has shape {tuple(state[name].shape)}, "
                f"config.json implies {tuple(shape)}"
            )
    model.load_state_dict(state, strict=not cfg.tie_word_embeddings, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    _check_head_ids(folder, model)
    inv_freq = inv_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    model.inv_freq = inv_freq.to(device)  # non-persistent buffer: rebuilt off the meta device
    return model.eval().requires_grad_(False).fuse_projections().pack_linears()


def _check_head_ids(folder: Path, model: DecoderModel) -> None:
    """A reduced LM head's token ids: int64, distinct, inside the vocabulary."""
    ids = model.head_token_ids
    if ids is None:
        return
    vocab = model.config.vocab_size
    if ids.dtype != torch.int64 or ids.dim() != 1:
        raise CheckpointError(f"{folder}: lm_head.token_ids must be a 1-D int64 tensor")
    if len(ids) and not (int(ids.min()) >= 0 and int(ids.max()) < vocab):
        raise CheckpointError(f"{folder}: lm_head.token_ids holds ids outside [0, {vocab})")
    if len(torch.unique(ids)) != len(ids):
        raise CheckpointError(f"{folder}: lm_head.token_ids repeats a token id")


def _few(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def hf_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """``config.json`` contents for a Llama-architecture ``cfg`` (what ``save_model`` writes)."""
    if cfg.model_type != "llama":
        raise ValueError("save_model writes Llama checkpoints only")
    out: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": cfg.rope_scaling,
        "attention_bias": cfg.attention_bias,
        "mlp_bias": cfg.mlp_bias,
        "hidden_act": "silu",
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_ids[0]
        if len(cfg.eos_token_ids) == 1
        else list(cfg.eos_token_ids),
        "torch_dtype": "bfloat16",
    }
    if cfg.head_vocab_size is not None:
        out[HEAD_VOCAB_KEY] = cfg.head_vocab_size
    if cfg.feature_draft:
        out[FEATURE_DRAFT_KEY] = True
    return out


def save_model(
    model: DecoderModel, folder: str | Path, dtype: torch.dtype = torch.bfloat16
) -> Path:
    """Write ``model`` as a Hugging Face folder: config.json, generation_config.json and
    model.safetensors in ``dtype`` (tied embeddings stored once)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    config = hf_config_dict(cfg)
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"eos_token_id": config["eos_token_id"], "bos_token_id": cfg.bos_token_id}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    state = {  # clone: fused weights share storage; integer tensors (head token ids) stay
        name: tensor.detach().to("cpu", dtype if tensor.is_floating_point() else None).clone()
        for name, tensor in model.state_dict().items()
        if not (cfg.tie_word_embeddings and name == "lm_head.weight")
    }
    save_file(state, str(folder / SINGLE_FILE), metadata={"format": "pt"})
    return folder
