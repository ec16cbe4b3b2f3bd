"""Train the demo model pair: a ~21M-parameter Llama target and a ~1.6M-parameter Llama draft
distilled from it, both on Python source code, sharing one byte-level BPE tokenizer.

Reproducible: the corpus is the running Python's standard library (every ``*.py`` under
``sysconfig.get_paths()["stdlib"]``, site-packages excluded), files in sorted order, split into
train / held-out by a hash of each file's relative path; every random draw comes from ``--seed``.
The draft learns from the target's logits on training text and, for half of each batch, on
text the target wrote itself (greedy and sampled), the text it must predict when serving.
Resumable: each phase checkpoints to ``--work-dir`` and picks up where it stopped. Uses CUDA when
present, the CPU otherwise.

    python tools/train_demo.py --out models             # everything, with progress bars
    python tools/train_demo.py --phase draft --out models   # only re-distil the draft

Non-goals: a general training framework; multi-GPU; data beyond the standard library.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from specdec.engine.batch import Chunk
from specdec.engine.checkpoint import save_model
from specdec.engine.config import ModelConfig
from specdec.engine.model import DecoderModel
from specdec.engine.runner import ModelRunner

EOS = "<|endoftext|>"
HELDOUT_PERCENT = 3
VOCAB_SIZE = 4096
SEQ_LEN = 256

TARGET_SHAPE = dict(
    hidden_size=512,
    intermediate_size=1280,
    num_hidden_layers=7,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=64,
)
# Two layers: on a CPU each decode step pays a fixed overhead per layer on top of reading the
# weights, and a draft step must cost at most ~0.15 of a target step.
DRAFT_SHAPE = dict(
    hidden_size=192,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=3,
    num_key_value_heads=1,
    head_dim=64,
)


@dataclass(frozen=True)
class Phase:
    """One model's training run: how many optimizer steps of ``batch`` windows, at what rate."""

    name: str
    steps: int
    batch: int
    lr: float


def corpus_files(root: Path) -> list[Path]:
    """Every stdlib ``*.py`` file, sorted by relative path (site-packages left out)."""
    files = [p for p in root.rglob("*.py") if "site-packages" not in p.parts]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def is_heldout(rel_path: str) -> bool:
    """Stable across machines: depends on the relative path only."""
    return int(hashlib.sha1(rel_path.encode()).hexdigest(), 16) % 100 < HELDOUT_PERCENT


def read_texts(root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """(train texts, [(relative path, text)] held out); unreadable files are skipped."""
    train: list[str] = []
    heldout: list[tuple[str, str]] = []
    for path in corpus_files(root):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        rel = path.relative_to(root).as_posix()
        (heldout.append((rel, text)) if is_heldout(rel) else train.append(text))
    return train, heldout


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def encode(tok: Tokenizer, texts: list[str]) -> torch.Tensor:
    """All texts back to back, each followed by EOS.  # → [N] int16 (vocab < 32768)"""
    eos = tok.token_to_id(EOS)
    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.int16)


def model_config(shape: dict[str, int], eos_id: int) -> ModelConfig:
    return ModelConfig(
        model_type="llama",
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=1024,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        eos_token_ids=(eos_id,),
        **shape,
    )  # type: ignore[arg-type]


def new_model(cfg: ModelConfig, seed: int, device: str) -> DecoderModel:
    torch.manual_seed(seed)
    model = DecoderModel(cfg)
    for name, param in model.named_parameters():  # GPT-2 style init
        if param.dim() == 2:
            std = (
                0.02 / math.sqrt(2 * cfg.num_hidden_layers)
                if "o_proj" in name or "down_proj" in name
                else 0.02
            )
            torch.nn.init.normal_(param, std=std)
    return model.to(device)


def windows(data: torch.Tensor, batch: int, gen: torch.Generator, device: str) -> torch.Tensor:
    """Random windows of SEQ_LEN + 1 tokens.  # → [batch, SEQ_LEN + 1] int64"""
    starts = torch.randint(0, len(data) - SEQ_LEN - 1, (batch,), generator=gen)
    rows = torch.stack([data[s : s + SEQ_LEN + 1] for s in starts.tolist()])
    return rows.long().to(device)


def lr_at(step: int, phase: Phase) -> float:
    warmup = max(1, phase.steps // 50)
    if step < warmup:
        return phase.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, phase.steps - warmup)
    return phase.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def heldout_loss(model: DecoderModel, data: torch.Tensor, device: str, n: int = 64) -> float:
    """Mean next-token cross-entropy on ``n`` fixed held-out windows."""
    model.eval()
    rows = windows(data, n, torch.Generator().manual_seed(1), device)
    losses = []
    for chunk in rows.split(16):
        logits = model.forward_dense(chunk[:, :-1]).float()  # [B, T, V]
        losses.append(F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten()).item())
    model.train()
    return sum(losses) / len(losses)


