"""``jinsuan serve`` as an operator starts it: it says where it listens, which database (never
its password) and flavour, and which background jobs run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from servers import free_port


def test_serve_says_where_it_listens_which_store_and_which_jobs(database_url: str) -> None:
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    info["password"] = "Sup3r-Secret-pw"  # trust auth ignores it; it must never be printed
    port = free_port()
    env = {**os.environ, "DATABASE_URL": psycopg.conninfo.make_conninfo(**info),
           "JINSUAN_PORT": str(port), "JINSUAN_ROLLUP_EVERY_S": "120"}
    server = subprocess.Popen([sys.executable, "-m", "jinsuan.cli", "serve"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not any(line.startswith("background jobs") for line in lines):
            assert time.monotonic() < deadline, lines
            line = server.stdout.readline()  # type: ignore[union-attr]
            assert line or server.poll() is None, lines
            lines.append(line.strip())
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = "\n".join(lines)
    assert f"listening on http://127.0.0.1:{port}" in text
    assert f"postgresql://{info['user']}@{info['host']}:{info['port']}/{info['dbname']}" in text
    assert "(plain PostgreSQL)" in text or "(TimescaleDB)" in text
    assert "rollups every 120 s" in text
    assert "Sup3r-Secret-pw" not in text


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as an operator's CA would issue one."""
    from datetime import UTC, datetime, timedelta
    from ipaddress import IPv4Address

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jinsuan test")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "platform.crt", directory / "platform.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_serve_speaks_tls_from_a_certificate_in_settings(database_url: str,
                                                         tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "JINSUAN_PORT": str(port),
           "JINSUAN_RUN_BACKGROUND_JOBS": "false", "JINSUAN_TLS_CERT_FILE": str(cert),
           "JINSUAN_TLS_KEY_FILE": str(key)}
    server = subprocess.Popen([sys.executable, "-m", "jinsuan.cli", "serve"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = server.stdout.readline()  # type: ignore[union-attr]
        assert f"listening on https://127.0.0.1:{port}" in line, line
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=str(cert))
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline and server.poll() is None
                time.sleep(0.1)
        assert answer.status_code == 200
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not spoken on the TLS port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_certificate_without_its_key_is_refused_at_start(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from jinsuan.kernel.settings import Settings

    cert, _ = _self_signed(tmp_path)
    with pytest.raises(ValidationError, match="go together"):
        Settings(tls_cert_file=cert)
    with pytest.raises(ValidationError, match="not a readable file"):
        Settings(tls_cert_file=cert, tls_key_file=tmp_path / "missing.key")
