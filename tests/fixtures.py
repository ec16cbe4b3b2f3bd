"""Small real models for tests: random-weight checkpoints written by ``transformers``.

Each helper writes a genuine Hugging Face folder (config.json, model.safetensors,
generation_config.json, tokenizer.json) that the engine loads like any downloaded checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from specdec.core.model_config import ModelConfig
from specdec.engine.model import DecoderModel
from specdec.local_pipeline import Pipeline
from specdec.router import app as router_app

TINY = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)

# A model config too small to train, for tests that build ``DecoderModel`` in memory.
MICRO = dict(
    model_type="llama",
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=256,
)


def micro_config(**overrides: Any) -> ModelConfig:
    """``MICRO`` with ``overrides`` (vocab_size, eos_token_ids, ...)."""
    return ModelConfig(**{**MICRO, **overrides})


CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i * i)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "The quick brown fox jumps over the lazy dog.\n",
    "import os\nimport sys\n\nif __name__ == '__main__':\n    sys.exit(main())\n",
] * 4


def save_tokenizer(folder: Path, vocab_size: int = TINY["vocab_size"]) -> Tokenizer:
    """A byte-level BPE tokenizer trained on a few lines of code, with ids < ``vocab_size``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return tok


def save_random_model(
    folder: Path, model_type: str = "llama", seed: int = 0, tokenizer: bool = True, **overrides: Any
) -> Path:
    """Write a random-weight ``model_type`` checkpoint (llama, mistral, qwen2, qwen3)."""
    import transformers

    classes = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }
    config_cls, model_cls = classes[model_type]
    kwargs: dict[str, Any] = {**TINY, "eos_token_id": 0, "bos_token_id": None, "pad_token_id": None}
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs)).eval()
    # Random init leaves norms at 1 and biases at 0; perturb them so the test sees them.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                param.add_(0.1 * torch.randn_like(param))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if tokenizer:
        save_tokenizer(folder, kwargs["vocab_size"])
    return folder


def perturbed_copy(src: Path, dst: Path, scale: float, seed: int = 1) -> Path:
    """A copy of a checkpoint with noise added to every weight: a draft that mostly agrees."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    gen = torch.Generator().manual_seed(seed)
    state = load_file(str(dst / "model.safetensors"))
    noisy = {k: v + scale * v.std() * torch.randn(v.shape, generator=gen) for k, v in state.items()}
    save_file(noisy, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


HTTP_MODEL = "tiny-target"  # the model id the test routers' HTTP face serves
DEMO_TEMPLATE = Path(__file__).resolve().parents[1] / "models/demo-target/chat_template.jinja"


class HttpPipeline(Pipeline):
    """A test ``Pipeline`` whose routers also serve the OpenAI-compatible HTTP API (a free port,
    ``HTTP_MODEL``, the demo chat template)."""

    def add_router(self, **overrides: Any) -> router_app.RouterRunning:
        return super().add_router(  # type: ignore[return-value]
            http_listen="127.0.0.1:0",
            served_model_name=HTTP_MODEL,
            chat_template=str(DEMO_TEMPLATE),
            **overrides,
        )


class UpConsole:
    """A ``specdec up`` child process, its console read line by line in a thread."""

    def __init__(self, process: Any, address: str) -> None:
        self.process = process  # subprocess.Popen[str]
        self.address = address
        self.lines: list[str] = []

    def read_console(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_line(self, text: str, timeout_s: float, after: int = 0) -> str:
        """The first console line from index ``after`` on that contains ``text``."""
        import time

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                if text in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} on up's console:\n{''.join(self.lines[-40:])}")


def run_up(model_dir: Path, console: type[UpConsole] = UpConsole, *extra: str):  # -> Iterator
    """``specdec up`` on the test pair (target, draft_close) with ``extra`` flags, as a
    generator for a fixture: yields ``console`` once ready, stops it (SIGINT, then kill)."""
    import signal
    import subprocess
    import sys
    import threading

    from specdec.router.redis_server import free_loopback_port

    address = f"127.0.0.1:{free_loopback_port()}"
    cmd = [sys.executable, "-m", "specdec.cli", "up", "--listen", address, "--device", "cpu"]
    cmd += ["--target", str(model_dir / "target"), "--draft", str(model_dir / "draft_close")]
    if "--no-http" not in extra:  # a free port: a busy 8000 (the default) must not fail a test
        cmd += ["--http-listen", f"127.0.0.1:{free_loopback_port()}"]
    process = subprocess.Popen(
        [*cmd, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # As from a terminal: a shell's background job (CI runners) inherits SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    running = console(process, address)
    threading.Thread(target=running.read_console, daemon=True).start()
    try:
        running.wait_line("specdec ready", 120)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def fit_feature_draft(target: DecoderModel, prompts: list[list[int]], steps: int = 80) -> Any:
    """A feature draft (``engine/feature_draft.py``) fitted for a moment to ``target``'s greedy
    continuations of ``prompts``: it agrees often enough that accepted runs, rejections and
    rollbacks all happen. Trained with the project's own loss (tools/distill_feature_draft.py)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    from distill_feature_draft import feature_loss, new_feature_draft

    from specdec.engine.runner import ModelRunner
    from specdec.engine.sampling import SamplingParams
    from specdec.engine.speculative import generate

    runner = ModelRunner(target, num_slots=1)
    texts = [generate(runner, p, SamplingParams(), 40, None, 0, stop_token_ids=[]) for p in prompts]
    rows = [p + t.token_ids for p, t in zip(prompts, texts, strict=True)]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])  # [B, T + 1]
    mask = torch.tensor([[j < len(r) - 1 for j in range(width - 1)] for r in rows])
    with torch.no_grad():
        feats = target.hidden_dense(ids[:, :-1])  # [B, T, C]
        top = torch.log_softmax(target.forward_dense(ids[:, :-1]).float(), -1).topk(8, -1)
    pool = dict(ids=ids, mask=mask, features=feats, top_ids=top.indices, top_logp=top.values)
    head = torch.arange(target.config.vocab_size)
    torch.manual_seed(0)
    draft = new_feature_draft(target, target.config.num_hidden_layers - 1, head)
    opt = torch.optim.AdamW([p for p in draft.parameters() if p.requires_grad], lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = feature_loss(draft, pool, head, 0.05, 2, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return draft.eval().requires_grad_(False)
