"""Replica discovery in a cluster: the ready endpoints of a headless Service, kept up to date.

An ``EndpointSliceWatcher`` lists the EndpointSlices of one Service (label
``kubernetes.io/service-name=<service>``), then watches them from the list's resourceVersion, and
after every change hands the sorted ``ip:port`` addresses of the ready, non-terminating endpoints
to a callback (the router passes ``ReplicaPool.set_addresses``). The port is the slice's port
named ``grpc``, else its first port.

The ``kubernetes`` client is synchronous, so the loop runs in a daemon thread; with an asyncio
``loop`` the callback runs on that loop (``call_soon_threadsafe``), where the pools live.
Failures follow the API conventions: 410 Gone (resourceVersion compacted away) relists, a watch
that ends (server timeout) resumes from the last resourceVersion, any other error backs off
(exponential, capped, jittered) and retries. Errors never clear the last known addresses.

Not here: other resource kinds, a general informer, or local discovery (locally the router takes
a static list of addresses).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from specdec.core.errors import SpecdecError

log = logging.getLogger("specdec.router.discovery")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
GRPC_PORT_NAME = "grpc"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
INITIAL_SYNC_TIMEOUT_S = 10.0

OnChange = Callable[[list[str]], None]


@dataclass(frozen=True)
class Backoff:
    """Delays between retries after API errors: exponential, capped, jittered."""

    initial_s: float = 0.5  # the first delay
    max_s: float = 30.0  # no delay is longer
    multiplier: float = 2.0  # growth per consecutive failure
    jitter: float = 0.5  # each delay is drawn from [(1 - jitter) * d, d]

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        """The delay before retry number ``attempt`` (0-based) of a run of failures."""
        capped = min(self.max_s, self.initial_s * self.multiplier ** min(attempt, 64))
        return capped * (1.0 - self.jitter * rng.random())


# --- Endpoints → addresses (pure) ---------------------------------------------------------------


def _is_ready(endpoint: Any) -> bool:
    """Ready unless it says otherwise (nil ready means ready) and not terminating."""
    conditions = endpoint.conditions
    if conditions is None:
        return True
    return conditions.ready is not False and not conditions.terminating


def _slice_port(endpoint_slice: Any) -> int | None:
    """The port named ``grpc``, else the first port; None when the slice names none."""
    ports = [p for p in endpoint_slice.ports or () if p.port is not None]
    for port in ports:
        if port.name == GRPC_PORT_NAME:
            return int(port.port)
    return int(ports[0].port) if ports else None


def _name(endpoint_slice: Any) -> str:
    return str(endpoint_slice.metadata.name)


def _host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def slice_addresses(endpoint_slice: Any) -> set[str]:
    """``ip:port`` of each ready endpoint of one ``V1EndpointSlice`` (first address each)."""
    port = _slice_port(endpoint_slice)
    if port is None:
        return set()
    return {
        _host_port(endpoint.addresses[0], port)
        for endpoint in endpoint_slice.endpoints or ()
        if endpoint.addresses and _is_ready(endpoint)
    }


def ready_addresses(endpoint_slices: Iterable[Any]) -> list[str]:
    """The ready addresses across all slices of a Service: sorted, without duplicates."""
    merged: set[str] = set()
    for endpoint_slice in endpoint_slices:
        merged |= slice_addresses(endpoint_slice)
    return sorted(merged)


# --- Configuration ------------------------------------------------------------------------------


def load_api_client() -> client.ApiClient:
    """An API client from the pod's service account in a cluster, else from the kubeconfig."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        try:
            config.load_kube_config(client_configuration=configuration)
        except config.ConfigException as exc:
            raise SpecdecError(f"Kubernetes discovery: not in a pod, and {exc}") from exc
    return client.ApiClient(configuration)


def current_namespace() -> str:
    """This pod's namespace, else the kubeconfig context's, else ``default``."""
    if SERVICE_ACCOUNT_NAMESPACE.is_file():
        return SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip()
    try:
        _, context = config.list_kube_config_contexts()
    except (config.ConfigException, OSError):
        return "default"
    return str((context or {}).get("context", {}).get("namespace") or "default")


# --- The watcher --------------------------------------------------------------------------------


