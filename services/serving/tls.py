"""Transport security: TLS credentials from PEM files, and a throw-away CA for loopback.

``ServerTLS`` is a server's side (its certificate; with ``client_ca`` it requires and verifies a
client certificate: mTLS). ``ClientTLS`` is a client's side (the CA it trusts, its own certificate
for mTLS, and the name it expects the server's certificate to carry, so one certificate can serve
every replica whatever address it is reached at). ``loopback_pki`` writes what ``specdec up``
needs: a CA, a certificate for the replicas (``specdec-replica``, 127.0.0.1, localhost) and one
for the router, keys readable by their owner only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPLICA_NAME = "specdec-replica"  # the name replica certificates carry; clients verify it
ROUTER_NAME = "specdec-router"


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


@dataclass(frozen=True)
class ServerTLS:
    """A server's certificate and key (PEM files); ``client_ca`` set: clients must present a
    certificate it signed (mTLS)."""

    cert: str
    key: str
    client_ca: str | None = None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(_read(self.key), _read(self.cert))],
            root_certificates=_read(self.client_ca) if self.client_ca else None,
            require_client_auth=self.client_ca is not None,
        )


@dataclass(frozen=True)
class ClientTLS:
    """What a client trusts (``ca``), the certificate it shows (mTLS) and the name it expects."""

    ca: str | None = None  # None: the system's roots
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None  # verify this name instead of the address's host

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both its cert and its key file")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca) if self.ca else None,
            private_key=_read(self.key) if self.key else None,
            certificate_chain=_read(self.cert) if self.cert else None,
        )

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def aio_channel(
    address: str, tls: ClientTLS | None, options: list[tuple[str, object]] | None = None
) -> grpc.aio.Channel:
    """An asyncio channel to ``address``: TLS with ``tls``, plaintext without."""
    options = list(options or [])
    if tls is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, tls.credentials(), options=options + tls.options())


def sync_channel(address: str, tls: ClientTLS | None) -> grpc.Channel:
    """A blocking channel to ``address`` (command-line clients)."""
    if tls is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, tls.credentials(), options=tls.options())


@dataclass(frozen=True)
class LoopbackPKI:
    """File paths of a throw-away CA and the two certificates issued by it."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str

    def server(self) -> ServerTLS:
        """The replicas' side: their certificate, and only clients of this CA let in."""
        return ServerTLS(self.server_cert, self.server_key, client_ca=self.ca)

    def client(self) -> ClientTLS:
        """The router's side towards the replicas."""
        return ClientTLS(self.ca, self.client_cert, self.client_key, REPLICA_NAME)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
    )


def _write(folder: Path, name: str, data: bytes, private: bool = False) -> str:
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return str(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def loopback_pki(folder: str | Path, ca_name: str = "specdec loopback CA") -> LoopbackPKI:
    """Write a fresh CA, a replica certificate and a router certificate into ``folder``."""
    folder = Path(folder)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        _builder(ca_name, ca_name, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def issue(subject: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> tuple:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            _builder(subject, ca_name, key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return _cert_pem(cert), _key_pem(key)

    server_cert, server_key = issue(
        REPLICA_NAME,
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.DNSName(REPLICA_NAME),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
    )
    client_cert, client_key = issue(
        ROUTER_NAME, ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName(ROUTER_NAME)]
    )
    return LoopbackPKI(
        ca=_write(folder, "ca.crt", _cert_pem(ca_cert)),
        server_cert=_write(folder, "replica.crt", server_cert),
        server_key=_write(folder, "replica.key", server_key, private=True),
        client_cert=_write(folder, "router.crt", client_cert),
        client_key=_write(folder, "router.key", client_key, private=True),
    )
