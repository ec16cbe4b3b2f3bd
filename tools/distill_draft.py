"""Distil a draft for a pretrained target on this machine: the real pair's draft (SmolLM2-135M-
Instruct, fetched by ``specdec models fetch``), trained in about 1.5 hours on 2 CPU cores.

The draft is the target's own shape cut short: its embedding table (frozen, not stored with the
draft: ``specdec models fetch`` adds it back from the target), ``--layers`` of the target's
layers as the starting point of two trained ones, the final norm, and an LM head over only the
``--head-vocab`` most frequent tokens of the training text (FR-Spec, arXiv 2502.14856; rows
initialised from the target's tied embedding). It learns the target's next-token distribution
(top 32 and one bucket for the rest, plus the cross-entropy of its argmax) on text the target
wrote itself: continuations of code prompts (openings of functions and classes from the running
Python's standard library, the held-out files left out) and answers to chat prompts rendered
through the target's chat template; even rows greedy, odd rows sampled at temperature 0.8.
``--chat-parts`` N adds N - 1 more passes over the chat prompts, every answer sampled with a seed
of its own; ``--corpus-tokens`` adds windows of the standard library's own code (training files
only), which the target annotates in one forward each (no decoding: several times cheaper per
token than text it writes).

Phases, each cached in ``--work-dir`` so a run resumes where it stopped: ``data`` (prompts and
the target's continuations), ``teacher`` (its top-32 log-probabilities at every position),
``train`` (AdamW, checkpoints every few minutes), ``export`` (the draft's own tensors, bf16,
into ``--out``), ``eval`` (greedy acceptance per position for k = 1..8 on held-out code and chat
prompts, and the step-cost ratio; Markdown for the model card, JSON beside it).

    python tools/distill_draft.py --target ~/.cache/specdec/models/smollm2-135m-instruct
    python tools/distill_draft.py --target DIR --phase eval --draft DIR-draft

Non-goals: a general trainer; GPUs beyond "use CUDA when there"; other targets' chat formats
(any target with a chat template works, the prompts are English).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sys
import sysconfig
from dataclasses import replace
from pathlib import Path

import jinja2
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).parent))
from train_demo import Phase, continue_prompts, corpus_files, is_heldout, teacher_top, train

from specdec.core.model_config import HEAD_VOCAB_KEY
from specdec.engine.batch import Chunk
from specdec.engine.checkpoint import hf_config_dict, load_model
from specdec.engine.model import DecoderModel
from specdec.engine.proposer_feature import model_proposer
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.speculative import generate
from specdec.models.reduced_head import frequent_tokens

DRAFT_WEIGHTS = "draft.safetensors"  # the draft's tensors without the shared embedding
MAX_PROMPT = 192  # tokens of a prompt, the end kept
SUBJECTS = (
    "binary search", "a hash map", "recursion", "a linked list", "garbage collection",
    "HTTP caching", "a database index", "unit testing", "the GIL", "list comprehensions",
    "a REST API", "TCP and UDP", "photosynthesis", "compound interest", "the water cycle",
    "black holes", "inflation", "vaccines", "climate change", "the French Revolution",
    "machine learning", "a neural network", "public-key cryptography", "Docker containers",
    "Kubernetes pods", "git rebase", "regular expressions", "async and await", "decorators",
    "generators", "dynamic programming", "sorting algorithms", "memory leaks", "JSON",
    "the Pythagorean theorem", "prime numbers", "time zones", "unicode", "load balancing",
    "rate limiting", "the CAP theorem", "sleep", "habits", "negotiation", "public speaking",
)  # fmt: skip
TASKS = (
    "reverses a string", "checks whether a number is prime", "merges two sorted lists",
    "counts the words in a text", "flattens a nested list", "returns the n-th Fibonacci number",
    "removes duplicates from a list while keeping order", "parses a CSV line",
    "computes the factorial of n", "finds the largest element of a list",
    "converts Celsius to Fahrenheit", "checks whether a string is a palindrome",
    "groups words by their first letter", "reads a JSON file and returns a dict",
    "computes the average of a list of numbers", "validates an email address",
    "transposes a matrix", "sums the digits of an integer", "shuffles a deck of cards",
    "finds the common elements of two lists",
)  # fmt: skip
CHAT_FORMS = (
    "Explain {s} in simple terms.", "What is {s}? Answer in two sentences.",
    "Give me three facts about {s}.", "Why does {s} matter?",
    "Write a short paragraph about {s}.", "What are common mistakes with {s}?",
    "Write a Python function that {t}.", "How would I write code that {t}?",
    "Show me a function that {t}, with a docstring.",
)  # fmt: skip
# Half the subjects and tasks are held out for evaluation (by a hash, stable across machines).


def _held_out(text: str) -> bool:
    return int(hashlib.sha1(text.encode()).hexdigest(), 16) % 4 == 0


def chat_prompts(template: str, held_out: bool) -> list[str]:
    """Every chat form filled with every subject or task of one split, rendered for the model."""
    render = jinja2.Environment().from_string(template).render
    texts = []
    for form in CHAT_FORMS:
        fillers = TASKS if "{t}" in form else SUBJECTS
        for filler in fillers:
            if _held_out(filler) == held_out:
                message = form.format(s=filler, t=filler)
                messages = [{"role": "user", "content": message}]
                texts.append(render(messages=messages, add_generation_prompt=True))
    return texts


def code_prompts(n: int, held_out: bool, seed: int) -> list[str]:
    """Openings of functions and classes from the standard library: up to 30 lines before a
    ``def``/``class`` line, that line included (what a user asks a code model to continue)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    rng = random.Random(seed)
    files = [
        p for p in corpus_files(root) if is_heldout(p.relative_to(root).as_posix()) == held_out
    ]
    prompts: list[str] = []
    while len(prompts) < n and files:
        path = rng.choice(files)
        try:
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        except (UnicodeDecodeError, OSError):
            continue
        starts = [i for i, line in enumerate(lines) if line.lstrip().startswith(("def ", "class "))]
        if starts:
            i = rng.choice(starts)
            prompts.append("".join(lines[max(0, i - rng.randint(0, 30)) : i + 1]))
    return prompts


