"""End to end: ``specdec up`` as a user runs it, then ``specdec generate`` against it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from specdec.engine.local import run_in_process
from specdec.router.redis_server import free_loopback_port

pytestmark = pytest.mark.e2e


def test_up_serves_generate_and_stops_cleanly_on_ctrl_c(model_dir: Path):
    addr = f"127.0.0.1:{free_loopback_port()}"
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "specdec.cli",
            "up",
            "--target",
            str(model_dir / "target"),
            "--draft",
            str(model_dir / "draft_close"),
            "--listen",
            addr,
            # A free port: a busy 8000 (the default) must not fail this test.
            "--http-listen",
            f"127.0.0.1:{free_loopback_port()}",
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # As from a terminal: a shell's background job (CI runners) inherits SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        lines = []
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            lines.append(line)
            if "specdec ready" in line or not line:
                break
        assert any("specdec ready" in ln for ln in lines), "".join(lines)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "specdec.cli",
                "generate",
                "--addr",
                addr,
                "--json",
                "--max-tokens",
                "16",
                "def add(a, b):",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        expected = run_in_process(
            str(model_dir / "target"), "def add(a, b):", max_tokens=16, device="cpu"
        )
        assert got["token_ids"] == expected["token_ids"]
        assert got["text"] == expected["text"]
        assert got["stats"]["rounds"] > 0
        children = _descendants(up.pid)
        assert len(children) == 4, children  # verifier, draft, router, redis-server
    finally:
        up.send_signal(signal.SIGINT)
        try:
            rest = up.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            exited = up.poll()
            up.kill()
            ps = subprocess.run(["ps", "-eo", "pid,ppid,stat,args"], capture_output=True, text=True)
            alive = [ln for ln in ps.stdout.splitlines() if "specdec" in ln or "redis" in ln]
            pytest.fail(f"up (exit code {exited}) did not stop within 60 s: " + "\n".join(alive))
    assert up.returncode == 0, rest
    assert "specdec stopped" in rest
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]


def _descendants(pid: int) -> list[int]:
    """The pids of every process below ``pid`` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for kid in (task / "children").read_text().split():
            found += [int(kid), *_descendants(int(kid))]
    return found
