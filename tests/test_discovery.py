"""Kubernetes discovery against a fake API server on loopback, through the real ``kubernetes``
client: list then watch, event handling, 410 relists, resumed watches, backoff, stop, and a
``ReplicaPool`` following the watch on an asyncio loop."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from kubernetes import client, watch

from specdec.router.discovery import (
    SERVICE_NAME_LABEL,
    Backoff,
    EndpointSliceWatcher,
    ready_addresses,
)
from specdec.router.replicas import ReplicaPool
from specdec.v1 import verifier_pb2_grpc

pytestmark = pytest.mark.service

NAMESPACE = "ns"
SERVICE = "verifier"
SLICES_PATH = f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"
TINY_BACKOFF = Backoff(initial_s=0.01, max_s=0.05)


def endpoint(ip: str, **conditions: bool | None) -> dict[str, Any]:
    """One endpoint; ``conditions`` as in the API (omit for none at all)."""
    out: dict[str, Any] = {"addresses": [ip]}
    if conditions:
        out["conditions"] = {k: v for k, v in conditions.items() if v is not None}
    return out


def endpoint_slice(
    name: str,
    endpoints: list[dict[str, Any]],
    ports: list[dict[str, Any]] | None = None,
    service: str = SERVICE,
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {SERVICE_NAME_LABEL: service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "grpc", "port": 50052, "protocol": "TCP"}] if ports is None else ports,
    }


def status(code: int, reason: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": reason,
            "reason": reason, "code": code}  # fmt: skip


class FakeApiServer:
    """Enough of the Kubernetes API for EndpointSlice list and watch, served on loopback.

    Every change gets the next resourceVersion and is kept as an event, so a watch from any
    version replays what followed it, like the real server, until ``compact`` drops history."""

    def __init__(self, port: int = 0) -> None:
        self.cond = threading.Condition()
        self.rv = 100
        self.slices: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.compacted_rv = 0  # a watch from an older version gets 410 Gone
        self.generation = 0  # bumped to end the open watches
        self.gone_event = False  # ...with an ERROR 410 event rather than a plain end
        self.failures: list[int] = []  # statuses for the next requests
        self.requests: list[tuple[str, dict[str, str]]] = []  # ("list" | "watch", query)
        self.closed = False
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    # What the tests change.

    def put(self, obj: dict[str, Any], silently: bool = False) -> None:
        with self.cond:
            self.rv += 1
            obj = json.loads(json.dumps(obj))
            obj["metadata"]["resourceVersion"] = str(self.rv)
            kind = "MODIFIED" if obj["metadata"]["name"] in self.slices else "ADDED"
            self.slices[obj["metadata"]["name"]] = obj
            if not silently:
                self.events.append((self.rv, kind, obj))
            self.cond.notify_all()

    def delete(self, name: str) -> None:
        with self.cond:
            self.rv += 1
            obj = self.slices.pop(name)
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self.events.append((self.rv, "DELETED", obj))
            self.cond.notify_all()

    def end_watches(self, gone: bool = False) -> None:
        with self.cond:
            self.generation += 1
            self.gone_event = gone
            self.cond.notify_all()

    def compact(self, gone_event: bool) -> None:
        """Forget history up to now: open watches end (with an ERROR 410 event, or plainly so
        that resuming them gets HTTP 410)."""
        with self.cond:
            self.compacted_rv = self.rv
        self.end_watches(gone=gone_event)

    def fail(self, times: int, code: int = 500) -> None:
        with self.cond:
            self.failures.extend([code] * times)

    def count(self, kind: str) -> int:
        with self.cond:
            return sum(1 for k, _ in self.requests if k == kind)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    # Serving.

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # watches stream chunked, like the real server

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path != SLICES_PATH:
                    return self._json(404, status(404, "NotFound"))
                watching = query.get("watch") in ("true", "1", "True")
                with api.cond:
                    api.requests.append(("watch" if watching else "list", query))
                    code = api.failures.pop(0) if api.failures else 0
                if code:
                    return self._json(code, status(code, HTTPStatus(code).phrase))
                selector = query.get("labelSelector", "")
                if watching:
                    return self._watch(int(query.get("resourceVersion", "0")), selector)
                return self._list(selector)

            def _json(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _list(self, selector: str) -> None:
                with api.cond:
                    items = [s for s in api.slices.values() if _selected(s, selector)]
                    rv = str(api.rv)
                self._json(200, {"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
                                 "metadata": {"resourceVersion": rv}, "items": items})  # fmt: skip

            def _watch(self, since_rv: int, selector: str) -> None:
                with api.cond:
                    expired = since_rv < api.compacted_rv
                    generation = api.generation
                if expired:
                    return self._json(410, status(410, "Expired"))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                sent = since_rv

                def woken(sent: int) -> bool:
                    return (
                        api.closed
                        or api.generation != generation
                        or bool(api.events and api.events[-1][0] > sent)
                    )

                while True:
                    with api.cond:
                        api.cond.wait_for(partial(woken, sent), timeout=0.2)
                        pending = [e for e in api.events if e[0] > sent]
                        ended = api.closed or api.generation != generation
                        gone = api.gone_event
                    for rv, kind, obj in pending:
                        sent = rv
                        if _selected(obj, selector):
                            self._line({"type": kind, "object": obj})
                    if ended:
                        if gone:
                            self._line({"type": "ERROR", "object": status(410, "Expired")})
                        self.wfile.write(b"0\r\n\r\n")
                        return

            def _line(self, event: dict[str, Any]) -> None:
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

        return Handler


def _selected(obj: dict[str, Any], selector: str) -> bool:
    key, _, value = selector.partition("=")
    return not key or obj["metadata"].get("labels", {}).get(key) == value


class Recorder:
    """Collects what ``on_change`` is handed."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()

    def __call__(self, addresses: list[str]) -> None:
        with self.lock:
            self.calls.append(addresses)

    @property
    def last(self) -> list[str] | None:
        with self.lock:
            return self.calls[-1] if self.calls else None

    def wait_for(self, expected: list[str], timeout_s: float = 5.0) -> None:
        wait_until(lambda: self.last == expected, timeout_s, lambda: f"calls: {self.calls}")


