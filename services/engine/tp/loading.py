"""Load one rank's slices of a Hugging Face checkpoint: each rank reads only what it holds.

Every tensor is read with ``safe_open(...).get_slice``: the rows (column-parallel weights,
vocabulary shards) or columns (row-parallel o and down) of this rank, from a single
``model.safetensors`` or the shards ``model.safetensors.index.json`` names. Each read opens its
file afresh, so no more than one tensor's pages of the memory-mapped file are resident at a
time. Biases of row-parallel layers stay on rank 0 only (zeros elsewhere: the all-reduce adds
them once). The slices fill a single-device ``DecoderModel`` of the rank's ``local_config``,
which is then fused and packed as ``checkpoint.load_model`` does.
Non-goals: quantized checkpoints, loading on one rank and scattering.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open

from specdec.core.errors import CheckpointError
from specdec.core.model_config import ModelConfig, load_config, read_json
from specdec.engine.checkpoint import INDEX_FILE, SINGLE_FILE
from specdec.engine.model import DecoderModel
from specdec.engine.rope import inv_frequencies
from specdec.engine.tp.model import TPDecoder
from specdec.engine.tp.sharding import RankShard, Span, local_config, plan

_ROW_PARALLEL = ("self_attn.o_proj", "mlp.down_proj")
_Q = "self_attn.q_proj"
_KV = ("self_attn.k_proj", "self_attn.v_proj")
_MLP_IN = ("mlp.gate_proj", "mlp.up_proj")
_VOCAB = ("model.embed_tokens.weight", "lm_head.weight")


def tensor_files(folder: Path) -> dict[str, Path]:
    """Which file holds each tensor: the index's weight map, or the single file's keys."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: has no weight_map")
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / SINGLE_FILE
    if not single.is_file():
        raise CheckpointError(f"{folder}: no {SINGLE_FILE} and no {INDEX_FILE}")
    with _open(single) as f:
        names = f.keys()
    return dict.fromkeys(names, single)


def _open(path: Path):  # type: ignore[no-untyped-def]
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (named by {INDEX_FILE})")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


def _rows_and_cols(
    name: str, cfg: ModelConfig, shard: RankShard
) -> tuple[Span | None, Span | None]:
    """The rows and columns of tensor ``name`` this rank reads (None: all of them)."""
    d = cfg.head_dim
    if name in _VOCAB:
        return shard.vocab, None
    if _Q in name:
        return Span(shard.q_heads.start * d, shard.q_heads.stop * d), None
    if any(p in name for p in _KV):
        return Span(shard.kv_heads.start * d, shard.kv_heads.stop * d), None
    if any(p in name for p in _MLP_IN):
        return shard.intermediate, None
    if name.endswith("self_attn.o_proj.weight"):
        return None, Span(shard.q_heads.start * d, shard.q_heads.stop * d)
    if name.endswith("mlp.down_proj.weight"):
        return None, shard.intermediate
    return None, None  # norms, q/k norms, row-parallel biases: whole


def read_slice(path: Path, name: str, rows: Span | None, cols: Span | None) -> torch.Tensor:
    """Rows and columns of one tensor, read from the file alone (no other bytes copied)."""
    with _open(path) as f:
        piece = f.get_slice(name)
        if cols is not None:
            view = piece[:, cols.start : cols.stop]
        elif rows is not None:
            view = piece[rows.start : rows.stop]
        else:
            view = piece[:]
        # The slice may be a view of the memory-mapped tensor: copy out exactly its elements,
        # so the mapping (and every page of the tensor not ours) goes when the file closes.
        return view.clone(memory_format=torch.contiguous_format)


def load_shard_state(
    folder: Path, cfg: ModelConfig, shard: RankShard, dtype: torch.dtype, device: torch.device | str
) -> dict[str, torch.Tensor]:
    """This rank's tensors under their Hugging Face names, shaped for ``local_config``."""
    files = tensor_files(folder)
    with torch.device("meta"):
        expected = DecoderModel(cfg).state_dict()  # the whole model's shapes
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight")
    missing = sorted(set(expected) - set(files))
    if missing:
        raise CheckpointError(f"{folder}: weights do not match config.json; missing {missing[:5]}")
    state: dict[str, torch.Tensor] = {}
    for name, full in expected.items():
        rows, cols = _rows_and_cols(name, cfg, shard)
        tensor = read_slice(files[name], name, rows, cols)
        want = list(full.shape)
        if rows is not None:
            want[0] = rows.size
        if cols is not None:
            want[1] = cols.size
        if list(tensor.shape) != want:
            raise CheckpointError(
                f"{files[name]}: tensor {name} sliced to {tuple(tensor.shape)}; config.json "
                f"implies {tuple(want)} for rank {shard.rank} of {shard.world}"
            )
        if name.endswith(tuple(f"{p}.bias" for p in _ROW_PARALLEL)) and shard.rank != 0:
            tensor = torch.zeros_like(tensor)  # added once, by rank 0
        if name in _VOCAB and tensor.shape[0] < shard.vocab_padded:
            pad = tensor.new_zeros(shard.vocab_padded - tensor.shape[0], *tensor.shape[1:])
            tensor = torch.cat([tensor, pad])  # [V/w (padded), C]
        state[name] = tensor.to(dtype if tensor.is_floating_point() else tensor.dtype).to(device)
    return state


def load_tp_model(
    folder: str | Path,
    world: int,
    rank: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    group: dist.ProcessGroup | None = None,
) -> TPDecoder:
    """Rank ``rank``'s share of the model in ``folder``, ready to run with the other ranks."""
    folder = Path(folder)
    cfg = load_config(folder)
    shard = plan(cfg, world, rank)
    lcfg = local_config(cfg, shard)
    state = load_shard_state(folder, cfg, shard, dtype, device)
    with torch.device("meta"):
        local = DecoderModel(lcfg)
    local.load_state_dict(state, strict=not cfg.tie_word_embeddings, assign=True)
    if cfg.tie_word_embeddings:
        local.lm_head.weight = local.model.embed_tokens.weight
    inv_freq = inv_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    local.inv_freq = inv_freq.to(device)  # non-persistent buffer: rebuilt off the meta device
    local = local.eval().requires_grad_(False).fuse_projections().pack_linears()
    return TPDecoder(cfg, local, shard, group)
