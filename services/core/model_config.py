"""The shape of a Llama-family decoder, read from a Hugging Face ``config.json``.

One frozen dataclass covers Llama 2/3/3.x, Mistral, Qwen2/2.5 and Qwen3: they differ only in a
few switches (bias on q/k/v, RMSNorm on q and k, tied embeddings, RoPE scaling, sliding window).
Imports no torch: the router reads the eos ids from here too.
Non-goals: vision towers, mixtures of experts, anything not a dense decoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specdec.core.errors import CheckpointError

# model_type in config.json → does the family put a bias on q/k/v, a norm on q/k?
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
HEAD_VOCAB_KEY = "specdec_head_vocab_size"  # config.json: a reduced LM head (drafts)
FEATURE_DRAFT_KEY = "specdec_feature_draft"  # config.json: a draft that reads target features


@dataclass(frozen=True)
class ModelConfig:
    """Everything the engine needs to build and run one decoder."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # None, or the HF rope_scaling dict with "rope_type" normalised in.
    rope_scaling: dict[str, Any] | None = None
    attention_bias: bool = False  # bias on q/k/v (Qwen2 always; Llama by flag)
    attention_out_bias: bool = False  # bias on o_proj (Llama's attention_bias also sets it)
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm over head_dim on q and k before RoPE (Qwen3)
    tie_word_embeddings: bool = False
    # A draft's LM head over only this many tokens (FR-Spec, arXiv 2502.14856): config.json's
    # ``specdec_head_vocab_size``; the ids are the ``lm_head.token_ids`` tensor. None: all.
    head_vocab_size: int | None = None
    # A draft that reads the target's hidden states (``engine/feature_draft.py``):
    # config.json's ``specdec_feature_draft``.
    feature_draft: bool = False
    sliding_window: int | None = None  # keys older than this many positions are masked
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    bos_token_id: int | None = None

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any], source: str = "config.json") -> ModelConfig:
        """Parse a ``config.json`` dict; raise ``CheckpointError`` naming ``source`` if unusable."""
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise CheckpointError(
                f"{source}: model_type {model_type!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        try:
            hidden = int(raw["hidden_size"])
            heads = int(raw["num_attention_heads"])
            cfg_kwargs: dict[str, Any] = dict(
                model_type=model_type,
                vocab_size=int(raw["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(raw["intermediate_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
                head_dim=int(raw.get("head_dim") or hidden // heads),
                max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: missing or malformed field {exc}") from exc
        hidden_act = raw.get("hidden_act", "silu")
        if hidden_act != "silu":
            raise CheckpointError(f"{source}: hidden_act {hidden_act!r} is not supported (silu)")
        cfg_kwargs["rope_theta"], cfg_kwargs["rope_scaling"] = _rope(raw, source)
        cfg_kwargs.update(_family_switches(raw, model_type, source))
        head = raw.get(HEAD_VOCAB_KEY)
        cfg_kwargs["head_vocab_size"] = int(head) if head is not None else None
        cfg_kwargs["feature_draft"] = bool(raw.get(FEATURE_DRAFT_KEY, False))
        eos = raw.get("eos_token_id")
        cfg_kwargs["eos_token_ids"] = _as_id_tuple(eos)
        bos = raw.get("bos_token_id")
        cfg_kwargs["bos_token_id"] = bos if isinstance(bos, int) else None
        cfg = cls(**cfg_kwargs)
        cfg._check(source)
        return cfg

    def with_eos(self, eos_token_ids: tuple[int, ...]) -> ModelConfig:
        """A copy with the end-of-sequence ids replaced (generation_config.json wins)."""
        from dataclasses import replace

        return replace(self, eos_token_ids=eos_token_ids)

    def _check(self, source: str) -> None:
        positive = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise CheckpointError(f"{source}: {name} must be positive")
        if self.num_attention_heads % self.num_key_value_heads:
            raise CheckpointError(
                f"{source}: num_attention_heads ({self.num_attention_heads}) is not a multiple "
                f"of num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise CheckpointError(f"{source}: head_dim must be even for RoPE")
        if self.head_vocab_size is not None:
            if not 0 < self.head_vocab_size <= self.vocab_size:
                raise CheckpointError(
                    f"{source}: {HEAD_VOCAB_KEY} must be in [1, vocab_size={self.vocab_size}]"
                )
            if self.tie_word_embeddings:
                raise CheckpointError(
                    f"{source}: {HEAD_VOCAB_KEY} needs an untied LM head "
                    "(tie_word_embeddings: false)"
                )


def _as_id_tuple(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _rope(raw: dict[str, Any], source: str) -> tuple[float, dict[str, Any] | None]:
    """rope_theta and rope_scaling, accepting both the 4.x and the 5.x config layouts."""
    params = raw.get("rope_parameters")  # transformers 5 folds theta and scaling in here
    scaling = raw.get("rope_scaling")
    theta = raw.get("rope_theta")
    if isinstance(params, dict):
        theta = params.get("rope_theta", theta)
        scaling = scaling or params
    theta = float(theta if theta is not None else 10000.0)
    if not scaling:
        return theta, None
    rope_type = scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise CheckpointError(
            f"{source}: rope_scaling type {rope_type!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    if rope_type == "default":
        return theta, None
    return theta, {**scaling, "rope_type": rope_type}


def _family_switches(raw: dict[str, Any], model_type: str, source: str) -> dict[str, Any]:
    """The few flags in which the supported families differ."""
    out: dict[str, Any] = {"tie_word_embeddings": bool(raw.get("tie_word_embeddings", False))}
    if model_type in ("llama", "qwen3"):
        bias = bool(raw.get("attention_bias", False))
        out.update(attention_bias=bias, attention_out_bias=bias)
        out["mlp_bias"] = bool(raw.get("mlp_bias", False))
    if model_type == "qwen2":
        out["attention_bias"] = True
    if model_type == "qwen3":
        out["qk_norm"] = True
    if model_type == "mistral":
        window = raw.get("sliding_window")
        out["sliding_window"] = int(window) if window else None
    if model_type in ("qwen2", "qwen3") and raw.get("use_sliding_window"):
        raise CheckpointError(
            f"{source}: use_sliding_window=true is not supported for {model_type}"
        )
    return out


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or a ``CheckpointError`` saying what is wrong with it."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def load_config(folder: str | Path) -> ModelConfig:
    """The model's config, with eos ids from ``generation_config.json`` when it has them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a directory (expected a model folder)")
    path = folder / "config.json"
    cfg = ModelConfig.from_hf_dict(read_json(path), source=str(path))
    gen_path = folder / "generation_config.json"
    if gen_path.is_file():
        eos = read_json(gen_path).get("eos_token_id")
        if eos is not None:
            cfg = cfg.with_eos((eos,) if isinstance(eos, int) else tuple(int(e) for e in eos))
    return cfg
