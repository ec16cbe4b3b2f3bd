"""Tensor parallelism for the target: one model over N ranks with ``torch.distributed``."""