def wait_until(
    predicate: Callable[[], bool], timeout_s: float = 5.0, why: Callable[[], str] = str
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out; {why()}"
        time.sleep(0.005)


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    yield server
    server.close()


@pytest.fixture
def make_watcher(api: FakeApiServer) -> Iterator[Callable[..., EndpointSliceWatcher]]:
    made: list[tuple[EndpointSliceWatcher, client.ApiClient]] = []

    def make(
        on_change: Callable[[list[str]], None], url: str = "", **kwargs: Any
    ) -> EndpointSliceWatcher:
        api_client = client.ApiClient(client.Configuration(host=url or api.url))
        kwargs.setdefault("backoff", TINY_BACKOFF)
        watcher = EndpointSliceWatcher(
            SERVICE, on_change, namespace=NAMESPACE, api_client=api_client, **kwargs
        )
        made.append((watcher, api_client))
        return watcher

    yield make
    for watcher, api_client in made:
        watcher.stop()
        api_client.close()


def as_model(obj: dict[str, Any]) -> Any:
    """A ``V1EndpointSlice``, decoded as the watch decodes one (the same in every version)."""
    line = json.dumps({"type": "ADDED", "object": obj})
    return watch.Watch().unmarshal_event(line, "V1EndpointSlice")["object"]


# --- Pure: endpoints → addresses ----------------------------------------------------------------


@pytest.mark.unit
def test_ready_addresses_follow_the_api_semantics() -> None:
    first = endpoint_slice(
        "a",
        [
            endpoint("10.0.0.1"),  # no conditions: ready
            endpoint("10.0.0.2", ready=True),
            endpoint("10.0.0.3", ready=False),
            endpoint("10.0.0.4", ready=True, terminating=True),  # publishNotReadyAddresses
            endpoint("10.0.0.5", serving=True, terminating=False),  # ready unset: ready
        ],
        ports=[{"name": "metrics", "port": 9090}, {"name": "grpc", "port": 50052}],
    )
    second = endpoint_slice(
        "b", [endpoint("10.0.0.2"), endpoint("10.0.0.9")], ports=[{"name": "x", "port": 7000}]
    )
    no_ports = endpoint_slice("c", [endpoint("10.0.0.8")], ports=[])
    ipv6 = endpoint_slice("d", [endpoint("fd00::1")])
    assert ready_addresses(map(as_model, [second, first, no_ports, ipv6])) == [
        "10.0.0.1:50052",
        "10.0.0.2:50052",
        "10.0.0.2:7000",
        "10.0.0.5:50052",
        "10.0.0.9:7000",
        "[fd00::1]:50052",
    ]


@pytest.mark.unit
def test_backoff_grows_is_capped_and_jittered() -> None:
    backoff = Backoff(initial_s=1.0, max_s=8.0, multiplier=2.0, jitter=0.5)
    rng = random.Random(0)
    for attempt, ceiling in enumerate([1, 2, 4, 8, 8, 8]):
        delays = [backoff.delay_s(attempt, rng) for _ in range(50)]
        assert all(ceiling * 0.5 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > 0.1 * ceiling  # jittered
    assert backoff.delay_s(10_000, rng) <= 8.0


@pytest.mark.unit
def test_no_cluster_and_no_kubeconfig_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubernetes.config import kube_config

    from specdec.core.errors import SpecdecError
    from specdec.router.discovery import load_api_client

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "none"))
    with pytest.raises(SpecdecError, match="not in a pod"):
        load_api_client()


