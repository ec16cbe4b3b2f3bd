"""Train the demo model pair: a ~21M-parameter Llama target and a ~1.6M-parameter Llama draft
distilled from it, both on Python source code, sharing one byte-level BPE tokenizer.

Reproducible: the corpus is the running Python's standard library (every ``*.py`` under
``sysconfig.get_paths()["stdlib"]``, site-packages excluded), files in sorted order, split into
train / held-out by a hash of each file's relative path; every random draw comes from ``--seed``.
The target is pretrained on the corpus, then briefly fine-tuned with sequence-level
unlikelihood: it continues training prompts greedily and is penalised for every token that
repeats its own 4-grams, which breaks most of the loops greedy decoding otherwise falls into.
The draft learns the target's next-token distribution (its top 32 and one bucket for the rest,
computed once) on text the target wrote itself, greedy and sampled, the text it must predict
when serving, and on training windows.
Resumable: each phase checkpoints to ``--work-dir`` and picks up where it stopped. Uses CUDA when
present, the CPU otherwise.

    python tools/train_demo.py --out models             # everything, with progress bars
    python tools/train_demo.py --phase draft --out models   # only re-distil the draft
    python tools/train_demo.py --phase draft --target-from models/demo-target \
        --draft-from models/demo-draft --out models     # re-distil against a committed pair
    python tools/train_demo.py --phase pool --target-from models/demo-target --seed 5 \
        --work-dir W5    # only build a distillation pool, for a later run's --pool-from
    python tools/train_demo.py --phase agree --target-from models/demo-target \
        --draft-from models/demo-draft --pool-from W5 --agree-steps 150 --out OUT
        # fine-tune the target towards the draft (tried; not part of the committed pair)

Non-goals: a general training framework; multi-GPU; data beyond the standard library.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from specdec.core.model_config import ModelConfig
from specdec.engine.batch import Chunk
from specdec.engine.checkpoint import load_model, load_state_dict, save_model
from specdec.engine.model import DecoderModel
from specdec.engine.runner import ModelRunner

EOS = "<|endoftext|>"
HELDOUT_PERCENT = 3
VOCAB_SIZE = 4096
SEQ_LEN = 256
TOP_K = 32  # teacher probabilities kept per position for distillation
POOL_FILE = "distillation_pool.pt"  # a work dir's distillation pool (see distillation_pool)
CONTINUATION = 64  # tokens of greedy continuation judged for repetition

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
    weight_decay: float = 0.1


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
    """Mean next-token cross-entropy on ``n`` fixed held-out windows. ``tools/eval_demo.py``
    (the model card's figure) joins the held-out files without end-of-text tokens, so the same
    draw falls on other text there and the two figures differ (3.34 here, 3.15 there)."""
    model.eval()
    rows = windows(data, n, torch.Generator().manual_seed(1), device)
    losses = []
    for chunk in rows.split(16):
        logits = model.forward_dense(chunk[:, :-1]).float()  # [B, T, V]
        losses.append(F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten()).item())
    model.train()
    return sum(losses) / len(losses)


def training_prompts(data: torch.Tensor, n: int, eos: int, gen: torch.Generator) -> list[list[int]]:
    """Prompts from the training text: rows 4j and 4j+1 open a file (32-128 tokens: what users
    send), rows 4j+2 and 4j+3 are 128 tokens from anywhere."""
    file_starts = torch.cat([torch.zeros(1, dtype=torch.long), (data == eos).nonzero()[:, 0] + 1])
    file_starts = file_starts[file_starts < len(data) - SEQ_LEN - 1]  # [F]
    prompts = []
    for row in range(n):
        if row % 4 < 2:
            pick = torch.randint(0, len(file_starts), (1,), generator=gen).item()
            start = int(file_starts[int(pick)])
            length = int(torch.randint(32, 129, (1,), generator=gen))
        else:
            start = int(torch.randint(0, len(data) - SEQ_LEN - 1, (1,), generator=gen))
            length = SEQ_LEN // 2
        prompts.append(data[start : start + length].tolist())
    return prompts


@torch.no_grad()
def continue_prompts(
    model: DecoderModel,
    prompts: list[list[int]],
    lengths: list[int],
    gen: torch.Generator,
    greedy: Literal["even", "all", "none"] = "even",
) -> list[list[int]]:
    """Each prompt continued by ``model`` to ``lengths[i]`` tokens, all rows in one batch on the
    engine's KV cache: ``greedy`` rows ("even", "all" or "none") greedily, the others sampled at
    temperature 0.8."""
    if greedy not in ("even", "all", "none"):
        raise ValueError(f"greedy must be even, all or none, not {greedy!r}")
    runner = ModelRunner(model, num_slots=len(prompts), max_seq_len=max(lengths))
    seqs = [list(p) for p in prompts]
    slots = [runner.cache.allocate() for _ in seqs]
    logits = runner.step([Chunk(s, seq, 0, 1) for s, seq in zip(slots, seqs, strict=True)])
    active = [i for i in range(len(seqs)) if len(seqs[i]) < lengths[i]]
    while active:
        last = torch.cat([logits[i] for i in active]).float()  # [A, V]
        sampled = torch.multinomial(torch.softmax(last / 0.8, -1).cpu(), 1, generator=gen)
        rows = [greedy == "all" or (greedy == "even" and i % 2 == 0) for i in active]
        picks = torch.where(torch.tensor(rows), last.argmax(-1).cpu(), sampled[:, 0]).tolist()
        for i, token in zip(active, picks, strict=True):
            seqs[i].append(token)
        active = [i for i in active if len(seqs[i]) < lengths[i]]
        step_logits = runner.step(
            [Chunk(slots[i], [seqs[i][-1]], len(seqs[i]) - 1, 1) for i in active]
        )
        logits = dict(zip(active, step_logits, strict=True))
    for slot in slots:
        runner.cache.free(slot)
    return seqs


def teacher_continuations(
    teacher: DecoderModel, data: torch.Tensor, n: int, batch: int, seed: int
) -> torch.Tensor:
    """Training-text prompts continued by the teacher, as the draft will meet them when serving
    (see ``training_prompts`` and ``continue_prompts``), each row cut at SEQ_LEN + 1 tokens.
    # → [n, SEQ_LEN + 1] int16
    """
    gen = torch.Generator().manual_seed(seed)
    eos = teacher.config.eos_token_ids[0]
    rows = []
    for _ in tqdm(range(0, n, batch), desc="teacher continuations", unit="batch"):
        prompts = training_prompts(data, batch, eos, gen)
        seqs = continue_prompts(teacher, prompts, [SEQ_LEN + 1] * batch, gen)
        rows.append(torch.tensor(seqs, dtype=torch.int16))
    return torch.cat(rows)[:n].to(teacher.lm_head.weight.device)


BatchLoss = Callable[[DecoderModel, torch.Generator], torch.Tensor]


def lm_loss(model: DecoderModel, rows: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of ``rows`` ([B, T + 1] token ids)."""
    logits = model.forward_dense(rows[:, :-1]).float()  # [B, T, V]
    return F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten())