def encode(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [enc.ids[-MAX_PROMPT:] for enc in tok.encode_batch(texts)]


def build_data(
    target: DecoderModel, tok: Tokenizer, template: str, args: argparse.Namespace, part: int = 0
):
    """The target's continuations of training prompts, each cut at its first eos after the
    prompt. Part 0: ``--code-prompts`` code and ``--chat-prompts`` chat prompts, even rows greedy,
    odd rows sampled; each later part: the chat prompts again, every row sampled with its own
    seed (new answers, where greedy would only repeat part 0's).  # → list of token-id lists"""
    gen = torch.Generator().manual_seed(args.seed + part)
    chat = encode(tok, chat_prompts(template, False))
    prompts: list[list[int]] = []
    if part == 0:  # code once; a later part only resamples the chat answers
        prompts = encode(tok, code_prompts(args.code_prompts, False, args.seed))
    prompts += [chat[i % len(chat)] for i in range(args.chat_prompts)]
    eos = set(target.config.eos_token_ids)
    rows: list[list[int]] = []
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths batch
    greedy = "even" if part == 0 else "none"
    desc = f"target continuations (part {part})"
    for start in tqdm(range(0, len(order), args.gen_batch), desc=desc):
        batch = [prompts[i] for i in order[start : start + args.gen_batch]]
        lengths = [len(p) + args.new_tokens for p in batch]
        continued = continue_prompts(target, batch, lengths, gen, greedy)
        for prompt, seq in zip(batch, continued, strict=True):
            cut = next((j + 1 for j in range(len(prompt), len(seq)) if seq[j] in eos), len(seq))
            rows.append(seq[:cut])
    return rows


def code_corpus(tok: Tokenizer, tokens: int, seq_len: int, seed: int) -> list[list[int]]:
    """Windows of ``seq_len`` + 1 tokens of the standard library's training files (the held-out
    files left out), about ``tokens`` in all: real code for the teacher to annotate, far cheaper
    per token than text the target writes (one forward per window, no decoding)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in corpus_files(root) if not is_heldout(p.relative_to(root).as_posix())]
    random.Random(seed).shuffle(files)
    rows: list[list[int]] = []
    for path in files:
        if len(rows) * (seq_len + 1) >= tokens:
            break
        try:
            ids = tok.encode(path.read_text(encoding="utf-8")).ids
        except (UnicodeDecodeError, OSError):
            continue
        rows += [ids[i : i + seq_len + 1] for i in range(0, len(ids) - seq_len, seq_len + 1)]
    return rows[: max(1, tokens // (seq_len + 1))]


def padded(rows: list[list[int]], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows cut or padded (with 0) to ``length`` + 1 tokens, and which next-token positions
    count.  # → ids [N, length + 1] int64, mask [N, length] bool"""
    ids = torch.zeros(len(rows), length + 1, dtype=torch.int64)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, row in enumerate(rows):
        row = row[: length + 1]
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row) - 1] = True
    return ids, mask


