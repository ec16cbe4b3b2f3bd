"""Faults on purpose against a real ``specdec up``: kill -9 its draft, its verifier, its Redis and
itself, under concurrent greedy clients, and see who notices.

One ``specdec up`` (tiny models, loopback) serves the module; the last test kills ``up`` itself.
Promises checked: a dead draft costs no request and changes no output (k = 0 meanwhile), and
drafting resumes by itself; a dead verifier fails requests only with UNAVAILABLE and a retry
hint, and serving resumes by itself; a dead Redis is restarted and reported, requests go on; a
dead ``up`` leaves no child running. Each is back (SERVING, says ``up``) within ``RESTART_S`` of
its kill, and the router uses it again within ``REUSE_S`` of that.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis

from specdec.serving import run_folders
from specdec.serving.errors import retry_after_s
from specdec.supervisor import GiveUp, Supervisor
from specdec.v1 import generation_pb2, generation_pb2_grpc
from tests.fixtures import UpConsole, run_up

pytestmark = pytest.mark.e2e

# A restart is a new Python process importing torch: measured 2-5 s on an idle 2-CPU machine,
# up to 17 s with five other test processes on it.
RESTART_S = 60.0
# The router drafts / serves again this soon after the replica is back (it asks the replica's
# health every 0.25 s; channels reconnect within 1 s); measured 0.3-2 s, one request included.
REUSE_S = 10.0
PROMPTS = ["def add(a, b):", "for i in range(10):", "class Point:", "import os\n"]
MAX_TOKENS = 40
CLIENTS = 8


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid``."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            found += [kid, *_children(kid)]
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for a parent (or init) to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _role(pid: int) -> str | None:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if any(b"redis-server" in a for a in args):  # it rewrites its title: "redis-server unix..."
        return "redis"
    if b"serve" in args:
        return args[args.index(b"serve") + 1].decode()
    return None


class Up(UpConsole):
    """``specdec up`` with the roles of its children at hand."""

    def pids(self) -> dict[str, int]:
        """Role -> pid of the running children (draft, verifier, router, redis)."""
        roles = {pid: _role(pid) for pid in _children(self.process.pid) if _running(pid)}
        return {role: pid for pid, role in roles.items() if role}

    def redis_url(self) -> str:
        """The embedded Redis's URL, as the router was told it."""
        args = Path(f"/proc/{self.pids()['router']}/cmdline").read_bytes().split(b"\0")
        return args[args.index(b"--redis-url") + 1].decode()

    def kill(self, role: str) -> int:
        pid = self.pids()[role]
        os.kill(pid, signal.SIGKILL)
        return pid


@pytest.fixture(scope="module")
def up(model_dir: Path) -> Iterator[Up]:
    yield from run_up(model_dir, Up)


@dataclass
class Result:
    prompt: str
    tokens: list[int]
    stats: generation_pb2.GenerationStats


def generate(stub: generation_pb2_grpc.GenerationStub, prompt: str, **fields: object) -> Result:
    tokens: list[int] = []
    stats = generation_pb2.GenerationStats()
    request = generation_pb2.GenerateRequest(prompt_text=prompt, max_tokens=MAX_TOKENS, **fields)
    for response in stub.Generate(request, timeout=60):
        tokens += response.token_ids
        if response.HasField("stats"):
            stats = response.stats
    return Result(prompt, tokens, stats)


@dataclass
class Load:
    """``clients`` threads sending greedy requests in a loop until stopped."""

    stub: generation_pb2_grpc.GenerationStub
    clients: int
    results: list[Result] = field(default_factory=list)
    errors: list[grpc.RpcError] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for i in range(self.clients):
            self.threads.append(threading.Thread(target=self._client, args=(i,), daemon=True))
            self.threads[-1].start()
        return self

    def _client(self, i: int) -> None:
        n = i
        while not self.stop.is_set():
            prompt = PROMPTS[n % len(PROMPTS)]
            n += 1
            try:
                self.results.append(generate(self.stub, prompt))
            except grpc.RpcError as exc:
                self.errors.append(exc)
                time.sleep(retry_after_s(exc) or 0.05)  # as a well-behaved client would

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=90)


@pytest.fixture(scope="module")
def stub(up: Up) -> Iterator[generation_pb2_grpc.GenerationStub]:
    with grpc.insecure_channel(up.address) as channel:
        yield generation_pb2_grpc.GenerationStub(channel)


@pytest.fixture(scope="module")
def clean(stub: generation_pb2_grpc.GenerationStub) -> dict[str, list[int]]:
    """Each prompt's greedy output before any fault (drafted: the draft is up)."""
    results = [generate(stub, prompt) for prompt in PROMPTS]
    assert all(r.stats.draft_tokens > 0 for r in results)
    return {r.prompt: r.tokens for r in results}


