"""Measure the demo pair: held-out loss, greedy acceptance per position for k = 1..8, the share
of continuations that loop, sampled acceptance (counted, and expected from the rows), the
draft/target step cost, and sample continuations.

Prompts are the first lines of held-out files (the same hash split as ``train_demo.py``), and,
for a second measure at k = 4, stretches from inside them.
Prints a Markdown report (for ``models/README.md``) and writes the numbers as JSON.

    python tools/eval_demo.py --models models --json bench-out/demo-eval.json
    python tools/eval_demo.py --compare-drafts models/demo-draft OUT/demo-draft  # step costs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import sysconfig
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_demo import corpus_files, heldout_loss, is_heldout

from specdec.core.tokenizer import Tokenizer
from specdec.engine.batch import Chunk
from specdec.engine.checkpoint import load_model
from specdec.engine.draft_dtype import load_draft
from specdec.engine.local import DTYPES
from specdec.engine.model import DecoderModel
from specdec.engine.proposer_draft import DEFAULT_TOP_M, DEFAULT_TOP_MASS, DraftModelProposer
from specdec.engine.rejection import draft_dense_probs
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams, sparse_top, target_probs
from specdec.engine.speculative import generate

CONTINUATION = 64
SAMPLED_T = 0.8  # the temperature of the sampled acceptance and samples
INNER_LENGTH = 128  # tokens of a prompt taken from inside a file


def heldout_texts(root: Path) -> list[tuple[str, str]]:
    """(relative path, text) of the held-out files of the corpus under ``root``, as
    ``train_demo`` splits it, skipping files that are not UTF-8."""
    out = []
    for path in corpus_files(root):
        rel = path.relative_to(root).as_posix()
        if is_heldout(rel):
            try:
                out.append((rel, path.read_text(encoding="utf-8")))
            except (UnicodeDecodeError, OSError):
                continue
    return out


def prompts_from(texts: list[tuple[str, str]], n: int, lines: int) -> list[tuple[str, str]]:
    """The first ``lines`` lines of the first ``n`` held-out files that are long enough."""
    out = []
    for rel, text in texts:
        split = text.splitlines(keepends=True)
        if len(split) > lines + 8 and sum(len(s) for s in split[:lines]) > 80:
            out.append((rel, "".join(split[:lines])))
        if len(out) == n:
            break
    return out


def inner_prompts(files: list[list[int]], n: int, length: int) -> list[list[int]]:
    """``n`` prompts from inside files (token ids per file): the ``length`` tokens before points
    spread evenly over every place in a file that has ``length`` tokens before it and
    ``CONTINUATION`` after it. Openings are formulaic (imports, licence headers); these are the
    text a served model mostly continues."""
    places = [
        (i, at) for i, ids in enumerate(files) for at in range(length, len(ids) - CONTINUATION + 1)
    ]
    picks = [places[j * len(places) // n] for j in range(min(n, len(places)))]
    return [files[i][at - length : at] for i, at in picks]


def loops(token_ids: list[int], text: str) -> bool:
    """A continuation loops if its second half repeats with a short period, or a non-blank
    line appears three times or more."""
    tail = token_ids[len(token_ids) // 2 :]
    for period in range(1, 17):
        if len(tail) > 2 * period and all(
            tail[i] == tail[i - period] for i in range(period, len(tail))
        ):
            return True
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return any(lines.count(ln) >= 3 for ln in set(lines))


def step_cost_ratio(
    target: ModelRunner,
    draft: ModelRunner,
    threads: tuple[int, int],
    ctx: int = 128,
    depth: int = 4,
    rounds: int = 40,
) -> tuple[float, float]:
    """Median decode-step time of each model at context ``ctx``, timed as speculation runs them.

    Each round is one target step followed by ``depth`` draft steps, so the draft pays for what
    the target's step evicted from the CPU caches; a draft step's time is its round's mean.
    ``threads`` = (target's, draft's) torch threads, as ``specdec up`` runs the two services.
    """
    t_slot, d_slot = target.cache.allocate(), draft.cache.allocate()
    target.step([Chunk(t_slot, [1] * ctx, 0, 1)])
    draft.step([Chunk(d_slot, [1] * ctx, 0, 1)])
    t_times, d_times = [], []
    for _ in range(rounds):
        torch.set_num_threads(threads[0])
        t_times.append(target.timed_step(t_slot, ctx))
        torch.set_num_threads(threads[1])
        start = time.perf_counter()
        for i in range(depth):
            draft.step([Chunk(d_slot, [1], ctx + i, 1)])
        d_times.append((time.perf_counter() - start) / depth)
        draft.cache.rollback_to(d_slot, ctx)
    torch.set_num_threads(threads[0])
    target.cache.free(t_slot)
    draft.cache.free(d_slot)
    return statistics.median(t_times), statistics.median(d_times)


def step_ratios(
    target: ModelRunner, drafts: list[ModelRunner], threads: tuple[int, int], blocks: int = 6
) -> tuple[float, list[float]]:
    """The target's step time and each draft's step-cost ratio, as medians over ``blocks``
    ``step_cost_ratio`` measurements that take the drafts in turn: a VM's speed drifts by half
    within minutes, so one block can land in a slow spell that another does not.
    # → (target seconds, [draft / target per draft])"""
    t_all: list[float] = []
    ratios: list[list[float]] = [[] for _ in drafts]
    for _ in range(blocks):
        for draft, out in zip(drafts, ratios, strict=True):
            t_target, t_draft = step_cost_ratio(target, draft, threads)
            t_all.append(t_target)
            out.append(t_draft / t_target)
    return statistics.median(t_all), [statistics.median(r) for r in ratios]