def annotated(
    teacher: DecoderModel,
    rows: list[list[int]],
    seq_len: int,
    stem: Path,
    shard: int = 256,
    features: bool = False,
) -> dict[str, torch.Tensor]:
    """``rows`` padded to ``seq_len`` with the teacher's top-32 at every position, computed in
    shards of ``shard`` rows cached as ``<stem>-<i>.pt`` (a long run resumes by shard); with
    ``features``, also its final hidden state after the norm (``<stem>-feat-<i>.pt``, bf16), what
    a feature draft reads. # → ids [N, T + 1], mask [N, T], top_ids [N, T, 32],
    top_logp [N, T, 32] (, features [N, T, C])"""
    ids, mask = padded(rows, seq_len)
    parts, feats = [], []
    for i, start in enumerate(range(0, len(rows), shard)):
        path = stem.with_name(f"{stem.name}-{i:03d}.pt")
        if not path.exists():
            top_ids, top_logp = teacher_top(teacher, ids[start : start + shard], batch=8)
            torch.save({"top_ids": top_ids, "top_logp": top_logp}, path)
        parts.append(torch.load(path))
        feat_path = stem.with_name(f"{stem.name}-feat-{i:03d}.pt")
        if features and not feat_path.exists():
            torch.save(teacher_features(teacher, ids[start : start + shard]), feat_path)
        if features:
            feats.append(torch.load(feat_path))
    pool = {
        "ids": ids,
        "mask": mask,
        "top_ids": torch.cat([p["top_ids"] for p in parts]),
        "top_logp": torch.cat([p["top_logp"] for p in parts]),
    }
    if features:
        pool["features"] = torch.cat(feats)
    return pool