def wait_for(check: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until ``check()`` held (polled); fails after ``timeout_s``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if check():
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s")


def test_draft_killed_under_load_fails_nothing_and_drafting_resumes(up, stub, clean):
    with Load(stub, CLIENTS) as load:
        wait_for(lambda: len(load.results) >= CLIENTS, 30)
        old = up.kill("draft")
        killed = time.monotonic()
        up.wait_line("specdec: the draft exited (signal 9); restarting in 0.5 s (restart 1)", 10)
        up.wait_line("specdec: the draft is back", RESTART_S)
        back_s = time.monotonic() - killed
        reuse_s = wait_for(lambda: generate(stub, PROMPTS[0]).stats.draft_tokens > 0, REUSE_S)
        done_before = len(load.results)
        wait_for(lambda: len(load.results) >= done_before + CLIENTS, 30)
    assert load.errors == [], [e.details() for e in load.errors]
    assert all(r.tokens == clean[r.prompt] for r in load.results)
    assert any(r.stats.draft_fallback or r.stats.draft_tokens == 0 for r in load.results)
    assert up.pids()["draft"] != old
    print(f"the draft back {back_s:.1f} s after its kill, drafting again {reuse_s:.1f} s later")


def test_verifier_killed_fails_only_unavailable_with_a_hint_and_serving_resumes(up, stub, clean):
    with Load(stub, CLIENTS // 2) as load:
        wait_for(lambda: len(load.results) >= CLIENTS // 2, 30)
        up.kill("verifier")
        killed = time.monotonic()
        up.wait_line("specdec: the verifier exited (signal 9); restarting", 10)
        up.wait_line("specdec: the verifier is back", RESTART_S)
        back_s = time.monotonic() - killed

        def serves() -> bool:
            try:
                return generate(stub, PROMPTS[1]).tokens == clean[PROMPTS[1]]
            except grpc.RpcError:
                return False

        reuse_s = wait_for(serves, REUSE_S)
    assert load.errors, "the kill failed no request: it missed the load"
    for error in load.errors:
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        assert retry_after_s(error) is not None, error.details()
    assert all(r.tokens == clean[r.prompt] for r in load.results)
    print(
        f"the verifier back {back_s:.1f} s after its kill, serving again {reuse_s:.1f} s later; "
        f"{len(load.errors)} UNAVAILABLE meanwhile"
    )


def test_redis_killed_is_restarted_and_reported_and_requests_go_on(up, stub, clean):
    url = up.redis_url()
    with Load(stub, 2) as load:
        old = up.kill("redis")
        up.wait_line("specdec: the redis exited (signal 9); restarting in 0.5 s (restart 1)", 10)
        up.wait_line("specdec: the redis is back", RESTART_S)
        assert up.pids()["redis"] != old
        client = redis.Redis.from_url(url)
        try:
            assert client.dbsize() == 0  # a fresh, empty server at the same address

            def remembered() -> bool:
                generate(stub, PROMPTS[2], session_id="after-restart")
                return client.dbsize() > 0

            wait_for(remembered, REUSE_S)
        finally:
            client.close()
        wait_for(lambda: len(load.results) >= 4, 30)
    assert load.errors == [], [e.details() for e in load.errors]
    assert all(r.tokens == clean[r.prompt] for r in load.results)


def test_router_killed_is_restarted_on_the_same_address(up, stub, clean):
    up.kill("router")
    killed = time.monotonic()
    up.wait_line("specdec: the router exited (signal 9); restarting in 0.5 s (restart 1)", 10)
    up.wait_line("specdec: the router is back", RESTART_S)
    back_s = time.monotonic() - killed

    def serves() -> bool:
        try:
            return generate(stub, PROMPTS[3]).tokens == clean[PROMPTS[3]]
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
            return False

    reuse_s = wait_for(serves, REUSE_S)
    print(f"the router back {back_s:.1f} s after its kill, serving {reuse_s:.1f} s later")


def test_kill_9_of_up_leaves_no_child_running(up):
    children = up.pids()
    assert set(children) == {"draft", "verifier", "router", "redis"}
    left = _temp_folders(children["router"])  # Redis's and the certificates': up won't delete them
    assert left
    up.process.kill()
    up.process.wait()
    wait_for(lambda: not any(_running(pid) for pid in children.values()), 5)
    assert set(run_folders.sweep()) >= left  # what the next `specdec up` does first
    assert not any(folder.exists() for folder in left)


def _temp_folders(pid: int) -> set[Path]:
    """The temporary folders ``up`` made that a child's arguments name (sockets, certificates)."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    paths = [Path(a.removeprefix("unix://")) for a in args]
    tmp = Path(tempfile.gettempdir())
    return {
        p.parent for p in paths if p.parent.parent == tmp and p.parent.name.startswith("specdec-")
    }


def test_supervisor_backs_off_then_gives_up_on_a_child_that_keeps_dying():
    said: list[str] = []
    procs = [subprocess.Popen(["false"])]
    supervisor = Supervisor(said.append, first_delay_s=0.01, max_delay_s=0.04, max_rapid=3)
    supervisor.watch(
        "draft",
        lambda: procs[-1].poll(),
        lambda: procs.append(subprocess.Popen(["false"])),
        ready=lambda: False,
    )
    with pytest.raises(GiveUp, match="the draft exited \\(code 1\\) 4 times in a row"):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            supervisor.check()
            time.sleep(0.005)
    assert said == [
        "specdec: the draft exited (code 1); restarting in 0.01 s (restart 1)",
        "specdec: the draft exited (code 1); restarting in 0.02 s (restart 2)",
        "specdec: the draft exited (code 1); restarting in 0.04 s (restart 3)",
    ]


def test_supervisor_says_when_a_restarted_child_is_back():
    said: list[str] = []
    procs = [subprocess.Popen(["false"])]
    supervisor = Supervisor(said.append, first_delay_s=0.01)
    supervisor.watch(
        "verifier",
        lambda: procs[-1].poll(),
        lambda: procs.append(subprocess.Popen(["sleep", "30"])),
        ready=lambda: len(procs) == 2,
    )
    try:
        wait_for(lambda: supervisor.check() or len(said) == 2, 5)
    finally:
        procs[-1].kill()
        procs[-1].wait()
    assert said[0] == "specdec: the verifier exited (code 1); restarting in 0.01 s (restart 1)"
    assert said[1].startswith("specdec: the verifier is back, ")
