"""Convert a llama-architecture GGUF file into a Hugging Face model folder the engine loads.

The folder gets ``config.json`` (``LlamaForCausalLM``), ``generation_config.json``,
``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json`` and ``chat_template.jinja``.

Weights are dequantized with ``gguf.quants.dequantize`` and stored in **float32**: a Q4_1 value is
``d * q + m`` with fp16 ``d`` and ``m`` (Q8_0: ``d * q``), which needs more than bf16's 8 mantissa
bits, so bf16 would round the very values the quantized model computes with. The engine casts
to whatever dtype it serves in when it loads.

llama.cpp's converter (``LlamaModel.permute``) reorders the rows of ``attn_q`` and ``attn_k`` so
that each head's rotary pairs sit next to each other (interleaved, GPT-J style); Hugging Face's
Llama rotates the first half of a head against the second half. ``unpermute`` undoes it.

Uses numpy, ``gguf`` and safetensors' numpy API only: no torch, no transformers.
Non-goals: other architectures, rope scaling, partial rotary embeddings, writing GGUF.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, ReaderTensor
from gguf.quants import dequantize
from safetensors.numpy import save_file
from tqdm import tqdm

from specdec.core.errors import SpecdecError
from specdec.models.gguf_tokenizer import build_tokenizer, special_token

ARCH = "llama"
# GGUF tensor name (per block after "blk.N.") → Hugging Face Llama name (after "model.layers.N.").
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}


class GGUFConvertError(SpecdecError):
    """The GGUF file is not one this converter understands; the message says why."""


def unpermute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary row order for a q or k projection (weight or bias).

    llama.cpp views the rows as ``[heads, 2, head_dim / 2]`` and swaps the last two axes; the
    inverse views them as ``[heads, head_dim / 2, 2]`` and swaps back.
    """
    rows = weight.shape[0]  # weight: [heads * head_dim, ...] (rows in llama.cpp's order)
    if rows % (2 * num_heads):
        raise GGUFConvertError(f"cannot split {rows} rows into {num_heads} rotary heads")
    split = weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
    return split.swapaxes(1, 2).reshape(weight.shape)


def hf_name(gguf_name: str) -> str:
    """The Hugging Face Llama name of a GGUF tensor (``blk.3.attn_q.weight`` → ...q_proj.weight)."""
    stem, _, suffix = gguf_name.rpartition(".")
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{suffix}"
    if len(parts) == 1 and parts[0] in _TOP_NAMES:
        return f"{_TOP_NAMES[parts[0]]}.{suffix}"
    raise GGUFConvertError(f"tensor {gguf_name!r} has no Llama counterpart (unsupported layout)")


def read_metadata(reader: GGUFReader) -> dict[str, Any]:
    """Every metadata field as a Python value (strings, numbers, lists)."""
    return {key: field.contents() for key, field in reader.fields.items()}


