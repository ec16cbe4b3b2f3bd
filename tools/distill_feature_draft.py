"""Train a feature draft for a pretrained target (EAGLE, arXiv 2401.15077): decoder layers that
read the target's final hidden state beside each token (``specdec.engine.feature_draft``).

The data is ``distill_draft.py``'s, cached in the same ``--work-dir`` (text the target wrote for
code and chat prompts, standard-library code it annotated, its top-32 at every position), plus
the target's hidden state at every position (``<part>-feat-<i>.pt``, bf16, about 1.2 KB per
token). ``--start-from`` a trained token draft of the target's width (the real pair's): the
feature draft starts out as that draft (``fc`` ignores the feature at first) and learns to read
the feature on top of what it knows. Without it, one layer starts from the target's last layer,
its final norm and the rows of its tied embedding for a ``--head-vocab`` head (FR-Spec), which
on this CPU learns far too slowly (0.42 accepted per round at k = 4 on code after 268 steps).

The loss per position: the head's KL to the target's top 32 plus the cross-entropy of its
argmax (``distill_draft.head_loss``); ``--reg-weight`` adds EAGLE-1's smooth-L1 distance of the
output to the target's feature (off: it pulls a warm-started draft's output away from what its
head reads; EAGLE-3 drops it too). Inputs carry Gaussian noise (``--noise``), and with
``--unroll`` 2 a second pass feeds the draft its own outputs as the features (what it reads
from its second draft token on), its loss added (EAGLE-3's training-time test, in its simplest
form): drafting past the first token reads predictions, not the target's features.

    python tools/distill_feature_draft.py --target ~/.cache/specdec/models/smollm2-135m-instruct \
        --start-from ~/.cache/specdec/models/smollm2-135m-instruct-draft --work-dir build/distill2
    python tools/distill_feature_draft.py --target DIR --phase eval --draft DIR-draft

Non-goals: trees of drafts, several of the target's layers as features (EAGLE-3), a general
trainer.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from distill_draft import (
    export,
    head_loss,
    parser,
    reduced_head,
    start,
    training_pool,
)
from train_demo import Phase, train

from specdec.core.model_config import ModelConfig
from specdec.engine.checkpoint import load_model
from specdec.engine.feature_draft import FeatureDraft, shifted
from specdec.engine.model import DecoderModel

RESIDUAL_INIT = 0.1  # the starting layer's output projections, scaled


def new_feature_draft(target: DecoderModel, layer: int, head_ids: torch.Tensor) -> FeatureDraft:
    """One layer, initialised from the target's ``layer``, and its final norm; ``fc`` starts
    by passing the feature through; the head is the target's embedding rows of ``head_ids``;
    embedding frozen."""
    cfg = replace(
        target.config,
        num_hidden_layers=1,
        tie_word_embeddings=False,
        head_vocab_size=len(head_ids),
        feature_draft=True,
    )
    source = target.state_dict()
    state = {
        k: v for k, v in source.items() if k in ("model.embed_tokens.weight", "model.norm.weight")
    }
    prefix = f"model.layers.{layer}."
    for k, v in source.items():
        if k.startswith(prefix):
            state["model.layers.0." + k[len(prefix) :]] = v
    c = cfg.hidden_size
    # At first the draft passes the feature through (the target's own previous distribution)
    # and its layer only nudges it: the target layer's residual branches are scaled down, as it
    # was made for the target's far larger stream.
    state["model.fc.weight"] = torch.cat([torch.zeros(c, c), torch.eye(c)], dim=1)  # [C, 2C]
    state["model.fc.bias"] = torch.zeros(c)
    for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
        state[f"model.layers.0.{name}"] = state[f"model.layers.0.{name}"] * RESIDUAL_INIT
    state["lm_head.weight"] = source["model.embed_tokens.weight"][head_ids].clone()  # [Vh, C]
    state["lm_head.token_ids"] = head_ids
    return _built(cfg, state)


def feature_draft_from(draft: DecoderModel) -> FeatureDraft:
    """A token draft of the target's width turned into a feature draft that starts out as it:
    ``fc`` = [I, 0] passes the embedding through and ignores the feature until training
    teaches it to read it. Its layers, norm and (reduced) head are kept."""
    cfg = replace(draft.config, feature_draft=True)
    c = cfg.hidden_size
    state = dict(draft.state_dict())
    state["model.fc.weight"] = torch.cat([torch.eye(c), torch.zeros(c, c)], dim=1)  # [C, 2C]
    state["model.fc.bias"] = torch.zeros(c)
    return _built(cfg, state)


def _built(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> FeatureDraft:
    """The draft with ``state`` in fp32 (fresh tensors: training must not write into the
    source's), its embedding frozen."""
    fd = FeatureDraft(cfg)
    fd.load_state_dict(
        {k: v.float().clone() if v.is_floating_point() else v.clone() for k, v in state.items()}
    )
    fd.model.embed_tokens.weight.requires_grad_(False)
    return fd


def feature_loss(
    draft: FeatureDraft,
    pool_rows: dict[str, torch.Tensor],
    head_index: torch.Tensor,
    noise: float,
    unroll: int,
    gen: torch.Generator,
    reg_weight: float = 0.0,
) -> torch.Tensor:
    """Head loss plus feature regression, summed over ``unroll`` passes (pass 2 on reads the
    previous pass's outputs as features).  # rows: ids [B, T + 1], mask [B, T],
    top_ids/top_logp [B, T, 32], features [B, T, C]"""
    ids, mask = pool_rows["ids"][:, :-1], pool_rows["mask"]
    target = pool_rows["features"].float()  # [B, T, C]: f_j at j
    inputs = shifted(target)
    total = torch.zeros(())
    weight = mask.float()[..., None]  # [B, T, 1]
    for _ in range(unroll):
        noisy = inputs + noise * torch.randn(inputs.shape, generator=gen)
        out = draft.features_dense(ids, noisy)  # [B, T, C]: predicts f_j
        logits = draft.lm_head(out)  # [B, T, Vh]
        total = total + head_loss(
            logits, mask, pool_rows["top_ids"], pool_rows["top_logp"], head_index
        )
        if reg_weight:
            reg = F.smooth_l1_loss(out, target, reduction="none").mean(-1, keepdim=True)
            total = total + reg_weight * (reg * weight).sum() / weight.sum()  # reg [B, T, 1]
        inputs = shifted(out)
    return total / unroll


def main() -> None:
    ap = parser(__doc__.split("\n")[0])
    ap.set_defaults(out=Path("build/feature-draft"), steps=700, lr=3e-4)
    ap.add_argument("--layer", type=int, default=-1, help="target layer the draft starts from")
    ap.add_argument(
        "--start-from", type=Path, help="a token draft folder (assembled) to start from instead"
    )
    ap.add_argument("--noise", type=float, default=0.2, help="std of the input features' noise")
    ap.add_argument("--unroll", type=int, default=2, help="passes per batch (2: own features)")
    ap.add_argument(
        "--reg-weight", type=float, default=0.0, help="weight of the feature regression"
    )
    args = ap.parse_args()
    started = start(args)
    if started is None:
        return
    tok, template = started
    teacher = load_model(args.target, torch.bfloat16)
    rows, pool = training_pool(teacher, tok, template, args, features=True)
    vocab = teacher.config.vocab_size
    del teacher
    if args.start_from:  # a token draft: its layers, norm and head (the head ids with it)
        draft = feature_draft_from(load_model(args.start_from, torch.float32))
        head_ids = cast(torch.Tensor, draft.head_token_ids)
    else:
        head_ids, _ = reduced_head(rows, pool, vocab, args.head_vocab)
        target32 = load_model(args.target, torch.float32)
        layer = args.layer % target32.config.num_hidden_layers
        draft = new_feature_draft(target32, layer, head_ids)
        del target32
    head_index = torch.full((vocab,), -1, dtype=torch.int64)  # each token's head row, or -1
    head_index[head_ids] = torch.arange(len(head_ids))

    def loss(model: DecoderModel, gen: torch.Generator) -> torch.Tensor:
        pick = torch.randint(0, len(pool["ids"]), (args.batch,), generator=gen)
        batch = {key: value[pick] for key, value in pool.items()}
        assert isinstance(model, FeatureDraft)
        return feature_loss(model, batch, head_index, args.noise, args.unroll, gen, args.reg_weight)

    phase = Phase("feature-train", args.steps, args.batch, args.lr, weight_decay=0.0)
    train(draft, phase, loss, None, args.work_dir, args.seed, "cpu")
    export(draft, args.out)
    print(f"draft tensors in {args.out}; `specdec models fetch` assembles the draft folder")


if __name__ == "__main__":
    main()
