"""Linear layers on the CPU through oneDNN with weights packed once, at load time.

``F.linear`` on a CPU packs its weight into the GEMM kernel's blocked layout on every call. For
one row (a decode step) it takes a matrix-vector path that reads the weight once; for a few rows
(verifying k + 1 tokens, a batch of sequences) it runs a GEMM that packs first, several passes
over weights that do not fit in cache. Packed once, a few rows cost little more than one: on the
demo target (fp32, one thread, an AMD EPYC) 5 rows took 6.4 ms instead of 15.4, 9 rows 7.1 ms
instead of 28.8, and 1 row 4.0 instead of 5.8.

A packed call has a fixed cost of ~15 µs, so small weights are better off with ``F.linear``:
one row through a 192 × 192 weight took 4.7 µs plain and 17 µs packed, five rows 10 and 13 µs;
through 576 × 192, five rows took 26 µs plain and 17 µs packed. Hence weights under
``MIN_PACK`` elements are not packed. For one row (a decode step) the better path depends on
the chip: on an AMD EPYC (AVX-512) the packed path read the demo target's weights at twice
``F.linear``'s speed (2560 × 512 fp32: 119 against 338 µs) and lost only on 512 × 512 (27
against 17 µs), while elsewhere ``F.linear`` won below ~1M elements. So ``calibrate`` times both
for each weight shape of a loaded model, across its layers as a decode step reads them, and
remembers the faster; an uncalibrated shape takes the packed path from ``MIN_PACK_ONE_ROW``.

``pack`` returns the packed weight (an opaque oneDNN tensor), or None where oneDNN cannot
(another device, a build without it) or the weight is small; ``linear`` then uses
``F.linear``. Results differ from ``F.linear``'s in the last bits, as any two kernels' do.
Under ``torch.compile`` dynamo cannot trace oneDNN's opaque packed tensors, so a packed linear
is the custom op ``specdec::packed_linear`` on the plain weight: opaque to the compiler, it finds
the weight's packed copy in ``_PACKED`` when it runs (``compiled.py``; inductor fuses the small
ops around it).
Non-goals: quantization, GPUs (cuBLAS needs none of this).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

BATCH_HINT = 8  # rows the packed layout is tuned for (any number works)
MIN_PACK = 64 * 1024  # weight elements: smaller ones stay plain
MIN_PACK_ONE_ROW = 1 << 20  # ... and one row takes the packed path only from here

# Packed copies by their plain weight (storage address, shape); gone with the module's copy.
_PACKED: weakref.WeakValueDictionary[tuple[int, tuple[int, ...]], torch.Tensor] = (
    weakref.WeakValueDictionary()
)


# Shapes whose one-row product ``calibrate`` found faster packed (True) or plain (False).
_ONE_ROW_PACKED: dict[tuple[tuple[int, ...], torch.dtype], bool] = {}


def _key(weight: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    return weight.data_ptr(), tuple(weight.shape)


def pack(weight: torch.Tensor) -> torch.Tensor | None:
    """``weight`` [out, in] packed for oneDNN's linear on this CPU, or None."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    if weight.numel() < MIN_PACK:
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), BATCH_HINT)
    except (RuntimeError, AttributeError) as exc:  # an unsupported dtype or build
        log.info("linear weights stay unpacked (%s)", exc)
        return None
    _PACKED[_key(weight)] = packed
    return packed


def linear(
    x: torch.Tensor, packed: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x @ weight.T + bias, through ``packed`` when it pays.  # x [..., in] → [..., out]"""
    if packed is None:
        return F.linear(x, weight, bias)
    if torch.compiler.is_compiling():
        return packed_linear(x, weight, bias)
    return _linear(x, packed, weight, bias)


def _linear(
    x: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    if x.numel() == x.shape[-1] and not _one_row_packed(weight):
        return F.linear(x, weight, bias)
    return _packed(x, packed, bias)


def _packed(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _one_row_packed(weight: torch.Tensor) -> bool:
    choice = _ONE_ROW_PACKED.get((tuple(weight.shape), weight.dtype))
    return weight.numel() >= MIN_PACK_ONE_ROW if choice is None else choice


def calibrate(pairs: Iterable[tuple[torch.Tensor, torch.Tensor | None]], rounds: int = 7) -> None:
    """Time one row through each shape's weights plain and packed; remember the faster.

    ``pairs`` are (weight, packed copy); those without a copy are skipped. A round runs one
    row through every weight of a shape, as a decode step does (each read from memory, not from
    the cache a repeated call would leave it in); rounds alternate the two paths and the fastest
    round of each decides (another process taking the CPU only ever adds time, so the minimum
    is the estimate it disturbs least). Costs a few milliseconds per shape.
    """
    groups: dict[tuple[tuple[int, ...], torch.dtype], list[tuple[torch.Tensor, torch.Tensor]]]
    groups = defaultdict(list)
    for weight, packed in pairs:
        if packed is not None:
            groups[(tuple(weight.shape), weight.dtype)].append((weight, packed))
    with torch.inference_mode():
        for key, members in groups.items():
            _ONE_ROW_PACKED[key] = _packed_is_faster(members, rounds)
            log.debug("one row through %s: packed=%s", key, _ONE_ROW_PACKED[key])


def _packed_is_faster(members: list[tuple[torch.Tensor, torch.Tensor]], rounds: int) -> bool:
    """Fastest of ``rounds`` (after one warm-up) of one row through every member, each way."""
    weight = members[0][0]
    x = torch.randn(1, weight.shape[1]).to(weight.dtype)  # [1, in]

    def plain() -> None:
        for w, _ in members:
            F.linear(x, w)

    def packed() -> None:
        for _, p in members:
            _packed(x, p, None)

    times: dict[Callable[[], None], list[float]] = {plain: [], packed: []}
    for _ in range(rounds + 1):
        for run, spent in times.items():
            spent.append(_time(run))
    return min(times[packed][1:]) < min(times[plain][1:])


def _time(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


@torch.library.custom_op("specdec::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``linear`` for compiled code: the packed copy looked up by ``weight``."""
    packed = _PACKED.get(_key(weight))
    if packed is None:  # e.g. a weight the compiler copied
        return F.linear(x, weight, bias)
    return _linear(x, packed, weight, bias)


@packed_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])
