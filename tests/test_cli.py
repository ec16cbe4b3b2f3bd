"""The ``specdec`` command line, run as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from specdec.core.tokenizer import Tokenizer
from specdec.engine.checkpoint import load_model
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.speculative import generate

pytestmark = pytest.mark.unit


def specdec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "specdec.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_generate_in_process_json_matches_library(model_dir: Path):
    target = str(model_dir / "target")
    out = specdec(
        "generate",
        "--in-process",
        "--target",
        target,
        "--draft",
        str(model_dir / "draft_close"),
        "--k",
        "3",
        "--max-tokens",
        "12",
        "--json",
        "def add(a, b):",
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    tokenizer = Tokenizer.from_folder(target)
    runner = ModelRunner(load_model(target), num_slots=1)
    expected = generate(runner, tokenizer.encode("def add(a, b):"), SamplingParams(), 12, None, 0)
    assert result["token_ids"] == expected.token_ids
    assert result["text"] == tokenizer.decode(expected.token_ids)
    for key in ("rounds", "draft_tokens", "accepted_tokens", "tokens_per_s"):
        assert key in result["stats"]
    assert result["stats"]["draft_tokens"] > 0


def test_generate_text_mode_prints_stats_line(model_dir: Path):
    out = specdec(
        "generate",
        "--in-process",
        "--target",
        str(model_dir / "target"),
        "--ngram",
        "--max-tokens",
        "5",
        "--temperature",
        "0.8",
        "--seed",
        "3",
        "x = 1",
    )
    assert out.returncode == 0, out.stderr
    assert "tok/s" in out.stderr and "rounds" in out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--k", "99"], "k: speculation depth"),
        (["--max-tokens", "0"], "max_tokens"),
        (["--temperature", "-2"], "temperature"),
    ],
)
def test_bad_flags_give_one_line_errors(model_dir: Path, args, message):
    out = specdec(
        "generate", "--in-process", "--target", str(model_dir / "target"), "--ngram", *args, "hello"
    )
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_model_folder_is_a_clear_error(tmp_path: Path):
    out = specdec("generate", "--in-process", "--target", str(tmp_path / "nope"), "hi")
    assert out.returncode == 2
    assert "nope" in out.stderr and "Traceback" not in out.stderr


def test_mismatched_tokenizers_are_refused(tmp_path: Path, model_dir: Path):
    import shutil

    from fixtures import save_tokenizer

    shutil.copytree(model_dir / "draft_close", tmp_path / "draft")
    save_tokenizer(tmp_path / "draft", vocab_size=300)
    out = specdec(
        "generate",
        "--in-process",
        "--target",
        str(model_dir / "target"),
        "--draft",
        str(tmp_path / "draft"),
        "hi",
    )
    assert out.returncode == 2
    assert "tokenizer differs" in out.stderr


def test_up_without_models_says_how_to_get_them(tmp_path: Path):
    out = specdec("up", "--target", str(tmp_path / "missing"), "--listen", "127.0.0.1:0")
    assert out.returncode == 2
    assert "missing" in out.stderr and "Traceback" not in out.stderr


def test_generate_without_a_router_is_a_clear_error():
    out = specdec("generate", "--addr", "127.0.0.1:1", "hello")
    assert out.returncode == 2
    assert "no router at 127.0.0.1:1" in out.stderr