def acceptance(
    target: ModelRunner,
    draft: ModelRunner,
    prompts: list[list[int]],
    params: SamplingParams,
    k: int,
    looping: list[bool] | None = None,
    refs: list[list[int]] | None = None,
) -> dict:
    """Speculative decoding at depth ``k`` on every prompt: accepted drafts per round (overall
    and, given ``looping``, on the prompts whose greedy continuation does not loop) and
    acceptance by position. With ``refs`` (target-only output), each output is checked equal."""
    acc, prop = [0] * k, [0] * k
    tokens = {"all": [0, 0], "non_looping": [0, 0]}  # [accepted drafts, rounds]
    for i, prompt in enumerate(prompts):
        res = generate(
            target, prompt, params, CONTINUATION, DraftModelProposer(draft), k, stop_token_ids=[]
        )
        if refs is not None:
            assert res.token_ids == refs[i], "speculative output differs from target-only"
        s = res.stats
        for j in range(k):
            acc[j] += s.accepted_per_position[j]
            prop[j] += s.proposed_per_position[j]
        for key in ("all",) + (() if looping is None or looping[i] else ("non_looping",)):
            tokens[key][0] += s.accepted_tokens
            tokens[key][1] += s.rounds - 1  # the prefill round decides the first token alone
    non_looping = tokens["non_looping"]
    return {
        "per_position": [a / p if p else 0.0 for a, p in zip(acc, prop, strict=True)],
        "accepted_per_round": tokens["all"][0] / tokens["all"][1],
        "accepted_per_round_non_looping": (
            non_looping[0] / non_looping[1] if non_looping[1] else None
        ),
    }


