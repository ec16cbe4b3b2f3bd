"""Transport security and abuse of the internal ports: mTLS, API keys, binds, idle streams.

Real servers on loopback with a tiny target: replicas behind mTLS refuse a peer without the
deployment's client certificate (no certificate, another CA's, plaintext) and serve the
router's; health stays reachable on its plaintext port; reflection is off unless asked; a
non-loopback plaintext bind is refused unless ``insecure``; API keys map to an identity and a
missing or wrong one is UNAUTHENTICATED; idle streams from a stranger end by themselves (or are
refused by the per-connection cap) and never deny the public API; ``specdec up``'s path
(``start_services``) runs with mTLS.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from specdec.cli import build_parser
from specdec.cli import main as cli_main
from specdec.core.errors import SpecdecError, Unauthenticated
from specdec.draft import app as draft_app
from specdec.local_pipeline import LoopThread
from specdec.router import app as router_app
from specdec.serving.auth import ApiKeys, hash_key
from specdec.serving.server import Running, Transport, start_server
from specdec.serving.tls import ClientTLS, LoopbackPKI, ServerTLS, loopback_pki, sync_channel
from specdec.v1 import (
    common_pb2,
    draft_pb2,
    draft_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
    verifier_pb2,
    verifier_pb2_grpc,
)
from specdec.verifier import app as verifier_app

pytestmark = pytest.mark.service

PROMPT = "def add(a, b):\n"
KEYS = {"alice": "key-of-alice-0123456789", "bob": "key-of-bob-9876543210"}
RELEASE = threading.Event()  # set at the end of the module: idle strangers' request threads end


@pytest.fixture(scope="module", autouse=True)
def _release_idle_requests() -> Iterator[None]:
    yield
    RELEASE.set()


class Stack:
    """A verifier, a draft and a router on one background loop, as ``Transport``s say."""

    def __init__(self, target: str, replica: Transport, peer: ClientTLS | None, **router: Any):
        self.loop = LoopThread()
        self.servers: dict[str, Running] = {}
        self.deps: Any = None
        limits = dict(router.pop("limits", {}))
        common = dict(listen="127.0.0.1:0", device="cpu", slots=16, max_seq_len=256, **limits)
        draft = str(Path(target).parent / "draft_other")
        self.servers["verifier"] = self.loop.run(
            verifier_app.start(verifier_app.VerifierConfig(target, transport=replica, **common))
        )
        self.servers["draft"] = self.loop.run(
            draft_app.start(draft_app.DraftConfig(draft, transport=replica, **common))
        )
        cfg = router_app.RouterConfig(
            model=target,
            verifiers=(self.address("verifier"),),
            drafts=(self.address("draft"),),
            listen="127.0.0.1:0",
            max_context_tokens=256,
            peer_tls=peer,
            **router,
        )
        self.servers["router"], self.deps = self.loop.run(router_app.start(cfg))

    def address(self, role: str) -> str:
        return f"127.0.0.1:{self.servers[role].port}"

    def client(self) -> generation_pb2_grpc.GenerationStub:
        return generation_pb2_grpc.GenerationStub(grpc.insecure_channel(self.address("router")))

    def close(self) -> None:
        for running in self.servers.values():
            self.loop.run(running.stop(0))
        self.loop.run(self.deps.verifiers.close())
        self.loop.run(self.deps.drafts.close())
        self.loop.close()


def generate(stack: Stack, metadata: tuple = (), max_tokens: int = 8) -> list[int]:
    request = generation_pb2.GenerateRequest(prompt_text=PROMPT, max_tokens=max_tokens)
    return [t for r in stack.client().Generate(request, metadata=metadata) for t in r.token_ids]


def bearer(key: str) -> tuple:
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LoopbackPKI:
    return loopback_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> LoopbackPKI:
    return loopback_pki(tmp_path_factory.mktemp("other-pki"), ca_name="someone else's CA")


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("keys") / "api-keys"
    lines = ["# identity:sha256 of the key", ""]
    lines += [f"{who}:{hash_key(key)}  # {who}'s laptop" for who, key in KEYS.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def secure(model_dir: Path, pki: LoopbackPKI, keys_file: str) -> Iterator[Stack]:
    replica = Transport(pki.server(), health_listen="127.0.0.1:0")
    stack = Stack(str(model_dir / "target"), replica, pki.client(), api_keys_file=keys_file)
    yield stack
    stack.close()


def verifier_status(address: str, tls: ClientTLS | None) -> common_pb2.ReplicaStatus:
    with sync_channel(address, tls) as channel:
        stub = verifier_pb2_grpc.VerifierStub(channel)
        return stub.GetStatus(common_pb2.GetStatusRequest(), timeout=5)


def test_key_files_are_private(pki: LoopbackPKI) -> None:
    for key in (pki.server_key, pki.client_key):
        assert Path(key).stat().st_mode & 0o777 == 0o600


def test_replica_refuses_peers_without_the_deployments_client_certificate(
    secure: Stack, pki: LoopbackPKI, other_pki: LoopbackPKI
) -> None:
    address = secure.address("verifier")
    strangers = {
        "plaintext": None,
        "no client certificate": ClientTLS(pki.ca, server_name="specdec-replica"),
        "another CA's certificate": ClientTLS(
            pki.ca, other_pki.client_cert, other_pki.client_key, "specdec-replica"
        ),
    }
    for who, tls in strangers.items():
        with pytest.raises(grpc.RpcError) as err:
            verifier_status(address, tls)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, who
    assert verifier_status(address, pki.client()).load.slots_total == 16


def test_health_stays_reachable_in_plaintext_on_its_own_port(secure: Stack) -> None:
    for role in ("verifier", "draft"):
        port = secure.servers[role].health_port
        assert port
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with (
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel,  # health only
            pytest.raises(grpc.RpcError) as err,
        ):
            verifier_pb2_grpc.VerifierStub(channel).GetStatus(
                common_pb2.GetStatusRequest(), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _reflect(address: str) -> grpc.StatusCode:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        try:
            list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


async def _start_empty(address: str, transport: Transport) -> Running:
    return await start_server(address, [], ["x.Empty"], transport)


def test_reflection_is_off_unless_asked(secure: Stack) -> None:
    assert _reflect(secure.address("router")) == grpc.StatusCode.UNIMPLEMENTED
    running = secure.loop.run(_start_empty("127.0.0.1:0", Transport(reflection=True)))
    try:
        assert _reflect(f"127.0.0.1:{running.port}") == grpc.StatusCode.OK
    finally:
        secure.loop.run(running.stop(0))


def test_plaintext_off_loopback_needs_insecure(secure: Stack, model_dir: Path) -> None:
    with pytest.raises(SpecdecError, match="--insecure"):
        secure.loop.run(_start_empty("0.0.0.0:0", Transport()))
    running = secure.loop.run(_start_empty("0.0.0.0:0", Transport(insecure=True)))
    secure.loop.run(running.stop(0))
    # The command line says so before loading anything; its default address is loopback.
    argv = ["serve", "verifier", "--model", str(model_dir / "target"), "--listen", "0.0.0.0:0"]
    assert cli_main(argv) == 2
    assert cli_main(["up", "--target", str(model_dir / "target"), "--listen", "0.0.0.0:0"]) == 2
    assert build_parser().parse_args(["serve", "draft"]).listen is None  # -> 127.0.0.1:50053


def test_api_keys_map_to_an_identity(secure: Stack, keys_file: str) -> None:
    keys = ApiKeys.load(keys_file)
    assert keys.identify(bearer(KEYS["bob"])) == "bob"
    for metadata, code in [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        (bearer("not-a-key"), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", KEYS["alice"]),), grpc.StatusCode.UNAUTHENTICATED),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            generate(secure, metadata)
        assert err.value.code() == code
        assert "key" in err.value.details() and "Error" not in err.value.details()
        with pytest.raises(Unauthenticated):
            keys.identify(metadata)
    with pytest.raises(grpc.RpcError) as err:
        secure.client().GetInfo(generation_pb2.GetInfoRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert len(generate(secure, bearer(KEYS["alice"]))) == 8  # through mTLS to the replicas
    info = secure.client().GetInfo(generation_pb2.GetInfoRequest(), metadata=bearer(KEYS["bob"]))
    assert info.verifier_replicas == 1


def test_a_malformed_keys_file_is_refused_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("alice:" + "0" * 64 + "\nbob:plaintext-key\n")
    with pytest.raises(ValueError, match=":2:"):
        ApiKeys.load(path)


def _open_verify(address: str, tls: ClientTLS | None, n: int) -> list[Any]:
    """``n`` Verify streams that open a sequence (taking a slot each), then say nothing."""
    channel = sync_channel(address, tls)
    stub = verifier_pb2_grpc.VerifierStub(channel)
    opened = verifier_pb2.VerifyRequest(
        open=verifier_pb2.OpenSequence(prompt_token_ids=[1, 2, 3], seed=1)
    )

    def requests() -> Iterator[verifier_pb2.VerifyRequest]:
        yield opened
        RELEASE.wait(60)  # no other message: an idle peer (until the test is over)

    return [stub.Verify(requests(), timeout=30) for _ in range(n)]


def _open_propose(address: str, tls: ClientTLS | None, n: int) -> list[Any]:
    channel = sync_channel(address, tls)
    stub = draft_pb2_grpc.DraftStub(channel)
    opened = draft_pb2.ProposeRequest(open=draft_pb2.OpenDraft(prompt_token_ids=[1, 2, 3], seed=1))

    def requests() -> Iterator[draft_pb2.ProposeRequest]:
        yield opened
        RELEASE.wait(60)

    return [stub.Propose(requests(), timeout=30) for _ in range(n)]


def _ending(calls: list[Any], details: list[str] | None = None) -> list[grpc.StatusCode]:
    """How each stream ended (reading whatever it answered first); its message into
    ``details``."""
    codes = []
    for call in calls:
        try:
            for _ in call:
                pass
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as err:
            codes.append(err.code())
            if details is not None:
                details.append(err.details())
    return codes


def test_idle_strangers_are_refused_outright_under_mtls(secure: Stack) -> None:
    verify = _open_verify(secure.address("verifier"), None, 16)
    propose = _open_propose(secure.address("draft"), None, 16)
    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(lambda _: generate(secure, bearer(KEYS["alice"])), range(4)))
    assert all(len(o) == 8 for o in outputs)
    assert set(_ending(verify + propose)) == {grpc.StatusCode.UNAVAILABLE}


def test_idle_streams_end_and_capped_peers_deny_nothing_without_tls(model_dir: Path) -> None:
    stack = Stack(
        str(model_dir / "target"),
        Transport(),
        None,
        limits={"stream_idle_s": 1.0, "max_streams_per_peer": 8},
    )
    try:
        started = time.monotonic()
        verify = _open_verify(stack.address("verifier"), None, 16)
        propose = _open_propose(stack.address("draft"), None, 16)
        with ThreadPoolExecutor(4) as pool:  # while the strangers hold what they may
            outputs = list(pool.map(lambda _: generate(stack), range(4)))
        assert all(len(o) == 8 for o in outputs)
        details: list[str] = []
        codes = _ending(verify, details) + _ending(propose, details)
        # 8 of each stream kind over the cap, refused; the other 8 ended by the idle timeout.
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 16
        assert codes.count(grpc.StatusCode.UNAVAILABLE) == 16
        assert details.count("the stream sent nothing for 1 s; closed and its slot freed") == 16
        assert (
            details.count(
                "this connection already holds 8 streams, the most one peer may; close one first"
            )
            == 16
        )
        assert time.monotonic() - started < 15
        assert verifier_status(stack.address("verifier"), None).slots_in_use == 0
    finally:
        stack.close()


@pytest.mark.e2e
def test_the_up_path_runs_over_mtls_with_a_throwaway_ca(model_dir: Path) -> None:
    from specdec.router.redis_server import free_loopback_port
    from specdec.up import start_services

    listen = f"127.0.0.1:{free_loopback_port()}"
    target = str(model_dir / "target")
    services = start_services(target, str(model_dir / "draft_other"), listen, "cpu", mtls=True)
    try:
        assert services.private is not None
        folder = services.private
        assert folder.stat().st_mode & 0o777 == 0o700
        stub = generation_pb2_grpc.GenerationStub(grpc.insecure_channel(listen))
        request = generation_pb2.GenerateRequest(prompt_text=PROMPT, max_tokens=8)
        assert sum(len(r.token_ids) for r in stub.Generate(request, timeout=60)) == 8
        with pytest.raises(grpc.RpcError) as err:  # the replicas let in the router alone
            verifier_status(services.addresses["verifier"], None)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        services.stop()
    assert not folder.exists()


def test_public_tls_and_keys_from_the_command_line(
    secure: Stack, pki: LoopbackPKI, keys_file: str, model_dir: Path, capsys, monkeypatch
) -> None:
    cfg = router_app.RouterConfig(
        model=str(model_dir / "target"),
        verifiers=(secure.address("verifier"),),
        listen="127.0.0.1:0",
        max_context_tokens=256,
        peer_tls=pki.client(),
        api_keys_file=keys_file,
        transport=Transport(ServerTLS(pki.server_cert, pki.server_key)),
    )
    running, deps = secure.loop.run(router_app.start(cfg))
    try:
        addr = f"127.0.0.1:{running.port}"
        argv = ["generate", "--addr", addr, "--json", "--max-tokens", "4", PROMPT]
        assert cli_main([*argv, "--tls-ca", pki.ca, "--api-key", KEYS["bob"]]) == 0
        assert len(json.loads(capsys.readouterr().out)["token_ids"]) == 4
        monkeypatch.setenv("SPECDEC_API_KEY", KEYS["alice"])
        assert cli_main([*argv, "--tls-ca", pki.ca]) == 0
        capsys.readouterr()
        monkeypatch.delenv("SPECDEC_API_KEY")
        assert cli_main([*argv, "--tls-ca", pki.ca]) == 2
        assert "UNAUTHENTICATED" in capsys.readouterr().err
        assert cli_main(argv) == 2  # plaintext against a TLS port
    finally:
        secure.loop.run(running.stop(0))
        secure.loop.run(deps.verifiers.close())
        secure.loop.run(deps.drafts.close())


def test_hash_key_prints_a_keys_file_line(capsys, monkeypatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert cli_main(["hash-key", "carol"]) == 0
    line = capsys.readouterr().out.strip()
    assert line == f"carol:{hash_key('s3cret')}"
    assert ApiKeys([("carol", line.split(":")[1])]).identify(bearer("s3cret")) == "carol"
