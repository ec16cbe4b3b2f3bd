"""The peer users would run instead: Hugging Face ``transformers`` greedy and assisted generation.

Both models are loaded with ``AutoModelForCausalLM.from_pretrained`` in fp32 on the CPU and run
with ``generate(input_ids, do_sample=False, max_new_tokens=N)``; assisted generation adds
``assistant_model=draft`` (Leviathan-style greedy verification with transformers' own draft
length schedule). Both stop at the target's eos ids, like the other systems.
Non-goals: transformers' sampling, static caches, torch.compile.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Sequence
from typing import Any

from specdec.bench.systems import TRANSFORMERS, Run, System

HF_GREEDY = "transformers greedy"
HF_ASSISTED = "transformers assisted"


class TransformersPeer:
    """The target and draft as transformers models; ``systems()`` gives greedy and assisted."""

    def __init__(
        self,
        target_dir: str,
        draft_dir: str,
        eos_token_ids: Sequence[int],
        assistant_tokens: int | None = None,
    ) -> None:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        self.torch = torch
        load = dict(dtype=torch.float32, device_map=None)
        self.target = AutoModelForCausalLM.from_pretrained(target_dir, **load).eval()
        self.draft = AutoModelForCausalLM.from_pretrained(draft_dir, **load).eval()
        if assistant_tokens is not None:
            self.draft.generation_config.num_assistant_tokens = assistant_tokens
        self.eos = list(eos_token_ids) or None
        self.version = transformers.__version__

    def settings(self) -> dict[str, Any]:
        """The assisted-generation settings in effect (the draft's config over the defaults)."""
        cfg = self.draft.generation_config
        # What transformers 5 fills in when unset (4.x set the defaults on the config itself).
        defaults: dict[str, Any] = getattr(cfg, "_get_default_generation_params", dict)()

        def effective(name: str) -> Any:
            value = getattr(cfg, name, None)
            return defaults.get(name) if value is None else value

        threshold = effective("assistant_confidence_threshold")
        adaptive = importlib.util.find_spec("sklearn") is not None
        return {
            "transformers_version": self.version,
            "num_assistant_tokens": effective("num_assistant_tokens"),
            "num_assistant_tokens_schedule": effective("num_assistant_tokens_schedule"),
            "assistant_confidence_threshold": threshold,
            "confidence_threshold_adapts": bool(threshold) and adaptive,  # needs scikit-learn
            "dtype": "float32",
            "device": "cpu",
        }

    def systems(self, max_tokens: int) -> list[System]:
        return [
            System(HF_ASSISTED, TRANSFORMERS, self._runner(max_tokens, True)),
            System(HF_GREEDY, TRANSFORMERS, self._runner(max_tokens, False), 0),
        ]

    def _runner(self, max_tokens: int, assisted: bool) -> Callable[[Sequence[int], str], Run]:
        torch = self.torch
        extra = {"assistant_model": self.draft} if assisted else {}

        def run(ids: Sequence[int], _request_id: str) -> Run:
            input_ids = torch.tensor([list(ids)])  # [1, T]
            start = time.perf_counter()
            with torch.inference_mode():
                out = self.target.generate(
                    input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    do_sample=False,
                    max_new_tokens=max_tokens,
                    eos_token_id=self.eos,
                    pad_token_id=self.eos[0] if self.eos else None,  # silences a warning
                    **extra,
                )  # [1, T + generated]
            elapsed = time.perf_counter() - start
            return Run(out[0, len(ids) :].tolist(), elapsed)

        return run