@torch.no_grad()
def teacher_continuations(
    teacher: DecoderModel, data: torch.Tensor, n: int, batch: int, seed: int
) -> torch.Tensor:
    """Training-text prompts continued by the teacher, as the draft will meet them when serving.

    Half the prompts open a training file (32-128 tokens: what users send), half are 128 tokens
    from anywhere; even rows continue greedily, odd rows sample at temperature 0.8. Each row is
    cut at SEQ_LEN + 1 tokens.  # → [n, SEQ_LEN + 1] int16
    """
    gen = torch.Generator().manual_seed(seed)
    device = teacher.lm_head.weight.device
    eos = teacher.config.eos_token_ids[0]
    file_starts = torch.cat([torch.zeros(1, dtype=torch.long), (data == eos).nonzero()[:, 0] + 1])
    file_starts = file_starts[file_starts < len(data) - SEQ_LEN - 1]  # [F]
    runner = ModelRunner(teacher, num_slots=batch, max_seq_len=SEQ_LEN + 1)
    rows = []
    for _ in tqdm(range(0, n, batch), desc="teacher continuations", unit="batch"):
        seqs: list[list[int]] = []
        for row in range(batch):
            if row % 4 < 2:
                pick = torch.randint(0, len(file_starts), (1,), generator=gen).item()
                start = int(file_starts[int(pick)])
                length = int(torch.randint(32, 129, (1,), generator=gen))
            else:
                start = int(torch.randint(0, len(data) - SEQ_LEN - 1, (1,), generator=gen))
                length = SEQ_LEN // 2
            seqs.append(data[start : start + length].tolist())
        slots = [runner.cache.allocate() for _ in range(batch)]
        logits = runner.step([Chunk(s, seq, 0, 1) for s, seq in zip(slots, seqs, strict=True)])
        active = list(range(batch))
        while True:
            last = torch.cat(logits).float()  # [A, V]
            sampled = torch.multinomial(torch.softmax(last / 0.8, -1).cpu(), 1, generator=gen)
            greedy = torch.tensor([i % 2 == 0 for i in active])  # [A]
            picks = torch.where(greedy, last.argmax(-1).cpu(), sampled[:, 0]).tolist()
            for i, token in zip(active, picks, strict=True):
                seqs[i].append(token)
            active = [i for i in active if len(seqs[i]) < SEQ_LEN + 1]
            if not active:
                break
            logits = runner.step(
                [Chunk(slots[i], [seqs[i][-1]], len(seqs[i]) - 1, 1) for i in active]
            )
        for slot in slots:
            runner.cache.free(slot)
        rows.append(torch.tensor(seqs, dtype=torch.int16))
    return torch.cat(rows)[:n].to(device)