# --- List and watch -----------------------------------------------------------------------------


def test_list_then_watch_events_update_the_addresses(api: FakeApiServer, make_watcher) -> None:
    api.put(endpoint_slice("v-1", [endpoint("10.0.0.1"), endpoint("10.0.0.2", ready=False)]))
    api.put(endpoint_slice("other", [endpoint("10.9.9.9")], service="draft"))
    seen = Recorder()
    watcher = make_watcher(seen)
    watcher.start()
    assert watcher.wait_synced(5)
    assert seen.calls[0] == ["10.0.0.1:50052"]
    list_rv = str(api.rv)

    api.put(endpoint_slice("v-2", [endpoint("10.0.1.1")]))  # ADDED: slices merge
    seen.wait_for(["10.0.0.1:50052", "10.0.1.1:50052"])
    api.put(endpoint_slice("v-1", [endpoint("10.0.0.1", ready=True, terminating=True),
                                   endpoint("10.0.0.2", ready=True)]))  # fmt: skip
    seen.wait_for(["10.0.0.2:50052", "10.0.1.1:50052"])  # MODIFIED
    api.put(endpoint_slice("v-2", [endpoint("10.0.1.1"), endpoint("10.0.1.2", ready=False)]))
    api.delete("v-1")  # DELETED
    seen.wait_for(["10.0.1.1:50052"])
    api.put(endpoint_slice("other", [endpoint("10.9.9.8")], service="draft"))

    assert seen.calls == [
        ["10.0.0.1:50052"],
        ["10.0.0.1:50052", "10.0.1.1:50052"],
        ["10.0.0.2:50052", "10.0.1.1:50052"],
        ["10.0.1.1:50052"],  # an unchanged set is not handed over again
    ]
    assert watcher.addresses == ["10.0.1.1:50052"]
    (_, listed), (_, watched) = api.requests
    assert listed["labelSelector"] == watched["labelSelector"] == f"{SERVICE_NAME_LABEL}={SERVICE}"
    assert watched["resourceVersion"] == list_rv


