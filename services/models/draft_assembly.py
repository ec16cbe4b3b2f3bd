"""Build a fetched target's draft folder from the draft's committed tensors and the target.

The real pair's draft (``tools/distill_draft.py``) shares the target's embedding table and
tokenizer, so the repository holds only what is the draft's own: ``config.json`` and
``draft.safetensors`` (its layers, final norm and reduced LM head, bf16, ~36 MB). ``assemble``
adds the target's ``model.embed_tokens.weight`` (cast to the draft's dtype) and tokenizer files
and writes a complete Hugging Face folder the engine loads like any other. Like the target's, the
folder is built beside its final place and renamed into it, with a marker naming the checksums
it was built from, so a changed draft or target is rebuilt and an interrupted one redone.
Non-goals: drafts that do not share the target's embedding; sharded targets.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from specdec.models.fetch import MARKER, sha256_of

DRAFT_WEIGHTS = "draft.safetensors"
EMBEDDING = "model.embed_tokens.weight"
TARGET_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def find_parts(relative: str) -> Path | None:
    """The committed draft folder ``relative`` (e.g. ``models/smollm2-draft``): under the
    working directory, else beside the installed package's source tree; None if neither."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        folder = root / relative
        if (folder / DRAFT_WEIGHTS).is_file():
            return folder
    return None


def _sources(target: Path, parts: Path) -> dict[str, str]:
    return {
        "draft_sha256": sha256_of(parts / DRAFT_WEIGHTS),
        "draft_config_sha256": sha256_of(parts / "config.json"),
        "target_marker": (target / MARKER).read_text() if (target / MARKER).is_file() else "",
    }


def is_current(out: Path, target: Path, parts: Path) -> bool:
    """Whether ``out`` was assembled from these very parts and target."""
    try:
        return json.loads((out / MARKER).read_text()) == _sources(target, parts)
    except (OSError, ValueError):
        return False


def assemble(target: Path, parts: Path, out: Path) -> Path:
    """``out``: the draft in ``parts`` with ``target``'s embedding and tokenizer, ready to load."""
    if is_current(out, target, parts):
        return out
    from safetensors import safe_open  # torch: only when building (``specdec up`` imports this)
    from safetensors.torch import load_file, save_file

    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    state = load_file(str(parts / DRAFT_WEIGHTS))
    dtype = next(t.dtype for name, t in state.items() if t.is_floating_point())
    with safe_open(str(target / "model.safetensors"), "pt") as weights:
        state[EMBEDDING] = weights.get_tensor(EMBEDDING).to(dtype).contiguous()  # [V, C]
    save_file(state, str(partial / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy2(parts / "config.json", partial / "config.json")
    for name in (*TARGET_FILES, "generation_config.json"):
        if (target / name).is_file():
            shutil.copy2(target / name, partial / name)
    (partial / MARKER).write_text(json.dumps(_sources(target, parts), indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out
