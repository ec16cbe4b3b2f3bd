"""Wiring of the router: tokenizer, replica pools, Redis sessions, the public server."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from specdec.core.model_config import load_config
from specdec.core.tokenizer import Tokenizer
from specdec.router.admission import DEFAULT_MAX_WAITING, DEFAULT_TIMEOUT_S, Admission
from specdec.router.load_guard import LoadGuard
from specdec.router.replicas import ReplicaPool
from specdec.router.request import Limits
from specdec.router.server import GenerationServicer
from specdec.router.sessions import DEFAULT_MAX_PER_IDENTITY, SessionKeys, SessionStore
from specdec.router.speculation import DEFAULT_AHEAD_WIDTH, RouterDeps
from specdec.serving.auth import ApiKeys
from specdec.serving.metrics import serve_metrics
from specdec.serving.server import (
    Running,
    Transport,
    check_listen,
    serve_forever,
    start_service,
)
from specdec.serving.telemetry import setup_tracing
from specdec.serving.tls import ClientTLS
from specdec.v1 import draft_pb2_grpc, generation_pb2, generation_pb2_grpc, verifier_pb2_grpc

if TYPE_CHECKING:
    from specdec.router.discovery import EndpointSliceWatcher
    from specdec.router.http.server import HttpServer

log = logging.getLogger("specdec.router")


@dataclass(frozen=True)
class RouterConfig:
    model: str  # target model folder: tokenizer.json, config.json (no weights needed)
    verifiers: tuple[str, ...]  # verifier addresses host:port
    drafts: tuple[str, ...] = ()  # draft addresses; none: plain decoding only
    listen: str = "127.0.0.1:50051"  # host:port; port 0 picks a free one
    draft_model: str = ""  # shown by GetInfo
    redis_url: str | None = None  # None: no session affinity
    default_policy: str = "goodput"  # depth policy when a request names none
    max_depth: int = 8  # the deepest k the adaptive policies choose
    load_guard: bool = False  # opt-in: measure under concurrency whether speculation pays
    draft_ahead: bool = True  # the draft works on each round's likeliest outcomes meanwhile
    ahead_width: int = DEFAULT_AHEAD_WIDTH  # outcomes drafted ahead per round
    ahead_max_in_flight: int = 1  # above this many requests in flight, draft-ahead pauses
    max_context_tokens: int = 2048  # prompt + output (must not exceed the verifiers')
    max_output_tokens: int = 4096  # largest max_tokens accepted
    session_ttl_s: int = 3600
    # Sessions are keyed by HMAC under this secret (one Secret for every router replica);
    # None: a random secret per process (sessions then do not survive a restart).
    session_secret_file: str | None = None
    max_sessions_per_identity: int = DEFAULT_MAX_PER_IDENTITY  # beyond: its oldest are dropped
    # Admission (router/admission.py): requests beyond the verifiers' slots wait their turn.
    queue_max: int = DEFAULT_MAX_WAITING  # requests waiting at most; beyond: RESOURCE_EXHAUSTED
    queue_timeout_s: float = DEFAULT_TIMEOUT_S  # the longest wait for a slot
    metrics_port: int = 0  # Prometheus /metrics on this port; 0: off
    metrics_host: str = "127.0.0.1"  # address /metrics binds
    # Kubernetes discovery (router/discovery.py): a Service named here replaces the static list.
    discover_namespace: str = ""  # namespace of the Services below; "": this pod's
    discover_verifiers: str = ""  # headless Service whose ready endpoints are the verifiers
    discover_drafts: str = ""  # headless Service whose ready endpoints are the drafts
    # the public port: TLS or not, health port, reflection
    transport: Transport = field(default_factory=Transport)
    peer_tls: ClientTLS | None = None  # towards the replicas: their CA, this router's cert
    api_keys_file: str | None = None  # identity:sha256hex lines; None: no API keys asked
    # The OpenAI-compatible HTTP face (router/http/): same loop, keys, TLS and loopback rule.
    http_listen: str | None = None  # host:port; None: no HTTP
    served_model_name: str = ""  # the HTTP API's model id; "": the target folder's name
    chat_template: str | None = None  # Jinja file; None: the target folder's own template


@dataclass
class RouterRunning(Running):
    """The router's server, its HTTP face and its discovery watchers (stopped by ``stop``)."""

    watchers: tuple[EndpointSliceWatcher, ...] = ()
    http: HttpServer | None = None

    @property
    def http_port(self) -> int:
        return self.http.port if self.http is not None else 0

    async def stop(self, grace_s: float = 5.0) -> None:
        """Both faces stop together, each letting its requests finish for ``grace_s``."""
        if self.http is None:
            await super().stop(grace_s)
            return
        await asyncio.gather(self.http.stop(grace_s), super().stop(grace_s))


