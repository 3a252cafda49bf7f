"""Transport security: TLS and mutual TLS, configured by settings or by the server's flags.

A throwaway CA (and a second, untrusted one) is made with ``cryptography`` for each run: a server
certificate for 127.0.0.1 and localhost, and client certificates. With TLS on, a client that
trusts the CA is served and a plaintext client is refused; with a client CA (mutual TLS), a
client without a certificate, or with one from another CA, is refused.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flightlog.v1 import session_service_pb2 as pb
from flightlog.v1 import session_service_pb2_grpc
from flightlog_server.app import ServerSettings, TlsSettings
from flightlog_server.storage.database import DatabaseSettings
from tests.reliability.helpers import SERVING, health, outcome, poll
from tests.reliability.private_postgres import free_port
from tests.support import Identity, ServerThread

# --- a throwaway PKI ---------------------------------------------------------------------------

CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
    encipher_only=False, decipher_only=False,
)  # fmt: skip


@dataclass(frozen=True)
class Pem:
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes]:
        return self.cert.read_bytes(), self.key.read_bytes()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pem:
    pem = Pem(folder / f"{stem}.crt", folder / f"{stem}.key")
    pem.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pem


class Authority:
    """A certificate authority that issues server and client certificates into ``folder``."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(CA_KEY_USAGE, critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = _write(folder, name, self.cert, self.key)

    def issue(self, name: str, *, server: bool) -> Pem:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return _write(self.folder, name, builder.sign(self.key, hashes.SHA256()), key)


@dataclass(frozen=True)
class Pki:
    ca: Authority
    server: Pem
    client: Pem
    stranger: Pem  # a client certificate from a CA the server does not trust
    other_ca: Authority


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = Authority(folder, "flightlog-test-ca")
    other = Authority(folder, "some-other-ca")
    return Pki(
        ca=ca,
        server=ca.issue("flightlog-server", server=True),
        client=ca.issue("flightlog-client", server=False),
        stranger=other.issue("stranger", server=False),
        other_ca=other,
    )


# --- servers and clients -------------------------------------------------------------------------


def tls_server(database_url: str, tls: TlsSettings) -> ServerThread:
    return ServerThread(
        ServerSettings(
            database=DatabaseSettings(url=database_url, pool_size=2),
            bind="127.0.0.1:0",
            auth_cache_seconds=0,
            grace_seconds=1,
            tls=tls,
        )
    )


@pytest.fixture(scope="module")
def tls_target(database_url: str, pki: Pki) -> Iterator[str]:
    server = tls_server(database_url, TlsSettings(cert=pki.server.cert, key=pki.server.key))
    yield f"127.0.0.1:{server.port}"
    server.stop()


@pytest.fixture(scope="module")
def mtls_target(database_url: str, pki: Pki) -> Iterator[str]:
    server = tls_server(
        database_url,
        TlsSettings(cert=pki.server.cert, key=pki.server.key, client_ca=pki.ca.pem.cert),
    )
    yield f"127.0.0.1:{server.port}"
    server.stop()


def credentials(ca: Authority, client: Pem | None = None) -> grpc.ChannelCredentials:
    chain, key = client.read() if client else (None, None)
    return grpc.ssl_channel_credentials(
        root_certificates=ca.pem.cert.read_bytes(), private_key=key, certificate_chain=chain
    )


def create_session(target: str, who: Identity, creds: grpc.ChannelCredentials | None) -> str:
    """Creates a session over a TLS channel (or a plaintext one when ``creds`` is None)."""
    with grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target) as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        response = stub.CreateSession(
            pb.CreateSessionRequest(name="over tls"),
            metadata=(("authorization", f"Bearer {who.api_key}"), ("x-org-id", who.org_id)),
            timeout=5,
        )
    session_id: str = response.session.session_id
    return session_id


def refused(target: str, who: Identity, creds: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    code, _ = outcome(lambda: create_session(target, who, creds))
    return code


# --- the properties ------------------------------------------------------------------------------


def test_tls_serves_a_client_that_trusts_the_ca(
    tls_target: str, identity: Identity, pki: Pki
) -> None:
    assert create_session(tls_target, identity, credentials(pki.ca)).startswith("ss_")
    assert health(tls_target, credentials=credentials(pki.ca)) == SERVING
    # The certificate names localhost too.
    port = tls_target.rsplit(":", 1)[1]
    assert create_session(f"localhost:{port}", identity, credentials(pki.ca)).startswith("ss_")


def test_tls_refuses_a_plaintext_client(tls_target: str, identity: Identity) -> None:
    assert refused(tls_target, identity, None) == grpc.StatusCode.UNAVAILABLE


def test_tls_client_refuses_a_server_its_ca_did_not_sign(
    tls_target: str, identity: Identity, pki: Pki
) -> None:
    assert refused(tls_target, identity, credentials(pki.other_ca)) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_serves_a_client_with_a_certificate_from_the_client_ca(
    mtls_target: str, identity: Identity, pki: Pki
) -> None:
    assert create_session(mtls_target, identity, credentials(pki.ca, pki.client)).startswith("ss_")


def test_mutual_tls_refuses_a_client_without_a_certificate(
    mtls_target: str, identity: Identity, pki: Pki
) -> None:
    assert refused(mtls_target, identity, credentials(pki.ca)) == grpc.StatusCode.UNAVAILABLE
    assert refused(mtls_target, identity, None) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_a_certificate_from_another_ca(
    mtls_target: str, identity: Identity, pki: Pki
) -> None:
    code = refused(mtls_target, identity, credentials(pki.ca, pki.stranger))
    assert code == grpc.StatusCode.UNAVAILABLE


def test_the_tls_flags_configure_the_server_process(
    database_url: str, identity: Identity, pki: Pki, tmp_path: Path
) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    with (tmp_path / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "flightlog_server", "serve", "--no-migrate",
                "--database-url", database_url,
                "--bind", target,
                "--tls-cert", str(pki.server.cert),
                "--tls-key", str(pki.server.key),
                "--tls-client-ca", str(pki.ca.pem.cert),
                "--log-level", "WARNING",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            good = credentials(pki.ca, pki.client)
            poll(
                lambda: process.poll() is not None or health(target, credentials=good) == SERVING,
                60,
                "the TLS server process starts serving",
            )
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            assert create_session(target, identity, good).startswith("ss_")
            assert refused(target, identity, credentials(pki.ca)) == grpc.StatusCode.UNAVAILABLE
            assert refused(target, identity, None) == grpc.StatusCode.UNAVAILABLE
        finally:
            process.terminate()
            assert process.wait(15) == 0
