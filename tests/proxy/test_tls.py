"""HTTPS and WSS upstreams: verified against a configured CA file, refused otherwise."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from bastion.http.problems import BastionError
from bastion.proxy import RouteConfig
from proxy.harness import MakeProxy, call, serve_asgi, serve_gateway, upstream_app

x509 = pytest.importorskip("cryptography.x509")
hashes = pytest.importorskip("cryptography.hazmat.primitives.hashes")
serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
ec = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ec")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "bastion test upstream")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_path = directory / "upstream.pem"
    key_path = directory / "upstream.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
async def tls_upstream(certificate: tuple[Path, Path]) -> AsyncIterator[str]:
    cert, key = certificate
    async with serve_asgi(upstream_app, ssl_certfile=str(cert), ssl_keyfile=str(key)) as url:
        yield url.replace("http://", "https://")


async def test_https_upstream_verified_with_the_configured_ca(
    tls_upstream: str, make_proxy: MakeProxy, certificate: tuple[Path, Path]
) -> None:
    gateway = await make_proxy(
        [RouteConfig(name="tls", upstream=tls_upstream)], upstream_ca_file=str(certificate[0])
    )
    for _ in range(3):
        exchange = await call(gateway, "GET", "/inspect")
        assert exchange.status == 200
        assert exchange.json()["raw_path"] == "/inspect"
    port = int(tls_upstream.rsplit(":", 1)[1])
    assert gateway.proxy.client.pool("https", "127.0.0.1", port).connections_opened == 1


async def test_https_upstream_with_an_untrusted_certificate_is_502(
    tls_upstream: str, make_proxy: MakeProxy
) -> None:
    gateway = await make_proxy([RouteConfig(name="tls", upstream=tls_upstream)])
    with pytest.raises(BastionError) as caught:
        await call(gateway, "GET", "/inspect")
    assert caught.value.code == "upstream_unavailable"
    assert gateway.upstream_errors("tls", "connect") == 1


async def test_wss_upstream(
    tls_upstream: str, make_proxy: MakeProxy, certificate: tuple[Path, Path]
) -> None:
    gateway = await make_proxy(
        [RouteConfig(name="tls", upstream=tls_upstream)], upstream_ca_file=str(certificate[0])
    )
    async with (
        serve_gateway(gateway) as front,
        connect("ws://" + front.removeprefix("http://") + "/ws/echo") as ws,
    ):
        await ws.send("over tls")
        assert await ws.recv() == "over tls"