def hf_config(meta: dict[str, Any], tensor_names: Iterable[str]) -> dict[str, Any]:
    """``config.json`` for the model the metadata describes."""
    arch = meta.get("general.architecture")
    if arch != ARCH:
        raise GGUFConvertError(f"general.architecture is {arch!r}; only {ARCH!r} is supported")
    names = set(tensor_names)

    def key(name: str, default: Any = None) -> Any:
        value = meta.get(f"{ARCH}.{name}", default)
        if value is None:
            raise GGUFConvertError(f"the GGUF metadata has no {ARCH}.{name}")
        return value

    hidden, heads = int(key("embedding_length")), int(key("attention.head_count"))
    head_dim = int(key("attention.key_length", hidden // heads))
    if int(key("rope.dimension_count", head_dim)) != head_dim:
        raise GGUFConvertError("partial rotary embeddings (rope.dimension_count) are unsupported")
    scaling = meta.get(f"{ARCH}.rope.scaling.type", "none")
    if scaling != "none" or "rope_freqs.weight" in names:
        kind = scaling if scaling != "none" else "rope_freqs.weight (llama3-style)"
        raise GGUFConvertError(f"rope scaling {kind} is not supported by this converter")
    vocab = meta.get("tokenizer.ggml.tokens")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": len(vocab) if vocab else int(key("vocab_size")),
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(key("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "max_position_embeddings": int(key("context_length")),
        "rms_norm_eps": _f32(key("attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32(key("rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "mlp_bias": False,
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "torch_dtype": "float32",
    }


def _f32(value: float) -> float:
    """A float32 metadata value as its shortest decimal (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(value)))


def hf_tensor(tensor: ReaderTensor, config: dict[str, Any]) -> tuple[str, np.ndarray]:
    """One GGUF tensor as (Hugging Face name, fp32 array in Hugging Face layout)."""
    name = hf_name(tensor.name)
    # GGUF lists dims fastest first; the reader's arrays are already [out_features, in_features].
    try:
        values = dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
    except NotImplementedError as exc:
        raise GGUFConvertError(
            f"{tensor.name}: gguf cannot dequantize {tensor.tensor_type.name} ({exc})"
        ) from exc
    expected = tuple(int(d) for d in reversed(tensor.shape))
    if values.shape != expected:
        raise GGUFConvertError(f"{tensor.name}: dequantized to {values.shape}, expected {expected}")
    module = name.rpartition(".")[0]
    if module.endswith("self_attn.q_proj"):
        values = unpermute(values, config["num_attention_heads"])
    elif module.endswith("self_attn.k_proj"):
        values = unpermute(values, config["num_key_value_heads"])
    return name, np.ascontiguousarray(values)


def tokenizer_config(meta: dict[str, Any], max_len: int) -> dict[str, Any]:
    """``tokenizer_config.json``: the special tokens and the chat template."""
    out: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
    }
    for role, field in (
        ("bos", "bos_token"),
        ("eos", "eos_token"),
        ("unknown", "unk_token"),
        ("padding", "pad_token"),
    ):
        token = special_token(meta, role)
        if token is not None:
            out[field] = token
    template = meta.get("tokenizer.chat_template")
    if template:
        out["chat_template"] = template
    return out


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, progress: bool = True) -> Path:
    """Write the Hugging Face folder for ``gguf_path`` into ``out_dir`` (created if needed)."""
    out = Path(out_dir)
    try:
        reader = GGUFReader(str(gguf_path))
    except (OSError, ValueError) as exc:
        raise GGUFConvertError(f"{gguf_path}: not a readable GGUF file ({exc})") from exc
    meta = read_metadata(reader)
    config = hf_config(meta, (t.name for t in reader.tensors))
    out.mkdir(parents=True, exist_ok=True)
    state: dict[str, np.ndarray] = {}
    for tensor in tqdm(reader.tensors, desc="dequantize", unit="tensor", disable=not progress):
        name, values = hf_tensor(tensor, config)
        state[name] = values
    _check_shapes(state, config)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer = build_tokenizer(meta)
    tokenizer.save(str(out / "tokenizer.json"))
    tok_config = tokenizer_config(meta, config["max_position_embeddings"])
    _write_json(out / "tokenizer_config.json", tok_config)
    if "chat_template" in tok_config:
        (out / "chat_template.jinja").write_text(tok_config["chat_template"])
    _write_json(out / "config.json", config)
    generation = {
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
    }
    _write_json(
        out / "generation_config.json", {k: v for k, v in generation.items() if v is not None}
    )
    return out


def _check_shapes(state: dict[str, np.ndarray], config: dict[str, Any]) -> None:
    """The embedding and projections must agree with config.json, or the engine will refuse."""
    embed = state.get("model.embed_tokens.weight")
    expected = (config["vocab_size"], config["hidden_size"])
    if embed is None or embed.shape != expected:
        got = None if embed is None else embed.shape
        raise GGUFConvertError(
            f"token_embd.weight has shape {got}, the metadata implies {expected}"
        )


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