def train(
    model: DecoderModel,
    phase: Phase,
    data: torch.Tensor,
    heldout: torch.Tensor,
    work: Path,
    seed: int,
    device: str,
    teacher: DecoderModel | None = None,
    extra: torch.Tensor | None = None,
) -> None:
    """AdamW with warm-up and cosine decay; distils from ``teacher`` when given (soft targets).

    With ``extra`` ([N, SEQ_LEN + 1] rows), half of each batch comes from it instead of ``data``.

    Checkpoints to ``work / f"{phase.name}.pt"`` every few minutes and resumes from it.
    """
    ckpt_path = work / f"{phase.name}.pt"
    opt = torch.optim.AdamW(model.parameters(), lr=phase.lr, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(seed)
    step = 0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        gen.set_state(ckpt["gen"])
        step = ckpt["step"]
    model.train()
    bar = tqdm(total=phase.steps, initial=step, desc=f"train {phase.name}", unit="step")
    last_save = time.monotonic()
    tokens_seen, t0 = 0, time.perf_counter()
    while step < phase.steps:
        rows = windows(data, phase.batch, gen, device)
        if extra is not None:
            pick = torch.randint(0, len(extra), (phase.batch // 2,), generator=gen)
            rows = torch.cat([rows[: phase.batch - len(pick)], extra[pick].long().to(device)])
        inputs, labels = rows[:, :-1], rows[:, 1:]
        logits = model.forward_dense(inputs).float()  # [B, T, V]
        if teacher is None:
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        else:
            with torch.no_grad():
                target_logp = F.log_softmax(teacher.forward_dense(inputs).float(), dim=-1)
            # Forward KL(target || draft), the quantity speculative acceptance rewards.
            loss = (
                F.kl_div(
                    F.log_softmax(logits, dim=-1),
                    target_logp,
                    log_target=True,
                    reduction="batchmean",
                )
                / inputs.shape[1]
            )
        for group in opt.param_groups:
            group["lr"] = lr_at(step, phase)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens_seen += inputs.numel()
        bar.update(1)
        bar.set_postfix(
            loss=f"{loss.item():.3f}", tok_s=f"{tokens_seen / (time.perf_counter() - t0):.0f}"
        )
        if time.monotonic() - last_save > 300 or step == phase.steps:
            torch.save(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "gen": gen.get_state(),
                    "step": step,
                },
                ckpt_path,
            )
            last_save = time.monotonic()
    bar.close()
    print(f"{phase.name}: held-out loss {heldout_loss(model, heldout, device):.3f}")


def export(model: DecoderModel, tok: Tokenizer, folder: Path) -> None:
    """A Hugging Face folder that loads in specdec and in transformers' Auto classes."""
    save_model(model, folder, torch.bfloat16)
    tok.save(str(folder / "tokenizer.json"))
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "pad_token": EOS,
        "model_max_length": 1024,
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": EOS, "pad_token": EOS}, indent=2) + "\n"
    )


def load_data(work: Path, stdlib: Path) -> tuple[Tokenizer, torch.Tensor, torch.Tensor]:
    """Tokenizer and encoded train / held-out tokens, built once and cached in ``work``."""
    tok_path, data_path = work / "tokenizer.json", work / "data.pt"
    if tok_path.exists() and data_path.exists():
        data = torch.load(data_path)
        return Tokenizer.from_file(str(tok_path)), data["train"], data["heldout"]
    train_texts, heldout = read_texts(stdlib)
    print(f"corpus: {len(train_texts)} train files, {len(heldout)} held-out files from {stdlib}")
    tok = train_tokenizer(train_texts, VOCAB_SIZE)
    train_ids, heldout_ids = encode(tok, train_texts), encode(tok, [t for _, t in heldout])
    print(f"tokens: {len(train_ids):,} train, {len(heldout_ids):,} held-out")
    tok.save(str(tok_path))
    torch.save(
        {"train": train_ids, "heldout": heldout_ids, "heldout_files": [rel for rel, _ in heldout]},
        data_path,
    )
    return tok, train_ids, heldout_ids


def cached_continuations(
    target: DecoderModel, target_step: int, data: torch.Tensor, n: int, args: argparse.Namespace
) -> torch.Tensor:
    """``teacher_continuations`` of the target, kept in the work dir.  # → [n, SEQ_LEN + 1]"""
    path = args.work_dir / "continuations.pt"
    if path.exists():
        cached = torch.load(path)
        if cached["target_step"] == target_step and len(cached["rows"]) == n:
            return cached["rows"].to(args.device)
    rows = teacher_continuations(target, data, n, 64, args.seed + 2)  # one weight read, 64 rows
    torch.save({"target_step": target_step, "rows": rows.cpu()}, path)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("models"), help="where the pair is written")
    ap.add_argument(
        "--work-dir",
        type=Path,
        default=Path.home() / ".cache" / "specdec-train",
        help="corpus cache and resumable checkpoints",
    )
    ap.add_argument("--phase", choices=["all", "target", "draft"], default="all")
    ap.add_argument("--target-steps", type=int, default=1600)
    ap.add_argument("--draft-steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument(
        "--teacher-rows",
        type=int,
        default=1024,
        help="target-written sequences that make up half of each draft batch (0: none)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    tok, train_ids, heldout_ids = load_data(args.work_dir, stdlib)
    eos_id = tok.token_to_id(EOS)
    target = new_model(model_config(TARGET_SHAPE, eos_id), args.seed, args.device)
    target_phase = Phase("target", args.target_steps, args.batch, 2e-3)
    if args.phase in ("all", "target"):
        train(target, target_phase, train_ids, heldout_ids, args.work_dir, args.seed, args.device)
        export(target, tok, args.out / "demo-target")
        target_step = args.target_steps
    else:  # the draft learns from the finished target
        ckpt = torch.load(args.work_dir / "target.pt", map_location=args.device, weights_only=False)
        target.load_state_dict(ckpt["model"])
        target_step = ckpt["step"]
    if args.phase in ("all", "draft"):
        target.eval().requires_grad_(False)
        draft = new_model(model_config(DRAFT_SHAPE, eos_id), args.seed + 1, args.device)
        draft_phase = Phase("draft", args.draft_steps, args.batch, 3e-3)
        extra = None
        if args.teacher_rows:
            extra = cached_continuations(target, target_step, train_ids, args.teacher_rows, args)
        train(
            draft,
            draft_phase,
            train_ids,
            heldout_ids,
            args.work_dir,
            args.seed + 1,
            args.device,
            teacher=target,
            extra=extra,
        )
        export(draft, tok, args.out / "demo-draft")


if __name__ == "__main__":
    main()