@torch.no_grad()
def sampled_overlap(
    target: DecoderModel,
    draft: DecoderModel,
    continuations: list[list[int]],
    starts: list[int],
    params: SamplingParams,
) -> float:
    """Mean of sum(min(p, q)) over the positions of the target's own sampled continuations.

    At a context, speculative sampling accepts the draft's token with probability
    sum(min(p, q)) (p: the target's warped row, q: the draft's row as it ships, cut by
    ``sparse_top``). Its output is distributed as the target's, so these contexts are the ones
    a first draft position meets: the mean is that position's expected acceptance, without the
    noise of the draws that accept or reject (one seed of ``acceptance`` has plenty of it).
    ``continuations[i]`` is a prompt and its continuation; ``starts[i]`` the prompt's length.
    """
    total, count = 0.0, 0
    for ids, start in zip(continuations, starts, strict=True):
        rows = torch.tensor([ids[:-1]])  # [1, T]
        p = target_probs(target.forward_dense(rows)[0, start - 1 :].float(), params)  # [C, V]
        warped = target_probs(draft.forward_dense(rows)[0, start - 1 :].float(), params)
        q = draft_dense_probs(*sparse_top(warped, DEFAULT_TOP_M, DEFAULT_TOP_MASS), p.shape[1])
        total += torch.minimum(p, q).sum().item()
        count += p.shape[0]
    return total / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--prompt-lines", type=int, default=12)
    ap.add_argument(
        "--inner-prompts",
        type=int,
        default=160,
        help=f"prompts of {INNER_LENGTH} tokens from inside held-out files, for a second, larger "
        "measure of greedy acceptance at k = 4 and of loops",
    )
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2, help="target's torch threads (default 2)")
    ap.add_argument(
        "--draft-threads", type=int, default=1, help="draft's torch threads (default 1, as up)"
    )
    ap.add_argument(
        "--draft-dtype",
        choices=["auto", *sorted(DTYPES)],
        default="auto",
        help="auto: the faster on this CPU, as up serves it",
    )
    ap.add_argument(
        "--compare-drafts",
        type=Path,
        nargs="+",
        metavar="DRAFT_DIR",
        help="only time these draft folders' steps against the target, in turn, and print the "
        "ratios (for choosing a draft's shape)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tdir, ddir = args.models / "demo-target", args.models / "demo-draft"
    target_model = load_model(tdir)

    def runner(folder: Path) -> ModelRunner:
        torch.set_num_threads(args.draft_threads)  # auto times the draft as it will run
        model = (
            load_draft(folder, "cpu")
            if args.draft_dtype == "auto"
            else load_model(folder, DTYPES[args.draft_dtype])
        )
        torch.set_num_threads(args.threads)
        return ModelRunner(model, num_slots=2, max_seq_len=1024)

    target = ModelRunner(target_model, num_slots=2, max_seq_len=1024)
    threads = (args.threads, args.draft_threads)
    if args.compare_drafts:
        drafts = [runner(folder) for folder in args.compare_drafts]
        t_target, ratios = step_ratios(target, drafts, threads)
        print(f"target step {t_target * 1e3:.2f} ms (median)")
        for folder, r, ratio in zip(args.compare_drafts, drafts, ratios, strict=True):
            print(f"{folder}: {r.model.lm_head.weight.dtype}, step ratio {ratio:.3f} (median)")
        return
    draft = runner(ddir)
    draft_model = draft.model
    tokenizer = Tokenizer.from_folder(tdir)
    texts = heldout_texts(Path(sysconfig.get_paths()["stdlib"]))
    prompts = prompts_from(texts, args.prompts, args.prompt_lines)
    result: dict = {
        "prompts": len(prompts),
        "heldout_files": len(texts),
        "threads": [args.threads, args.draft_threads],
        "draft_dtype": str(draft_model.lm_head.weight.dtype).removeprefix("torch."),
    }
    files = [tokenizer.encode(text) for _, text in texts]  # each held-out file's ids
    heldout = torch.tensor([t for ids in files for t in ids])  # [N]
    result["heldout_loss"] = {
        "target": heldout_loss(target_model, heldout, "cpu"),
        "draft": heldout_loss(draft_model, heldout, "cpu"),
    }
    greedy = SamplingParams()

    def continued(prompts_ids: list[list[int]]) -> tuple[list[list[int]], list[bool]]:
        """The target's greedy continuations, and which of them loop."""
        refs = [
            generate(target, ids, greedy, CONTINUATION, None, 0, stop_token_ids=[]).token_ids
            for ids in prompts_ids
        ]
        return refs, [loops(ids, tokenizer.decode(ids)) for ids in refs]

    encoded = [tokenizer.encode(prompt) for _, prompt in prompts]
    refs, looping = continued(encoded)
    result["loop_share"] = sum(looping) / len(looping)
    per_k = {}
    for k in range(1, 9):
        per_k[k] = acceptance(target, draft, encoded, greedy, k, looping, refs)
    result["per_k"] = per_k
    inner = inner_prompts(files, args.inner_prompts, INNER_LENGTH)
    inner_refs, inner_looping = continued(inner)
    result["inner"] = {
        "prompts": len(inner),
        "loop_share": sum(inner_looping) / len(inner_looping),
        "k4": acceptance(target, draft, inner, greedy, 4, inner_looping, inner_refs),
    }
    sampled = SamplingParams(temperature=SAMPLED_T, seed=0)
    result["sampled_k4"] = acceptance(target, draft, encoded, sampled, 4)
    sampled_refs = [
        generate(target, ids, sampled, CONTINUATION, None, 0, stop_token_ids=[]).token_ids
        for ids in encoded
    ]
    result["sampled_overlap"] = sampled_overlap(
        target_model,
        draft_model,
        [e + c for e, c in zip(encoded, sampled_refs, strict=True)],
        [len(e) for e in encoded],
        sampled,
    )
    t_target, (ratio,) = step_ratios(target, [draft], threads)
    result["step_ms"] = {"target": t_target * 1e3, "ratio": ratio}
    samples = []
    for (_, prompt), ids in zip(prompts[:2], encoded, strict=False):
        g = generate(target, ids, greedy, 96, None, 0).token_ids
        s = generate(target, ids, sampled, 96, None, 0).token_ids
        samples.append(
            {"prompt": prompt, "greedy": tokenizer.decode(g), "sampled": tokenizer.decode(s)}
        )
    result["samples"] = samples
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    print(report(result))


def _two(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def report(r: dict) -> str:
    step = r["step_ms"]  # the draft's time is the median ratio times the median target step
    lines = [
        f"held-out loss: target {r['heldout_loss']['target']:.3f}, "
        f"draft {r['heldout_loss']['draft']:.3f} (nats/token)",
        f"prompts: {r['prompts']} held-out files; continuations that loop: {r['loop_share']:.0%}",
        f"decode step (context 128; rounds of 1 target + 4 draft steps, medians of 6 blocks; "
        f"threads: target {r['threads'][0]}, draft {r['threads'][1]}; "
        f"draft in {r['draft_dtype']}): "
        f"target {step['target']:.2f} ms, draft {step['target'] * step['ratio']:.2f} ms, "
        f"ratio {step['ratio']:.3f}",
        "",
        "| k | accepted drafts / round | same, non-looping | acceptance by position |",
        "|---|---|---|---|",
    ]
    per_k = {**r["per_k"], f"4, sampled at T = {SAMPLED_T}": r["sampled_k4"]}
    for k, v in per_k.items():
        pos = " ".join(f"{p:.2f}" for p in v["per_position"])
        lines.append(
            f"| {k} | {v['accepted_per_round']:.2f} | "
            f"{_two(v['accepted_per_round_non_looping'])} | {pos} |"
        )
    inner, inner_k4 = r["inner"], r["inner"]["k4"]
    lines += [
        "",
        f"inside files ({inner['prompts']} prompts of {INNER_LENGTH} tokens from held-out files): "
        f"continuations that loop: {inner['loop_share']:.0%}; k = 4: "
        f"{inner_k4['accepted_per_round']:.2f} accepted drafts / round, "
        f"{_two(inner_k4['accepted_per_round_non_looping'])} non-looping, by position "
        + " ".join(f"{p:.2f}" for p in inner_k4["per_position"]),
        "",
        f"expected acceptance of a first draft token at T = {SAMPLED_T}, along the target's own "
        f"sampled continuations (mean of sum(min(p, q)); less noisy than the row above's first "
        f"position): {r['sampled_overlap']:.3f}",
    ]
    for s in r["samples"]:
        lines += [
            "",
            "Prompt:",
            "```python",
            s["prompt"].rstrip(),
            "```",
            "Greedy:",
            "```python",
            s["greedy"].rstrip(),
            "```",
            f"Temperature {SAMPLED_T}:",
            "```python",
            s["sampled"].rstrip(),
            "```",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