class EndpointSliceWatcher:
    """Keeps ``on_change`` told of the ready addresses of one Service, from a daemon thread."""

    def __init__(
        self,
        service: str,
        on_change: OnChange,
        *,
        namespace: str | None = None,
        api_client: client.ApiClient | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        backoff: Backoff | None = None,
        watch_timeout_s: int = 300,
        request_timeout_s: float = 10.0,
    ) -> None:
        """``api_client``: None loads the cluster's (and closes it on stop). ``loop``: where
        ``on_change`` runs; None runs it on the watch thread. ``watch_timeout_s``: the server
        ends each watch after this long and the watcher resumes it (a liveness check)."""
        self.service = service
        self.namespace = namespace or current_namespace()
        self._on_change = on_change
        self._owns_client = api_client is None
        self._api_client = api_client or load_api_client()
        self._api = client.DiscoveryV1Api(self._api_client)
        self._loop = loop
        self._backoff = backoff or Backoff()
        self._watch_timeout_s = watch_timeout_s
        self._request_timeout_s = request_timeout_s
        self._rng = random.Random()
        self._slices: dict[str, Any] = {}  # slice name -> V1EndpointSlice
        self._published: list[str] | None = None
        self._stopping = threading.Event()
        self._synced = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, name=f"discovery-{service}", daemon=True)

    @property
    def label_selector(self) -> str:
        return f"{SERVICE_NAME_LABEL}={self.service}"

    @property
    def addresses(self) -> list[str]:
        """The addresses last handed to ``on_change`` (empty before the first list)."""
        return list(self._published or ())

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def wait_synced(self, timeout_s: float | None = None) -> bool:
        """Block until the first list has been handed over; False on timeout."""
        return self._synced.wait(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """End the watch and the thread (idempotent); waits up to ``timeout_s``."""
        self._stopping.set()
        deadline = time.monotonic() + timeout_s
        while self._thread.is_alive() and time.monotonic() < deadline:
            current = self._watch
            if current is not None:
                current.stop()  # shuts the socket down, so a blocked read returns
            self._thread.join(0.05)
        if self._owns_client and not self._thread.is_alive():
            self._api_client.close()

    # The loop, on the watch thread.

    def _run(self) -> None:
        resource_version: str | None = None
        failures = 0  # consecutive rounds without a working watch
        while not self._stopping.is_set():
            try:
                if resource_version is None:
                    resource_version = self._relist()
                resource_version, progressed = self._watch_once(resource_version)
                if progressed:
                    failures = 0
            except ApiException as exc:
                if exc.status == HTTPStatus.GONE:
                    log.info(
                        "%s: resourceVersion expired (%s); relisting", self.service, exc.reason
                    )
                    resource_version = None
                    if failures == 0:  # first 410 after progress: relist at once
                        failures = 1
                        continue
                self._retry_later(failures, exc)
                failures += 1
            except Exception as exc:
                if self._stopping.is_set():
                    break
                self._retry_later(failures, exc)
                failures += 1
        log.debug("%s: discovery stopped", self.service)

    def _relist(self) -> str:
        """Replace the known slices with a fresh list; returns its resourceVersion."""
        listing: Any = self._api.list_namespaced_endpoint_slice(
            self.namespace,
            label_selector=self.label_selector,
            _request_timeout=self._request_timeout_s,
        )
        self._slices = {_name(s): s for s in listing.items or ()}
        self._publish()
        self._synced.set()
        return str(listing.metadata.resource_version)

    def _watch_once(self, resource_version: str) -> tuple[str, bool]:
        """Apply events until the server ends the watch; returns (resourceVersion to resume
        from, whether the watch worked: delivered an event or ended normally)."""
        current = watch.Watch()
        self._watch = current
        progressed = False
        try:
            for event in current.stream(
                self._api.list_namespaced_endpoint_slice,
                self.namespace,
                label_selector=self.label_selector,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=self._watch_timeout_s,  # also: Watch does no retries of its own
                _request_timeout=(self._request_timeout_s, self._watch_timeout_s + 30),
            ):
                if self._stopping.is_set():
                    break
                self._apply(event)
                progressed = True
            else:
                progressed = True
        finally:
            self._watch = None
        return str(current.resource_version or resource_version), progressed

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind = event["type"]
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return  # BOOKMARK: Watch already moved its resourceVersion on
        endpoint_slice = event["object"]
        if kind == "DELETED":
            self._slices.pop(_name(endpoint_slice), None)
        else:
            self._slices[_name(endpoint_slice)] = endpoint_slice
        self._publish()

    def _publish(self) -> None:
        """Hand the addresses over when they changed (always, the first time)."""
        addresses = ready_addresses(self._slices.values())
        if addresses == self._published:
            return
        self._published = addresses
        log.info("%s: %d ready: %s", self.service, len(addresses), ", ".join(addresses))
        if self._loop is None:
            self._call_on_change(list(addresses))
            return
        try:
            self._loop.call_soon_threadsafe(self._call_on_change, list(addresses))
        except RuntimeError:  # the loop has closed: the router is shutting down
            log.debug("%s: loop closed; dropped an update", self.service)

    def _call_on_change(self, addresses: list[str]) -> None:
        try:
            self._on_change(addresses)
        except Exception:
            log.exception("%s: on_change failed", self.service)

    def _retry_later(self, failures: int, exc: Exception) -> None:
        delay_s = self._backoff.delay_s(failures, self._rng)
        why = f"HTTP {exc.status} {exc.reason}" if isinstance(exc, ApiException) else repr(exc)
        log.warning("%s: Kubernetes API: %s; retrying in %.2fs", self.service, why, delay_s)
        self._stopping.wait(delay_s)


# --- Wiring for the router ----------------------------------------------------------------------


async def start_discovery(
    services: Mapping[str, OnChange],
    namespace: str | None = None,
    sync_timeout_s: float = INITIAL_SYNC_TIMEOUT_S,
) -> tuple[EndpointSliceWatcher, ...]:
    """Watch each Service (name -> callback run on this loop); wait up to ``sync_timeout_s``
    for the first lists so the router starts with its replicas known."""
    loop = asyncio.get_running_loop()
    watchers = tuple(
        EndpointSliceWatcher(service, on_change, namespace=namespace, loop=loop)
        for service, on_change in services.items()
    )
    for watcher in watchers:
        watcher.start()
    for watcher in watchers:
        if not await asyncio.to_thread(watcher.wait_synced, sync_timeout_s):
            log.warning("%s: no EndpointSlice list yet; starting without it", watcher.service)
    return watchers


async def stop_discovery(watchers: Sequence[EndpointSliceWatcher]) -> None:
    for watcher in watchers:
        await asyncio.to_thread(watcher.stop)