@pytest.mark.parametrize("gone_event", [True, False], ids=["error-event", "http-410"])
def test_expired_resource_version_relists(
    api: FakeApiServer, make_watcher, gone_event: bool
) -> None:
    api.put(endpoint_slice("v-1", [endpoint("10.0.0.1")]))
    seen = Recorder()
    make_watcher(seen).start()
    seen.wait_for(["10.0.0.1:50052"])
    wait_until(lambda: api.count("watch") == 1)

    api.put(endpoint_slice("v-1", [endpoint("10.0.0.7")]), silently=True)  # lost with history
    api.compact(gone_event=gone_event)
    seen.wait_for(["10.0.0.7:50052"])
    assert api.count("list") == 2
    api.put(endpoint_slice("v-2", [endpoint("10.0.0.8")]))  # and the new watch works
    seen.wait_for(["10.0.0.7:50052", "10.0.0.8:50052"])


def test_relisting_into_410_again_backs_off(api: FakeApiServer, make_watcher) -> None:
    api.compacted_rv = 10**9  # every watch is too old
    started = time.monotonic()
    make_watcher(Recorder(), backoff=Backoff(initial_s=0.05, max_s=0.05, jitter=0.0)).start()
    wait_until(lambda: api.count("list") == 4)
    assert time.monotonic() - started >= 0.1  # the first 410 relists at once, the next ones wait


def test_ended_watch_resumes_from_the_last_version(api: FakeApiServer, make_watcher) -> None:
    api.put(endpoint_slice("v-1", [endpoint("10.0.0.1")]))
    seen = Recorder()
    make_watcher(seen).start()
    seen.wait_for(["10.0.0.1:50052"])
    api.put(endpoint_slice("v-2", [endpoint("10.0.0.2")]))
    seen.wait_for(["10.0.0.1:50052", "10.0.0.2:50052"])
    last_rv = str(api.rv)

    api.end_watches()
    wait_until(lambda: api.count("watch") == 2)
    api.put(endpoint_slice("v-3", [endpoint("10.0.0.3")]))
    seen.wait_for(["10.0.0.1:50052", "10.0.0.2:50052", "10.0.0.3:50052"])
    assert api.count("list") == 1
    assert api.requests[-1][1]["resourceVersion"] == last_rv


def test_api_errors_are_retried_with_backoff(api: FakeApiServer, make_watcher) -> None:
    api.put(endpoint_slice("v-1", [endpoint("10.0.0.1")]))
    api.fail(3, 500)
    seen = Recorder()
    make_watcher(seen, backoff=Backoff(initial_s=0.05, max_s=0.05, jitter=0.0)).start()
    seen.wait_for(["10.0.0.1:50052"])
    assert api.count("list") == 4
    wait_until(lambda: api.count("watch") == 1)

    api.fail(2, 503)  # the resumed watch fails twice, then catches up on what it missed
    api.end_watches()
    wait_until(lambda: api.count("watch") == 2)  # the first failure: no watch is open
    api.put(endpoint_slice("v-2", [endpoint("10.0.0.2")]))
    seen.wait_for(["10.0.0.1:50052", "10.0.0.2:50052"])
    assert api.count("list") == 4
    assert api.count("watch") == 4
    assert [] not in seen.calls  # errors never clear the known replicas


def test_unreachable_api_server_is_retried(make_watcher) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    seen = Recorder()
    watcher = make_watcher(seen, url=f"http://127.0.0.1:{port}")
    watcher.start()
    time.sleep(0.1)  # connections refused, retried
    assert seen.calls == []
    late = FakeApiServer(port)
    try:
        late.put(endpoint_slice("v-1", [endpoint("10.0.0.1")]))
        seen.wait_for(["10.0.0.1:50052"])
    finally:
        watcher.stop()
        late.close()