def build_deps(cfg: RouterConfig) -> RouterDeps:
    model_cfg = load_config(cfg.model)
    tokenizer = Tokenizer.from_folder(cfg.model)
    max_context = min(cfg.max_context_tokens, model_cfg.max_position_embeddings)
    limits = Limits(
        vocab_size=model_cfg.vocab_size,
        max_context_tokens=max_context,
        # A prompt takes at least one token of the context: no more can ever be generated.
        max_output_tokens=min(cfg.max_output_tokens, max_context - 1),
    )
    verifiers = ReplicaPool("verifier", verifier_pb2_grpc.VerifierStub, tls=cfg.peer_tls)
    verifiers.set_addresses(list(cfg.verifiers))
    drafts = ReplicaPool("draft", draft_pb2_grpc.DraftStub, tls=cfg.peer_tls)
    drafts.set_addresses(list(cfg.drafts))
    sessions = (
        SessionStore(
            cfg.redis_url,
            ttl_s=cfg.session_ttl_s,
            max_per_identity=cfg.max_sessions_per_identity,
        )
        if cfg.redis_url
        else None
    )
    return RouterDeps(
        tokenizer=tokenizer,
        limits=limits,
        eos_token_ids=frozenset(model_cfg.eos_token_ids),
        verifiers=verifiers,
        drafts=drafts,
        sessions=sessions,
        default_policy=cfg.default_policy,
        max_depth=cfg.max_depth,
        draft_ahead=cfg.draft_ahead,
        ahead_width=cfg.ahead_width,
        ahead_max_in_flight=cfg.ahead_max_in_flight,
        guard=LoadGuard() if cfg.load_guard else None,
        admission=Admission(verifiers, cfg.queue_max, cfg.queue_timeout_s),
        session_keys=SessionKeys.from_file(cfg.session_secret_file),
        target_model=Path(cfg.model).resolve().name,
    )


async def _start_discovery(cfg: RouterConfig, deps: RouterDeps) -> tuple[EndpointSliceWatcher, ...]:
    """Watch the configured Services (waits briefly for their first lists); none: ()."""
    pools = ((cfg.discover_verifiers, deps.verifiers), (cfg.discover_drafts, deps.drafts))
    services = {service: pool.set_addresses for service, pool in pools if service}
    if not services:
        return ()
    from specdec.router.discovery import start_discovery  # imports kubernetes: only when used

    return await start_discovery(services, cfg.discover_namespace or None)


async def start(cfg: RouterConfig) -> tuple[Running, RouterDeps]:
    if cfg.http_listen:  # before anything starts: a refusal leaves nothing running
        check_listen(cfg.http_listen, cfg.transport, "--tls-cert and --tls-key, or --insecure")
    deps = build_deps(cfg)
    if deps.sessions is not None:
        await deps.sessions.start()
    watchers = await _start_discovery(cfg, deps)  # before SERVING: the replicas are known
    if deps.admission is not None:
        await deps.admission.start()  # the verifiers' slots
    keys = ApiKeys.load(cfg.api_keys_file) if cfg.api_keys_file else None
    servicer = GenerationServicer(deps, Path(cfg.model).resolve().name, cfg.draft_model, keys)
    service = generation_pb2.DESCRIPTOR.services_by_name["Generation"]
    # HTTP first: once health says SERVING (what `specdec up` waits for), both faces answer.
    http = await _start_http(cfg.http_listen, cfg, deps, keys) if cfg.http_listen else None
    try:
        running = await start_service(
            cfg.listen,
            "router",
            servicer,
            generation_pb2_grpc.add_GenerationServicer_to_server,
            service,
            cfg.transport,
        )
    except BaseException:
        if http is not None:
            await http.stop(0)
        raise
    running = RouterRunning(
        **{f.name: getattr(running, f.name) for f in fields(Running)}, watchers=watchers, http=http
    )
    return running, deps


async def _start_http(
    address: str, cfg: RouterConfig, deps: RouterDeps, keys: ApiKeys | None
) -> HttpServer:
    """The OpenAI-compatible face on ``address`` (imports Starlette only when used)."""
    from specdec.router.http.app import OpenAIFace
    from specdec.router.http.chat_template import ChatTemplate
    from specdec.router.http.server import start_http

    model_id = cfg.served_model_name or Path(cfg.model).resolve().name
    template = ChatTemplate.load(cfg.model, cfg.chat_template)
    face = OpenAIFace(deps, model_id, keys, template)
    http = await start_http(face.app(), address, cfg.transport)
    log.info("OpenAI-compatible HTTP on port %d (model %s)", http.port, model_id)
    return http


async def stop(running: Running, deps: RouterDeps, grace_s: float = 5.0) -> None:
    if isinstance(running, RouterRunning) and running.watchers:
        from specdec.router.discovery import stop_discovery

        await stop_discovery(running.watchers)  # first: no pool changes while closing
    await running.stop(grace_s)
    if deps.admission is not None:
        await deps.admission.close()
    if deps.sessions is not None:
        await deps.sessions.close()
    await deps.verifiers.close()
    await deps.drafts.close()


def main(cfg: RouterConfig) -> None:
    setup_tracing("specdec-router")
    serve_metrics(cfg.metrics_port, cfg.metrics_host)

    async def run() -> None:
        running, deps = await start(cfg)
        try:
            await serve_forever(running)
        finally:
            await stop(running, deps, 0)

    asyncio.run(run())
