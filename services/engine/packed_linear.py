"""Linear layers on the CPU through oneDNN with weights packed once, at load time.

``F.linear`` on a CPU packs its weight into the GEMM kernel's blocked layout on every call. For
one row (a decode step) it takes a matrix-vector path that reads the weight once; for a few rows
(verifying k + 1 tokens, a batch of sequences) it runs a GEMM that packs first, several passes
over weights that do not fit in cache. Packed once, a few rows cost little more than one: on the
demo target (fp32, one thread, an AMD EPYC) 5 rows took 6.4 ms instead of 15.4, 9 rows 7.1 ms
instead of 28.8, and 1 row 4.0 instead of 5.8.

``pack`` returns the packed weight (an opaque oneDNN tensor), or None where oneDNN cannot
(another device, a build without it); ``linear`` then falls back to ``F.linear``. Results
differ from ``F.linear``'s in the last bits, as any two kernels' do; every forward of a packed
model goes through the same kernels.
Non-goals: quantization, GPUs (cuBLAS needs none of this).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

BATCH_HINT = 8  # rows the packed layout is tuned for (any number works)


def pack(weight: torch.Tensor) -> torch.Tensor | None:
    """``weight`` [out, in] packed for oneDNN's linear on this CPU, or None."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), BATCH_HINT)
    except (RuntimeError, AttributeError) as exc:  # an unsupported dtype or build
        log.info("linear weights stay unpacked (%s)", exc)
        return None


def linear(
    x: torch.Tensor, packed: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x @ weight.T + bias, through ``packed`` when there is one.  # x [..., in] → [..., out]"""
    if packed is None:
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