def teacher_features(teacher: DecoderModel, rows: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """The teacher's final hidden state (after its norm) at every position of ``rows``.
    # [N, T + 1] → [N, T, C] bf16"""
    out = []
    with torch.inference_mode():
        for chunk in tqdm(rows.split(batch), desc="teacher features", unit="batch"):
            out.append(teacher.hidden_dense(chunk[:, :-1]).to(torch.bfloat16))
    return torch.cat(out)


def training_pool(
    teacher: DecoderModel,
    tok: Tokenizer,
    template: str,
    args: argparse.Namespace,
    features: bool = False,
) -> tuple[list[list[int]], dict[str, torch.Tensor]]:
    """The rows the target wrote (built and annotated part by part, cached in
    ``args.work_dir``) and the whole annotated pool, the standard-library windows included."""
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    rows: list[list[int]] = []
    pools = []
    for part in range(args.chat_parts):
        rows_path = work / ("rows.json" if part == 0 else f"rows-{part}.json")
        if not rows_path.exists():
            rows_path.write_text(json.dumps(build_data(teacher, tok, template, args, part)))
        part_rows = json.loads(rows_path.read_text())
        rows += part_rows
        stem = work / rows_path.stem
        pools.append(annotated(teacher, part_rows, args.seq_len, stem, features=features))
    print(f"{len(rows)} rows the target wrote, {sum(map(len, rows)):,} tokens")
    if args.corpus_tokens:
        corpus = code_corpus(tok, args.corpus_tokens, args.seq_len, args.seed)
        tokens = len(corpus) * args.seq_len
        print(f"{len(corpus)} windows of standard-library code, {tokens:,} tokens")
        stem = work / "corpus"
        pools.append(annotated(teacher, corpus, args.seq_len, stem, features=features))
    return rows, {key: torch.cat([p[key] for p in pools]) for key in pools[0]}


def reduced_head(
    rows: list[list[int]], pool: dict[str, torch.Tensor], vocab: int, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``size`` most frequent tokens of ``rows`` (FR-Spec), and each vocabulary token's row
    in that head (-1: not in it).  # → head_ids [Vh], head_index [V]"""
    head_ids = torch.from_numpy(frequent_tokens(rows, vocab, size))
    covered = torch.zeros(vocab, dtype=torch.bool)
    covered[head_ids] = True
    share = covered[pool["ids"][:, 1:][pool["mask"]]].float().mean().item()
    print(f"head of {len(head_ids)} tokens covers {share:.1%} of the training tokens")
    head_index = torch.full((vocab,), -1, dtype=torch.int64)
    head_index[head_ids] = torch.arange(len(head_ids))
    return head_ids, head_index


def new_draft(target: DecoderModel, layers: list[int], head_ids: torch.Tensor) -> DecoderModel:
    """The target cut to ``layers`` with an LM head over ``head_ids``; embeddings frozen."""
    cfg = replace(
        target.config,
        num_hidden_layers=len(layers),
        tie_word_embeddings=False,
        head_vocab_size=len(head_ids),
    )
    draft = DecoderModel(cfg)
    state = {k: v for k, v in target.state_dict().items() if not k.startswith("model.layers.")}
    for new, old in enumerate(layers):
        prefix = f"model.layers.{old}."
        for k, v in target.state_dict().items():
            if k.startswith(prefix):
                state[f"model.layers.{new}." + k[len(prefix) :]] = v
    embed = target.model.embed_tokens.weight
    state["lm_head.weight"] = embed[head_ids].clone()  # [Vh, C]
    state["lm_head.token_ids"] = head_ids
    draft.load_state_dict(
        {k: v.float().clone() if v.is_floating_point() else v for k, v in state.items()}
    )
    draft.model.embed_tokens.weight.requires_grad_(False)
    return draft


def distil_loss(
    draft: DecoderModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    top_ids: torch.Tensor,
    top_logp: torch.Tensor,
    head_index: torch.Tensor,
) -> torch.Tensor:
    """``head_loss`` of the draft's logits on ``ids``.
    ids [B, T + 1], mask [B, T], top_ids/top_logp [B, T, K], head_index [V] (-1: not in head)."""
    logits = draft.lm_head(draft.hidden_dense(ids[:, :-1])).float()  # [B, T, Vh]
    return head_loss(logits, mask, top_ids, top_logp, head_index)


def head_loss(
    logits: torch.Tensor,
    mask: torch.Tensor,
    top_ids: torch.Tensor,
    top_logp: torch.Tensor,
    head_index: torch.Tensor,
) -> torch.Tensor:
    """KL(target || draft) over the target's top-K tokens inside the draft's head plus one
    bucket for the rest, plus the cross-entropy of the target's argmax where the head has it,
    per masked position. logits [B, T, Vh], mask [B, T], top_ids/top_logp [B, T, K]."""
    logq_head = torch.log_softmax(logits.float(), -1)
    index = head_index[top_ids.long()]  # [B, T, K]
    inside = index >= 0
    logq = logq_head.gather(-1, index.clamp(min=0))  # [B, T, K] (junk where not inside)
    logp = top_logp.float()
    p_in = logp.exp() * inside
    q_in = logq.exp() * inside
    p_rest = (1 - p_in.sum(-1)).clamp(min=1e-6)
    q_rest = (1 - q_in.sum(-1)).clamp(min=1e-6)
    kl = (p_in * (logp - logq)).sum(-1) + p_rest * (p_rest.log() - q_rest.log())  # [B, T]
    ce = -(logq[..., 0] * inside[..., 0])  # [B, T]
    weight = mask.float()
    return ((kl + ce) * weight).sum() / weight.sum()


def batch_loss(pool: dict, head_index: torch.Tensor, batch: int):  # -> BatchLoss
    """``distil_loss`` on ``batch`` random rows of the pool, for ``train_demo.train``."""

    def loss(draft: DecoderModel, gen: torch.Generator) -> torch.Tensor:
        pick = torch.randint(0, len(pool["ids"]), (batch,), generator=gen)
        rows = (pool[key][pick] for key in ("ids", "mask", "top_ids", "top_logp"))
        return distil_loss(draft, *rows, head_index)

    return loss


def export(draft: DecoderModel, out: Path) -> None:
    """The draft's tensors but the embedding (bf16) and its config.json into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous()
        for k, v in draft.state_dict().items()
        if k != "model.embed_tokens.weight"
    }
    save_file(state, str(out / DRAFT_WEIGHTS), metadata={"format": "pt"})
    config = hf_config_dict(draft.config)
    config[HEAD_VOCAB_KEY] = draft.config.head_vocab_size
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def evaluate(target_dir: Path, draft_dir: Path, tok: Tokenizer, template: str, args) -> dict:
    """Greedy acceptance per position (k = 1..8) on held-out prompts, and the step costs."""
    torch.set_num_threads(args.threads)
    target = ModelRunner(load_model(target_dir, torch.float32), num_slots=2, max_seq_len=1024)
    draft = ModelRunner(load_model(draft_dir, torch.bfloat16), num_slots=2, max_seq_len=1024)
    sets = {
        "code": encode(tok, code_prompts(args.eval_prompts, True, args.seed + 1)),
        "chat": encode(tok, chat_prompts(template, True))[: args.eval_prompts],
    }
    result: dict = {"prompts": {k: len(v) for k, v in sets.items()}}
    for name, prompts in sets.items():
        for k in (int(x) for x in args.eval_k.split(",")):
            accepted = rounds = 0
            proposed_at, accepted_at = [0] * k, [0] * k
            for ids in tqdm(prompts, desc=f"eval {name} k={k}", leave=False):
                run = generate(
                    target, ids, SamplingParams(), args.new_tokens, model_proposer(draft), k
                )
                accepted += run.stats.accepted_tokens
                rounds += max(1, run.stats.rounds - 1)
                for j in range(k):
                    proposed_at[j] += run.stats.proposed_per_position[j]
                    accepted_at[j] += run.stats.accepted_per_position[j]
            result[f"{name}_k{k}_accepted_per_round"] = accepted / rounds
            # P(position j accepted | proposed): what the model card's per-position table shows
            result[f"{name}_k{k}_acceptance_by_position"] = [
                a / p if p else None for a, p in zip(accepted_at, proposed_at, strict=True)
            ]
            print(f"{name} k={k}: {accepted / rounds:.2f} accepted per round", flush=True)
    for runner, key in ((target, "target_step_ms"), (draft, "draft_step_ms")):
        slot = runner.cache.allocate()
        runner.step([Chunk(slot, [1] * 128, 0, 1, runner.blank_features(128))])
        times = [runner.timed_step(slot, 128, 1) for _ in range(60)][10:]
        result[key] = statistics.median(times) * 1e3
    result["step_ratio"] = result["draft_step_ms"] / result["target_step_ms"]
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def start(args: argparse.Namespace) -> tuple[Tokenizer, str] | None:
    """Threads, the target's tokenizer and chat template; with ``--phase eval`` it evaluates
    ``--draft`` and returns None (nothing to train)."""
    torch.set_num_threads(args.threads)
    tok = Tokenizer.from_file(str(args.target / "tokenizer.json"))
    template = (args.target / "chat_template.jinja").read_text()
    if args.phase == "eval":
        evaluate(args.target, args.draft, tok, template, args)
        return None
    return tok, template


def parser(description: str) -> argparse.ArgumentParser:
    """The options of a distillation run (the feature-draft tool adds its own)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--target", type=Path, required=True, help="the target's HF folder")
    ap.add_argument("--work-dir", type=Path, default=Path("build/distill"))
    ap.add_argument("--out", type=Path, default=Path("models/smollm2-draft"))
    ap.add_argument("--draft", type=Path, help="an assembled draft folder (for --phase eval)")
    ap.add_argument("--phase", choices=("all", "eval"), default="all")
    ap.add_argument("--layers", default="0,29", help="target layers the draft starts from")
    ap.add_argument("--head-vocab", type=int, default=16384)
    ap.add_argument("--code-prompts", type=int, default=384)
    ap.add_argument("--chat-prompts", type=int, default=384)
    ap.add_argument(
        "--chat-parts", type=int, default=6, help="data parts: 1 + extra sampled chat answers"
    )
    ap.add_argument(
        "--corpus-tokens",
        type=int,
        default=600_000,
        help="standard-library code annotated by the target",
    )
    ap.add_argument("--eval-prompts", type=int, default=16)
    ap.add_argument("--eval-k", default="1,2,4,8", help="--phase eval: the depths measured")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--gen-batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=320)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="--phase eval: also write the figures here")
    return ap


def main() -> None:
    args = parser(__doc__.split("\n")[0]).parse_args()
    started = start(args)
    if started is None:
        return
    tok, template = started
    teacher = load_model(args.target, torch.bfloat16)
    rows, pool = training_pool(teacher, tok, template, args)
    head_ids, head_index = reduced_head(rows, pool, teacher.config.vocab_size, args.head_vocab)
    target32 = load_model(args.target, torch.float32)
    draft = new_draft(target32, [int(x) for x in args.layers.split(",")], head_ids)
    del target32
    phase = Phase("train", args.steps, args.batch, args.lr, weight_decay=0.0)
    loss = batch_loss(pool, head_index, args.batch)
    train(draft, phase, loss, None, args.work_dir, args.seed, str(draft.lm_head.weight.device))
    export(draft, args.out)
    print(f"draft tensors in {args.out}; `specdec models fetch` assembles the draft folder")


if __name__ == "__main__":
    main()
