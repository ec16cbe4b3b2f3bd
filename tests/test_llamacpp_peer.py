"""The llama.cpp bench peer: the skip path and its reason, the request/response shaping, the
server and conversion command lines, the report; and, when a llama-server binary and the demo
pair's GGUF files are there, a real smoke run compared token for token with the engine."""

from __future__ import annotations

import importlib.util
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import pytest

from specdec.bench import report
from specdec.bench.config import BenchConfig
from specdec.bench.llamacpp_peer import (
    LLAMA_TARGET,
    LLAMACPP,
    LlamaCppPeer,
    completion_body,
    find_server,
    gguf_path,
    llama_draft_name,
    parse_completion,
    server_argv,
    unavailable,
)
from specdec.bench.runner import _llamacpp

ROOT = Path(__file__).resolve().parent.parent
TARGET, DRAFT = ROOT / "models/demo-target", ROOT / "models/demo-draft"


def _convert_module():
    spec = importlib.util.spec_from_file_location("convert_gguf", ROOT / "tools/convert_gguf.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_skipped_without_a_server_with_a_reason(tmp_path: Path) -> None:
    missing = str(tmp_path / "llama-server")
    assert find_server(missing) is None
    gguf = gguf_path(str(tmp_path), "models/demo-target")
    reason = unavailable(None, missing, gguf, gguf)
    assert reason == f"llama.cpp peer skipped: --llama-server {missing}: no such file"
    reason = unavailable(None, None, gguf, gguf)
    assert reason is not None and "make peer-llamacpp" in reason and "\n" not in reason


def test_skipped_without_the_gguf_files(tmp_path: Path) -> None:
    binary = tmp_path / "llama-server"
    binary.write_text("")
    assert find_server(str(binary)) == str(binary)
    target = gguf_path(str(tmp_path), "models/demo-target")
    assert target == tmp_path / "demo-target-f32.gguf"
    reason = unavailable(str(binary), str(binary), target, target)
    assert (
        reason == f"llama.cpp peer skipped: {target} missing (make peer-llamacpp converts the pair)"
    )


def test_bench_records_the_skip_and_the_report_shows_it(tmp_path: Path) -> None:
    cfg = replace(BenchConfig(), llama_server=str(tmp_path / "none"), out=str(tmp_path))
    result: dict = {}
    with ExitStack() as stack:
        assert _llamacpp(cfg, result, stack) is None
    assert result["llamacpp"]["skipped"].startswith("llama.cpp peer skipped: --llama-server")
    assert result["llamacpp"]["skipped"] in report._llamacpp(result)
    assert _llamacpp(replace(cfg, llamacpp=False), {}, ExitStack()) is None


def test_quick_runs_no_peer_and_the_plots_know_its_kind() -> None:
    from specdec.bench.config import QUICK
    from specdec.bench.plots import COLORS

    assert QUICK["llamacpp"] is False
    assert LLAMACPP in COLORS


def test_request_is_greedy_on_token_ids_without_prompt_cache() -> None:
    body = completion_body((5, 17, 3), 64)
    assert body["prompt"] == [5, 17, 3]
    assert body["n_predict"] == 64
    assert body["temperature"] == 0.0 and body["top_k"] == 1
    assert body["cache_prompt"] is False and body["return_tokens"] is True
    assert body["stream"] is False


def test_response_gives_ids_and_timings() -> None:
    ids, timings = parse_completion(
        {"content": "x", "tokens": [4, 9], "timings": {"predicted_per_token_ms": 2.5}}
    )
    assert ids == [4, 9] and timings == {"predicted_per_token_ms": 2.5}
    with pytest.raises(ValueError, match="without token ids"):
        parse_completion({"content": "x"})


def test_server_command_lines() -> None:
    plain = server_argv("llama-server", Path("t.gguf"), 8080, 2, 1024)
    assert plain[:3] == ["llama-server", "-m", "t.gguf"]
    assert "-md" not in plain
    for flag, value in (("--port", "8080"), ("-t", "2"), ("-c", "1024"), ("-np", "1")):
        assert plain[plain.index(flag) + 1] == value
    spec = server_argv("llama-server", Path("t.gguf"), 8080, 2, 1024, Path("d.gguf"), 4)
    assert spec[spec.index("-md") + 1] == "d.gguf"
    assert spec[spec.index("--spec-type") + 1] == "draft-simple"
    assert spec[spec.index("--spec-draft-n-max") + 1] == "4"


def test_conversion_command(tmp_path: Path) -> None:
    convert = _convert_module()
    script = tmp_path / "convert_hf_to_gguf.py"
    argv = convert.converter_argv(script, "models/demo-draft", "build/gguf/demo-draft-f32.gguf")
    assert argv == [
        str(script),
        "models/demo-draft",
        "--outtype",
        "f32",
        "--outfile",
        "build/gguf/demo-draft-f32.gguf",
    ]
    with pytest.raises(SystemExit, match=r"convert_hf_to_gguf\.py: not found"):
        convert.convert(tmp_path, "models/demo-draft", str(tmp_path / "x.gguf"))


def test_report_shows_the_peer_settings() -> None:
    timing = {
        "runs": 2,
        "predicted_ms_per_token_median": 2.4,
        "prompt_ms_per_token_median": 0.1,
        "acceptance_rate": 0.8,
    }
    result = {
        "latency": {"llamacpp_draft_vs_target": 1.2},
        "llamacpp": {
            "version": "version: 1 (abc)",
            "dtype": "float32",
            "threads": 2,
            "spec_type": "draft-simple",
            "k": 4,
            "timings": {LLAMA_TARGET: timing},
        },
    }
    text = "\n".join(report._llamacpp(result))
    assert "--spec-draft-n-max 4" in text and "1.20×" in text
    assert f"| {LLAMA_TARGET} | 2.40 | 0.100 | 0.80 |" in text


GGUF = ROOT / "build/gguf"
SERVER = find_server()


@pytest.mark.skipif(
    SERVER is None or not (GGUF / "demo-target-f32.gguf").is_file(),
    reason="no llama-server or no GGUF files (make peer-llamacpp)",
)
def test_real_llama_server_matches_the_engine(tmp_path: Path) -> None:
    from specdec.bench.systems import InProcess

    assert SERVER is not None
    prompt = list(range(40, 72))
    engine = InProcess(str(TARGET), str(DRAFT), 256)
    reference = engine.systems([], 32)[0].run(prompt, "ref").token_ids
    peer = LlamaCppPeer(
        SERVER,
        gguf_path(str(GGUF), str(TARGET)),
        gguf_path(str(GGUF), str(DRAFT)),
        4,
        256,
        tmp_path,
    )
    try:
        systems = peer.systems(32)
        assert [s.name for s in systems] == [LLAMA_TARGET, llama_draft_name(4)]
        assert {s.kind for s in systems} == {LLAMACPP}
        for system in systems:
            run = system.run(prompt, "lat/x")
            assert run.token_ids == reference, system.name
            assert run.elapsed_s > 0
        settings = peer.settings()
        assert settings["version"].startswith("version")
        assert settings["timings"][llama_draft_name(4)]["draft_tokens"] > 0
    finally:
        peer.close()
    assert all(s.proc.poll() is not None for s in peer.servers.values())
