"""The command-line flags of transport security, and the configs they make.

``specdec serve`` takes the server side (``--tls-*``, ``--insecure``, ``--reflection``,
``--health-listen``), the router also its client side towards the replicas (``--peer-*``) and
``--api-keys-file``; ``specdec generate`` and ``bench`` the client side of the public API
(``--tls-ca``, ``--api-key``), as one ``router_channel`` that sends the key with every call.
Inconsistent flags are a ``SpecdecError`` saying what to add.
"""

from __future__ import annotations

import argparse
import os
from collections import namedtuple

import grpc

from specdec.core.errors import SpecdecError
from specdec.serving.server import Transport, check_listen
from specdec.serving.tls import REPLICA_NAME, ClientTLS, ServerTLS, sync_channel

API_KEY_ENV = "SPECDEC_API_KEY"


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-cert", default=None, help="PEM certificate: serve TLS (with --tls-key)")
    p.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    p.add_argument(
        "--tls-client-ca",
        default=None,
        help="PEM CA: require client certificates it signed (mTLS; replicas in a deployment)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow plaintext on a non-loopback --listen (default: refused without TLS)",
    )
    p.add_argument("--reflection", action="store_true", help="serve gRPC reflection (default off)")
    p.add_argument(
        "--health-listen",
        default=None,
        metavar="HOST:PORT",
        help="also serve plaintext health only here, for probes that cannot show a client "
        "certificate (a bare PORT binds 127.0.0.1)",
    )
    p.add_argument(
        "--stream-idle-s",
        type=float,
        default=None,
        help="draft/verifier: end a stream that sends nothing this long (default 60)",
    )
    p.add_argument(
        "--max-streams-per-peer",
        type=int,
        default=0,
        help="draft/verifier: streams one connection may hold (default 0: no cap)",
    )
    p.add_argument("--peer-ca", default=None, help="router: PEM CA the replicas' certificates use")
    p.add_argument("--peer-cert", default=None, help="router: PEM client certificate (mTLS)")
    p.add_argument("--peer-key", default=None, help="router: PEM key of --peer-cert")
    p.add_argument(
        "--peer-name",
        default=REPLICA_NAME,
        help=f"router: the name replica certificates carry (default {REPLICA_NAME})",
    )
    p.add_argument(
        "--api-keys-file",
        default=None,
        help="router: 'identity:sha256hex' lines; calls must send a known key "
        "(make a line with `specdec hash-key`)",
    )


def add_client_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-ca", default=None, help="reach the router over TLS, trusting this CA")
    p.add_argument(
        "--api-key", default=None, help=f"API key for the router (default: ${API_KEY_ENV})"
    )


def server_transport(args: argparse.Namespace, listen: str) -> Transport:
    """The server side the flags ask for; refuses plaintext off loopback without --insecure."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SpecdecError("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        raise SpecdecError("--tls-client-ca needs --tls-cert and --tls-key (mTLS is TLS first)")
    tls = ServerTLS(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    health = args.health_listen
    if health and ":" not in health.lstrip(":"):
        health = f"127.0.0.1:{health.lstrip(':')}"
    transport = Transport(tls, args.insecure, args.reflection, health)
    check_listen(listen, transport)
    return transport


def peer_tls(args: argparse.Namespace) -> ClientTLS | None:
    """The router's side towards the replicas; None: plaintext."""
    if not (args.peer_ca or args.peer_cert or args.peer_key):
        return None
    if (args.peer_cert is None) != (args.peer_key is None):
        raise SpecdecError("--peer-cert and --peer-key go together")
    if not args.peer_ca:
        raise SpecdecError("--peer-cert needs --peer-ca (the CA of the replicas' certificates)")
    return ClientTLS(args.peer_ca, args.peer_cert, args.peer_key, args.peer_name)


def router_channel(address: str, tls_ca: str | None, api_key: str | None) -> grpc.Channel:
    """A blocking channel to a router: TLS trusting ``tls_ca`` when given, every call carrying
    ``api_key`` (else ``$SPECDEC_API_KEY``) when there is one."""
    channel = sync_channel(address, ClientTLS(tls_ca) if tls_ca else None)
    key = api_key or os.environ.get(API_KEY_ENV)
    if not key:
        return channel
    return grpc.intercept_channel(channel, _WithMetadata((("authorization", f"Bearer {key}"),)))


class _CallDetails(
    namedtuple(
        "_CallDetails",
        ["method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"],
    ),
    grpc.ClientCallDetails,
):
    pass


class _WithMetadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds fixed metadata (the API key) to every call."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def _details(self, d: grpc.ClientCallDetails) -> _CallDetails:
        metadata = (*(d.metadata or ()), *self.metadata)
        return _CallDetails(
            d.method, d.timeout, metadata, d.credentials, d.wait_for_ready, d.compression
        )

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)