def test_stop_ends_the_thread_during_a_watch_and_during_backoff(
    api: FakeApiServer, make_watcher
) -> None:
    api.put(endpoint_slice("v-1", [endpoint("10.0.0.1")]))
    watching = make_watcher(Recorder())
    watching.start()
    assert watching.wait_synced(5)
    wait_until(lambda: api.count("watch") == 1)
    started = time.monotonic()
    watching.stop()
    assert not watching.running
    assert time.monotonic() - started < 1.0

    api.fail(1000, 500)
    backing_off = make_watcher(Recorder(), backoff=Backoff(initial_s=30.0, max_s=30.0))
    backing_off.start()
    wait_until(lambda: api.count("list") == 2)
    started = time.monotonic()
    backing_off.stop()
    assert not backing_off.running
    assert time.monotonic() - started < 1.0
    backing_off.stop()  # idempotent


def test_replica_pool_follows_the_watch_on_the_event_loop(api: FakeApiServer, make_watcher) -> None:
    api.put(endpoint_slice("v-1", [endpoint("10.0.0.1"), endpoint("10.0.0.2")]))

    async def scenario() -> None:
        pool = ReplicaPool("verifier", verifier_pb2_grpc.VerifierStub)
        loop_thread = threading.get_ident()
        threads: set[int] = set()

        def on_change(addresses: list[str]) -> None:
            threads.add(threading.get_ident())
            pool.set_addresses(addresses)

        watcher = make_watcher(on_change, loop=asyncio.get_running_loop())
        watcher.start()
        await until(lambda: set(pool.replicas) == {"10.0.0.1:50052", "10.0.0.2:50052"})
        kept = pool.replicas["10.0.0.1:50052"]

        api.put(endpoint_slice("v-1", [endpoint("10.0.0.1"), endpoint("10.0.0.2", ready=False)]))
        await until(lambda: set(pool.replicas) == {"10.0.0.1:50052"})
        assert pool.replicas["10.0.0.1:50052"] is kept  # survivors keep their channel
        assert pool.pick(preferred="10.0.0.2:50052").address == "10.0.0.1:50052"

        api.delete("v-1")
        await until(lambda: not pool.replicas)
        assert threads == {loop_thread}
        await asyncio.to_thread(watcher.stop)
        await pool.close()
        await kept.channel.close()

    asyncio.run(scenario())


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_router_start_waits_for_discovery_and_stop_ends_it(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fixtures import TINY, save_tokenizer

    from specdec.router import app, discovery

    save_tokenizer(tmp_path)  # the router reads only the tokenizer and config.json
    config = {**TINY, "model_type": "llama", "eos_token_id": 0}
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    api.put(endpoint_slice("v-1", [endpoint("10.0.0.1")]))
    api.put(endpoint_slice("d-1", [endpoint("10.0.2.1")], service="draft"))
    monkeypatch.setattr(
        discovery,
        "load_api_client",
        lambda: client.ApiClient(client.Configuration(host=api.url)),
    )
    cfg = app.RouterConfig(
        model=str(tmp_path),
        verifiers=(),
        listen="127.0.0.1:0",
        discover_namespace=NAMESPACE,
        discover_verifiers=SERVICE,
        discover_drafts="draft",
    )

    async def scenario() -> None:
        running, deps = await app.start(cfg)
        assert isinstance(running, app.RouterRunning)
        assert list(deps.verifiers.replicas) == ["10.0.0.1:50052"]  # known before SERVING
        assert list(deps.drafts.replicas) == ["10.0.2.1:50052"]
        api.put(endpoint_slice("v-1", [endpoint("10.0.0.1"), endpoint("10.0.0.2")]))
        await until(lambda: len(deps.verifiers) == 2)
        await app.stop(running, deps, 0)
        assert not any(w.running for w in running.watchers)

    asyncio.run(scenario())
