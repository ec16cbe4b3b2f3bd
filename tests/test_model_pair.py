"""The real pair's draft folder assembled from committed tensors plus the target, and the pair
``specdec up`` picks without --target: the real one when fetched, else the tiny one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from specdec.cli import main as cli_main
from specdec.engine.batch import Chunk
from specdec.engine.checkpoint import load_model
from specdec.engine.runner import ModelRunner
from specdec.models.draft_assembly import DRAFT_WEIGHTS, assemble, find_parts, is_current
from specdec.models.fetch import MARKER
from specdec.models.pair import TINY_DRAFT, TINY_TARGET, default_pair
from specdec.models.reduced_head import write_reduced_head
from tests.fixtures import save_random_model

pytestmark = pytest.mark.unit


@pytest.fixture
def target_and_parts(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A target, a reduced-head draft of it, and that draft's committed parts (no embedding)."""
    target = save_random_model(tmp_path / "target", tie_word_embeddings=True)
    (target / MARKER).write_text(json.dumps({"wheel_sha256": "x"}))
    whole = write_reduced_head(target, tmp_path / "whole", np.arange(1, 300, 3))
    parts = tmp_path / "parts"
    parts.mkdir()
    state = load_file(str(whole / "model.safetensors"))
    del state["model.embed_tokens.weight"]
    save_file(state, str(parts / DRAFT_WEIGHTS))
    (parts / "config.json").write_bytes((whole / "config.json").read_bytes())
    return target, whole, parts


def _logits(folder: Path) -> torch.Tensor:
    runner = ModelRunner(load_model(folder), num_slots=1)
    slot = runner.cache.allocate()
    return runner.step([Chunk(slot, [4, 9, 30, 7], 0, 4)])[0]


def test_the_assembled_draft_is_the_whole_draft(target_and_parts, tmp_path):
    target, whole, parts = target_and_parts
    out = assemble(target, parts, tmp_path / "draft")
    assert (out / "tokenizer.json").read_bytes() == (target / "tokenizer.json").read_bytes()
    assert _logits(out).equal(_logits(whole))
    assert is_current(out, target, parts)
    made = (out / "model.safetensors").stat().st_mtime_ns
    assert assemble(target, parts, out) == out  # reused, not rebuilt
    assert (out / "model.safetensors").stat().st_mtime_ns == made


def test_changed_parts_or_a_refetched_target_rebuild_the_draft(target_and_parts, tmp_path):
    target, _, parts = target_and_parts
    out = assemble(target, parts, tmp_path / "draft")
    (target / MARKER).write_text(json.dumps({"wheel_sha256": "y"}))
    assert not is_current(out, target, parts)
    assemble(target, parts, out)
    assert is_current(out, target, parts)
    (out / MARKER).unlink()  # an interrupted build: no marker
    assert not is_current(out, target, parts)


def test_committed_parts_are_found_under_the_working_directory(tmp_path, monkeypatch):
    folder = tmp_path / "models" / "some-draft"
    folder.mkdir(parents=True)
    assert find_parts("models/some-draft") is None or not str(
        find_parts("models/some-draft")
    ).startswith(str(tmp_path))
    (folder / DRAFT_WEIGHTS).write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert find_parts("models/some-draft") == tmp_path / "models" / "some-draft"


def test_without_a_fetched_target_up_serves_the_tiny_pair_and_says_why(tmp_path):
    pair = default_pair("real", tmp_path)
    assert (pair.target, pair.draft) == (TINY_TARGET, TINY_DRAFT)
    assert "not fetched" in pair.note and "make real-model" in pair.note
    assert default_pair("tiny", tmp_path) == default_pair("tiny")
    assert not default_pair("tiny").note


def test_up_refuses_a_draft_without_a_target(capsys):
    assert cli_main(["up", "--draft", "models/demo-draft"]) == 2
    assert "--draft needs --target" in capsys.readouterr().err


def test_bench_pair_flag_names_the_pairs_folders(tmp_path, monkeypatch):
    from specdec.bench.config import from_args
    from specdec.cli import build_parser
    from specdec.core.errors import SpecdecError

    args = build_parser().parse_args(["bench", "--pair", "tiny", "--quick"])
    cfg = from_args(args, ["bench"])
    assert (cfg.target, cfg.draft) == (str(TINY_TARGET), str(TINY_DRAFT))
    monkeypatch.setenv("SPECDEC_MODEL_CACHE", str(tmp_path))  # nothing fetched there
    args = build_parser().parse_args(["bench", "--pair", "real", "--quick"])
    with pytest.raises(SpecdecError, match="not fetched"):
        from_args(args, ["bench"])