@torch.no_grad()
def teacher_top(teacher: DecoderModel, rows: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """The teacher's ``TOP_K`` most likely next tokens and their log-probabilities at every
    position of ``rows`` ([N, T + 1]), for distilling without re-running the teacher.
    # → ids [N, T, TOP_K] int16 (int32 past 32k tokens), log-probs [N, T, TOP_K] fp16
    """
    device = teacher.lm_head.weight.device
    id_dtype = torch.int16 if teacher.config.vocab_size <= 1 << 15 else torch.int32
    ids, logps = [], []
    for chunk in tqdm(rows.split(batch), desc="teacher logits", unit="batch"):
        logits = teacher.forward_dense(chunk[:, :-1].long().to(device)).float()  # [B, T, V]
        top = torch.log_softmax(logits, -1).topk(TOP_K, dim=-1)
        ids.append(top.indices.to(id_dtype).cpu())
        logps.append(top.values.half().cpu())
    return torch.cat(ids), torch.cat(logps)


def _coarse(
    logits: torch.Tensor, top_ids: torch.Tensor, top_logp: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher and model on the teacher's top-K tokens plus one bucket for all other tokens:
    the model's and the teacher's log-probabilities of the top K ([B, T, K] each), then the
    model's and the teacher's mass on the rest ([B, T] each). logits [B, T, V]."""
    logq = torch.log_softmax(logits.float(), -1).gather(-1, top_ids.long())  # [B, T, K]
    logp = top_logp.float()
    q_rest = (1 - logq.exp().sum(-1)).clamp(min=0)  # [B, T]
    p_rest = (1 - logp.exp().sum(-1)).clamp(min=0)
    return logq, logp, q_rest, p_rest


def sparse_kl(logits: torch.Tensor, top_ids: torch.Tensor, top_logp: torch.Tensor) -> torch.Tensor:
    """Mean KL(teacher || model) per position over the teacher's top-K tokens plus one bucket
    for all other tokens: exact for that coarser distribution, and equal to the full KL when
    the top-K hold all the mass. logits [B, T, V]; top_ids, top_logp [B, T, K]."""
    logq, logp, q_rest, p_rest = _coarse(logits, top_ids, top_logp)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    kl = kl + p_rest * (torch.log(p_rest.clamp(min=1e-6)) - torch.log(q_rest.clamp(min=1e-6)))
    return kl.mean()


def sparse_tv(logits: torch.Tensor, top_ids: torch.Tensor, top_logp: torch.Tensor) -> torch.Tensor:
    """Mean total variation distance per position between teacher and model, over the
    teacher's top-K tokens plus one bucket for all other tokens. One minus it is
    sum(min(p, q)) for that coarser distribution: the probability that speculative sampling
    accepts a token drawn from the model (an upper bound of the full distribution's). Unlike
    the KL, its pull on a token does not fade with the token's probability, so it weighs the
    order of near-ties, which greedy acceptance depends on, more.
    logits [B, T, V]; top_ids, top_logp [B, T, K]."""
    logq, logp, q_rest, p_rest = _coarse(logits, top_ids, top_logp)
    return 0.5 * ((logp.exp() - logq.exp()).abs().sum(-1) + (p_rest - q_rest).abs()).mean()


def argmax_ce(logits: torch.Tensor, top_ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the teacher's most likely token (``top_ids[..., 0]``: ``topk``
    sorts descending): the smooth stand-in for "the draft's argmax equals the teacher's", which
    is what greedy speculation accepts on. logits [B, T, V]; top_ids [B, T, K]."""
    return F.cross_entropy(logits.float().flatten(0, 1), top_ids[..., 0].long().flatten())


def draft_kl(logits: torch.Tensor, draft_logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(model || draft) per position: pulls the model's distribution towards the
    draft's. Where the model is sure of its next token its language-model loss outweighs this;
    where two tokens nearly tie, this settles the tie the way the draft would.
    logits, draft_logits [B, T, V]."""
    logp = torch.log_softmax(logits.float(), -1)
    logq = torch.log_softmax(draft_logits.float(), -1)
    return (logp.exp() * (logp - logq)).sum(-1).mean()


def repeated_ngrams(rows: list[list[int]], starts: list[int], n: int = 4) -> torch.Tensor:
    """True at each token that completes an ``n``-gram already seen in the same row since
    ``starts[i]`` (the model repeating its own output). Rows are padded to the longest.
    # → [B, T] bool"""
    mask = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.bool)
    for i, (row, start) in enumerate(zip(rows, starts, strict=True)):
        seen: set[tuple[int, ...]] = set()
        for t in range(start + n - 1, len(row)):
            gram = tuple(row[t - n + 1 : t + 1])
            mask[i, t] = gram in seen
            seen.add(gram)
    return mask


def unlikelihood(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of -log(1 - p(target)) over the masked tokens (Welleck et al., 2019, "Neural text
    generation with unlikelihood training"): lowers the probability of what ``mask`` marks.
    logits [B, T, V]; targets, mask [B, T]."""
    p = torch.softmax(logits.float(), -1).gather(-1, targets[..., None])[..., 0]  # [B, T]
    penalty = -torch.log1p(-p.clamp(max=1 - 1e-5))
    return (penalty * mask).sum() / mask.numel()


def unlikelihood_batch(
    model: DecoderModel, data: torch.Tensor, batch: int, gen: torch.Generator
) -> torch.Tensor:
    """Sequence-level unlikelihood: the model continues training prompts greedily for
    ``CONTINUATION`` tokens and is penalised for each token that repeats its own 4-grams."""
    eos = model.config.eos_token_ids[0]
    prompts = training_prompts(data, batch, eos, gen)
    lengths = [len(p) + CONTINUATION for p in prompts]
    seqs = continue_prompts(model, prompts, lengths, gen, greedy="all")
    model.train()
    mask = repeated_ngrams(seqs, [len(p) for p in prompts])  # [B, T]
    width = mask.shape[1]
    device = model.lm_head.weight.device
    rows = torch.tensor([s + [eos] * (width - len(s)) for s in seqs], device=device)  # [B, T]
    logits = model.forward_dense(rows[:, :-1])  # [B, T - 1, V]
    return unlikelihood(logits, rows[:, 1:], mask[:, 1:].to(device))


def loop_losses(
    model: DecoderModel, data: torch.Tensor, windows_n: int, prompts_n: int, gen: torch.Generator
) -> torch.Tensor:
    """The unlikelihood phase's losses: the language-model loss on ``windows_n`` training
    windows, which holds the model's quality, plus ``unlikelihood_batch`` on ``prompts_n``
    prompts, which breaks its greedy loops."""
    device = model.lm_head.weight.device
    return lm_loss(model, windows(data, windows_n, gen, device)) + unlikelihood_batch(
        model, data, prompts_n, gen
    )


def train(
    model: DecoderModel,
    phase: Phase,
    batch_loss: BatchLoss,
    heldout: torch.Tensor | None,
    work: Path,
    seed: int,
    device: str,
) -> None:
    """AdamW with warm-up and cosine decay on ``batch_loss(model, generator)``; prints the loss
    on ``heldout`` windows at the end (None: no held-out text).

    Checkpoints to ``work / f"{phase.name}.pt"`` every few minutes and resumes from it.
    """
    ckpt_path = work / f"{phase.name}.pt"
    opt = torch.optim.AdamW(
        model.parameters(), lr=phase.lr, betas=(0.9, 0.95), weight_decay=phase.weight_decay
    )
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
    while step < phase.steps:
        loss = batch_loss(model, gen)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, phase)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
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
    if heldout is not None:
        print(f"{phase.name}: held-out window loss {heldout_loss(model, heldout, device):.3f}")


def agree(
    target: DecoderModel,
    draft: DecoderModel,
    written: torch.Tensor,
    train_ids: torch.Tensor,
    heldout_ids: torch.Tensor,
    args: argparse.Namespace,
) -> None:
    """Fine-tune the finished target towards ``draft`` (``draft_kl``) on ``written``, text it
    wrote ([N, SEQ_LEN + 1]), while keeping the unlikelihood phase's losses on
    ``--agree-prompts`` greedy prompts: the language-model loss holds the target's quality, the
    unlikelihood holds loops back (see models/README.md for how far)."""
    device, batch = args.device, args.batch
    draft = draft.float().eval().requires_grad_(False)
    prompts = args.agree_prompts or 2 * batch

    def agree_loss(model: DecoderModel, gen: torch.Generator) -> torch.Tensor:
        pick = torch.randint(0, len(written), (batch // 2,), generator=gen)
        rows = written[pick, :-1].long().to(device)  # [B / 2, T]
        with torch.no_grad():
            draft_logits = draft.forward_dense(rows)  # [B / 2, T, V]
        pull = draft_kl(model.forward_dense(rows), draft_logits)
        return loop_losses(model, train_ids, batch // 2, prompts, gen) + args.agree_weight * pull

    phase = Phase("target-agree", args.agree_steps, batch, 2e-4)
    train(
        target.float().requires_grad_(True),
        phase,
        agree_loss,
        heldout_ids,
        args.work_dir,
        args.seed,
        device,
    )


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


def load_data(
    work: Path, stdlib: Path, given: Path | None = None
) -> tuple[Tokenizer, torch.Tensor, torch.Tensor]:
    """Tokenizer and encoded train / held-out tokens, built once and cached in ``work``.

    ``given``: a trained ``tokenizer.json`` to use instead of training one (a pair's models must
    share it); a work dir already holding a different tokenizer is refused.
    """
    tok_path, data_path = work / "tokenizer.json", work / "data.pt"
    if given is not None:
        if not tok_path.exists():
            tok_path.write_bytes(given.read_bytes())
        elif tok_path.read_bytes() != given.read_bytes():
            raise SystemExit(f"{work} holds another tokenizer than {given}: use a fresh --work-dir")
    if tok_path.exists() and data_path.exists():
        data = torch.load(data_path)
        return Tokenizer.from_file(str(tok_path)), data["train"], data["heldout"]
    train_texts, heldout = read_texts(stdlib)
    print(f"corpus: {len(train_texts)} train files, {len(heldout)} held-out files from {stdlib}")
    tok = Tokenizer.from_file(str(tok_path)) if given else train_tokenizer(train_texts, VOCAB_SIZE)
    train_ids, heldout_ids = encode(tok, train_texts), encode(tok, [t for _, t in heldout])
    print(f"tokens: {len(train_ids):,} train, {len(heldout_ids):,} held-out")
    tok.save(str(tok_path))
    torch.save(
        {"train": train_ids, "heldout": heldout_ids, "heldout_files": [rel for rel, _ in heldout]},
        data_path,
    )
    return tok, train_ids, heldout_ids


def distillation_pool(
    target: DecoderModel, key: str, data: torch.Tensor, args: argparse.Namespace
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the draft learns from, built once per target (``key``: its phase and step) and kept
    in the work dir: ``--teacher-rows`` sequences the target wrote (``teacher_continuations``)
    and ``--window-rows`` training windows, with the target's ``teacher_top`` at every position.
    # → rows [N, SEQ_LEN + 1] int16, top ids [N, SEQ_LEN, TOP_K] int16, top log-probs (fp16)
    """
    path = args.work_dir / POOL_FILE
    sizes = [args.teacher_rows, args.window_rows]
    if path.exists():
        cached = torch.load(path)
        if cached["target"] == key and cached["sizes"] == sizes:
            return pool_tensors(cached)
    written = teacher_continuations(target, data, args.teacher_rows, 64, args.seed + 2).cpu()
    gen = torch.Generator().manual_seed(args.seed + 3)
    rows = torch.cat([written, windows(data, args.window_rows, gen, "cpu").to(torch.int16)])
    ids, logps = teacher_top(target, rows)
    pool = {"target": key, "sizes": sizes, "rows": rows, "ids": ids, "logps": logps}
    torch.save(pool, path)
    return rows, ids, logps


def pool_tensors(pool: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rows, top ids and top log-probs of a pool as ``distillation_pool`` saves it."""
    return pool["rows"], pool["ids"], pool["logps"]


def earlier_pools(
    key: str, work_dirs: list[Path]
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The distillation pools cached in ``work_dirs`` (earlier runs with other seeds), which must
    have been labelled by the same target (``key``). Read before the fresh pool is built, so a
    wrong ``--pool-from`` fails before that hour of work."""
    return [pool_tensors(cached_pool(work, key)) for work in work_dirs]


def written_rows(key: str, work_dirs: list[Path]) -> torch.Tensor:
    """The sequences the target (``key``) wrote for the pools cached in ``work_dirs``.
    # → [N, SEQ_LEN + 1] int16"""
    pools = [cached_pool(work, key) for work in work_dirs]
    return torch.cat([pool["rows"][: pool["sizes"][0]] for pool in pools])


def cached_pool(work: Path, key: str) -> dict:
    """The pool cached in ``work``, refused unless the target ``key`` labelled it. Memory-mapped:
    a caller that needs only the rows (``written_rows``) does not read the ~400 MB of labels."""
    if not (work / POOL_FILE).exists():
        raise SystemExit(f"--pool-from {work}: no {POOL_FILE} there (build one: --phase pool)")
    cached = torch.load(work / POOL_FILE, mmap=True)
    if cached["target"] != key:
        raise SystemExit(f"{work}'s pool was labelled by {cached['target']}, not by {key}")
    return cached


def joined(
    pools: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pools (rows, top ids, top log-probs) as one, in order; a single pool is not copied.
    # → rows [N, SEQ_LEN + 1], top ids [N, SEQ_LEN, TOP_K], top log-probs, N summed over pools
    """
    if len(pools) == 1:
        return pools[0]
    rows, ids, logps = (torch.cat(tensors) for tensors in zip(*pools, strict=True))
    return rows, ids, logps


def finished_target(
    target: DecoderModel, last_phase: str, args: argparse.Namespace
) -> tuple[DecoderModel, str]:
    """The target the draft learns from, and a key naming it for the pool cache: the folder
    ``--target-from`` (keyed by its weights' digest), else the work dir's checkpoint of the
    target's last phase (keyed by phase and step); in ``--teacher-dtype``."""
    dtype = getattr(torch, args.teacher_dtype)
    if args.target_from:
        weights = (args.target_from / "model.safetensors").read_bytes()
        key = f"{args.target_from.name}:{hashlib.sha1(weights).hexdigest()[:12]}"
        return load_model(args.target_from, dtype, args.device), f"{key}:{args.teacher_dtype}"
    ckpt_path = args.work_dir / f"{last_phase}.pt"
    if not ckpt_path.exists():
        raise SystemExit(f"no finished target in {ckpt_path}: run --phase target first")
    ckpt = torch.load(ckpt_path, map_location=args.device, weights_only=False)
    target.load_state_dict(ckpt["model"])
    return target.to(dtype), f"{last_phase}@{ckpt['step']}:{args.teacher_dtype}"


def starting_draft(args: argparse.Namespace, eos_id: int) -> DecoderModel:
    """The draft before distillation: ``--draft-from``'s weights, else a fresh initialisation."""
    shape = {
        **DRAFT_SHAPE,
        "num_hidden_layers": args.draft_layers,
        "intermediate_size": args.draft_mlp,
    }
    draft = new_model(model_config(shape, eos_id), args.seed + 1, args.device)
    if args.draft_from:
        try:
            grow_into(draft, load_state_dict(args.draft_from, torch.float32, args.device))
        except ValueError as e:
            raise SystemExit(f"--draft-from {args.draft_from}: {e}") from None
    return draft


def grow_into(model: DecoderModel, state: dict[str, torch.Tensor]) -> None:
    """Load ``state``, the weights of the same model or of a smaller one with fewer layers or
    MLP units, so that ``model`` computes exactly what they compute. Each stored weight fills
    the leading block of its parameter; new layers' output projections and new MLP units'
    down-projection columns start at zero, so the new parts add nothing until training moves
    them (their input-side weights keep the random initialisation, so gradients reach them).
    Every other size (hidden, heads, vocabulary) must match. Raises ValueError otherwise."""
    params = dict(model.named_parameters())  # a tied lm_head is listed once, as embed_tokens
    if unknown := sorted(set(state) - set(params) - {"lm_head.weight"}):
        raise ValueError(
            f"weights a model of this shape does not have (a larger one?): {unknown[:3]}"
        )

    def layer(name: str) -> int:  # "model.layers.3.mlp.up_proj.weight" → 3; -1 outside layers
        return int(name.split(".")[2]) if name.startswith("model.layers.") else -1

    stored_layers = max(map(layer, state), default=-1) + 1
    with torch.no_grad():
        for name, param in params.items():
            if name not in state:
                if layer(name) < stored_layers:
                    raise ValueError(f"{name} is missing")
                if ".o_proj." in name or ".down_proj." in name:  # weight and any bias
                    param.zero_()
                continue
            src = state[name]
            may_grow = ".mlp." in name  # only the intermediate size may grow
            if src.dim() != param.dim() or any(
                s > d or (s < d and not may_grow)
                for s, d in zip(src.shape, param.shape, strict=True)
            ):
                raise ValueError(f"{name}: {tuple(src.shape)} does not fit {tuple(param.shape)}")
            param[tuple(slice(0, s) for s in src.shape)] = src
            if name.endswith("down_proj.weight"):
                param[:, src.shape[1] :] = 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("models"), help="where the pair is written")
    ap.add_argument(
        "--work-dir",
        type=Path,
        default=Path.home() / ".cache" / "specdec-train",
        help="corpus cache and resumable checkpoints",
    )
    ap.add_argument(
        "--phase",
        choices=["all", "target", "draft", "pool", "agree"],
        default="all",
        help="pool: only build the draft's distillation pool in --work-dir (no training, no "
        "export), for a later run's --pool-from; agree: fine-tune the finished target towards "
        "the --draft-from draft on the text it wrote for --pool-from's pools (see draft_kl)",
    )
    ap.add_argument("--target-steps", type=int, default=1600)
    ap.add_argument(
        "--unlikelihood-steps",
        type=int,
        default=150,
        help="target fine-tuning steps against repeating its own greedy output (0: none)",
    )
    ap.add_argument("--draft-steps", type=int, default=4000)
    ap.add_argument(
        "--agree-steps",
        type=int,
        default=0,
        help="steps of the target's fine-tuning towards the draft: the last phase of --phase all "
        "(0, the default: none; the committed pair has none, see models/README.md) and all of "
        "--phase agree",
    )
    ap.add_argument(
        "--agree-weight",
        type=float,
        default=1.0,
        help="weight of KL(target || draft) in --phase agree, against the target's own losses",
    )
    ap.add_argument(
        "--agree-prompts",
        type=int,
        help="greedy prompts per step of --phase agree's unlikelihood loss (default: the "
        "unlikelihood phase's 2 x --batch)",
    )
    ap.add_argument(
        "--draft-layers",
        type=int,
        default=DRAFT_SHAPE["num_hidden_layers"],
        help="the draft's layers; more than --draft-from's grows it (see grow_into)",
    )
    ap.add_argument(
        "--draft-mlp",
        type=int,
        default=DRAFT_SHAPE["intermediate_size"],
        help="the draft's MLP width; more than --draft-from's grows it",
    )
    ap.add_argument(
        "--target-from",
        type=Path,
        help="with --phase draft or pool: distil from this trained target folder (and use its "
        "tokenizer) instead of the work dir's checkpoint",
    )
    ap.add_argument(
        "--draft-from", type=Path, help="start the draft from this folder's weights, not at random"
    )
    ap.add_argument("--draft-lr", type=float, default=3e-3, help="peak learning rate of the draft")
    ap.add_argument(
        "--argmax-weight",
        type=float,
        default=0.0,
        help="add this times the cross-entropy of the target's top token to the draft's KL "
        "(favours greedy agreement over matching the whole distribution)",
    )
    ap.add_argument(
        "--tv-weight",
        type=float,
        default=0.0,
        help="distil on (1 - w) x the KL + w x the total variation distance (sparse_tv), "
        "from 0 (the KL alone, the default) to 1 (the distance alone)",
    )
    ap.add_argument(
        "--teacher-dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="the target's dtype while it writes and labels the distillation pool (bfloat16 is "
        "~3x faster on CPUs with AMX and on GPUs)",
    )
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument(
        "--teacher-rows", type=int, default=2048, help="sequences the target writes for the draft"
    )
    ap.add_argument(
        "--window-rows", type=int, default=6144, help="training windows the draft is distilled on"
    )
    ap.add_argument(
        "--pool-from",
        type=Path,
        action="append",
        default=[],
        help="also distil on the pool cached in this earlier --work-dir (same target, other "
        "--seed); repeatable",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.target_from and args.phase not in ("draft", "pool", "agree"):
        ap.error("--target-from only applies to --phase draft, pool or agree")
    if not 0 <= args.tv_weight <= 1:
        ap.error("--tv-weight must be between 0 and 1")
    if args.pool_from and args.phase in ("target", "pool"):
        ap.error("--pool-from only applies when the draft is trained, or with --phase agree")
    if args.phase == "agree" and not (args.draft_from and args.pool_from and args.agree_steps):
        ap.error(
            "--phase agree needs --draft-from (the draft to agree with), --pool-from and "
            "--agree-steps"
        )
    args.work_dir.mkdir(parents=True, exist_ok=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    given_tok = args.target_from / "tokenizer.json" if args.target_from else None
    tok, train_ids, heldout_ids = load_data(args.work_dir, stdlib, given_tok)
    eos_id = tok.token_to_id(EOS)
    device, batch = args.device, args.batch

    def sample(gen: torch.Generator, n: int = batch) -> torch.Tensor:
        return windows(train_ids, n, gen, device)

    target = new_model(model_config(TARGET_SHAPE, eos_id), args.seed, device)
    phases = [Phase("target", args.target_steps, batch, 2e-3)]
    if args.unlikelihood_steps:
        phases.append(Phase("target-unlikelihood", args.unlikelihood_steps, batch, 2e-4))
    losses: list[BatchLoss] = [
        lambda m, g: lm_loss(m, sample(g)),
        lambda m, g: loop_losses(m, train_ids, batch // 2, 2 * batch, g),
    ]
    if args.phase in ("all", "target"):
        for phase, loss in zip(phases, losses, strict=False):
            train(target, phase, loss, heldout_ids, args.work_dir, args.seed, device)
        export(target, tok, args.out / "demo-target")
    if args.phase in ("all", "draft", "pool"):
        target, teacher_key = finished_target(target, phases[-1].name, args)
        target.eval().requires_grad_(False)
        # the draft and earlier pools first: a wrong --draft-from or --pool-from fails before
        # the fresh pool's hour of work
        draft = None if args.phase == "pool" else starting_draft(args, eos_id)
        earlier = earlier_pools(teacher_key, args.pool_from)
        pool = distillation_pool(target, teacher_key, train_ids, args)
        if draft is None:
            print(f"pool of {len(pool[0]):,} rows in {args.work_dir / POOL_FILE}")
            return
        rows, top_ids, top_logps = joined([pool, *earlier])
        print(f"distilling on {len(rows):,} rows")

        def draft_loss(model: DecoderModel, gen: torch.Generator) -> torch.Tensor:
            pick = torch.randint(0, len(rows), (batch,), generator=gen)
            logits = model.forward_dense(rows[pick, :-1].long().to(device))  # [B, T, V]
            ids = top_ids[pick].to(device)
            logp = top_logps[pick].to(device)
            loss = logits.new_zeros(())
            if args.tv_weight < 1:
                loss = loss + (1 - args.tv_weight) * sparse_kl(logits, ids, logp)
            if args.tv_weight > 0:
                loss = loss + args.tv_weight * sparse_tv(logits, ids, logp)
            if args.argmax_weight:
                loss = loss + args.argmax_weight * argmax_ce(logits, ids)
            return loss

        draft_phase = Phase("draft", args.draft_steps, batch, args.draft_lr)
        train(draft, draft_phase, draft_loss, heldout_ids, args.work_dir, args.seed + 1, device)
        export(draft, tok, args.out / "demo-draft")
    if args.phase == "agree" or (args.phase == "all" and args.agree_steps and args.teacher_rows):
        if args.phase == "agree":
            target, teacher_key = finished_target(target, phases[-1].name, args)
            draft = load_model(args.draft_from, torch.float32, device)
            written = written_rows(teacher_key, args.pool_from)
        else:
            written = rows[: args.teacher_rows]  # the fresh pool's, which comes first
        print(f"agreeing on {len(written):,} rows the target wrote")
        agree(target, draft, written, train_ids, heldout_ids, args)
        export(target, tok, args.out / "demo-target")


if __name__ == "__main__":
    main()
