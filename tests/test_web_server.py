"""``kiosk web``: listeners (HOST:PORT, IPv6, TLS wherever not loopback, no plain HTTP on the network), certificates
(configured, or self-signed and reused), and the real server answering HTTPS with its own certificate."""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.client
import ipaddress
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from kiosk.config import Config, WebConfig
from kiosk.errors import ConfigError, ExitCode, ListenError
from kiosk.web import tls
from kiosk.web.server import Listener, bind, parse_listen, plan
from tests.helpers import config_file
from tools.measure.webproc import child_process

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"


def _cfg(tmp_path: Path, **web: object) -> Config:
    return Config(data_dir=tmp_path / "data", web=WebConfig(**web))


# -- listeners -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:8080", (None, "127.0.0.1", 8080)),
        ("[::1]:8080", (None, "::1", 8080)),
        ("[fe80::1%eth0]:8443", (None, "fe80::1%eth0", 8443)),
        ("0.0.0.0:8443", (None, "0.0.0.0", 8443)),
        ("localhost:80", (None, "localhost", 80)),
        ("https://127.0.0.1:8443", ("https", "127.0.0.1", 8443)),
        ("http://[::1]:8080/", ("http", "::1", 8080)),
    ],
)
def test_parse_listen(text: str, parsed: tuple[str | None, str, int]) -> None:
    assert parse_listen(text, "web.listen") == parsed


@pytest.mark.parametrize(
    "text",
    ["8080", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "::1:8080", "[::1]", "[nope]:80", "a b:80", "ftp://x:1"],
)
def test_a_bad_listener_is_a_config_error_naming_the_key(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^web\.door_listen: .* is not") as info:
        parse_listen(text, "web.door_listen")
    assert info.value.exit_code == ExitCode.CONFIG


def test_plan_tls_everywhere_but_loopback(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path,
        listen=("127.0.0.1:8080", "0.0.0.0:8443"),
        door_listen=("[::1]:8081",),
        admin_listen=("192.168.1.5:9443", "https://127.0.0.1:9444"),
    )
    got = {(lst.host, lst.port): (lst.tls, lst.door, lst.admin, lst.key) for lst in plan(cfg)}
    assert got == {
        ("127.0.0.1", 8080): (False, True, True, "web.listen"),
        ("0.0.0.0", 8443): (True, True, True, "web.listen"),
        ("::1", 8081): (False, True, False, "web.door_listen"),
        ("192.168.1.5", 9443): (True, False, True, "web.admin_listen"),
        ("127.0.0.1", 9444): (True, False, True, "web.admin_listen"),
    }
    assert Listener("::1", 8080, False, True, True, "x").url() == "http://[::1]:8080/"


def test_listen_option_replaces_web_listen(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, listen=("127.0.0.1:8080",), door_listen=("127.0.0.1:8081",))
    got = [(lst.key, lst.port) for lst in plan(cfg, ["[::1]:9000", "127.0.0.1:9001"])]
    assert got == [("--listen", 9000), ("--listen", 9001), ("web.door_listen", 8081)]


@pytest.mark.parametrize("text", ["http://0.0.0.0:8080", "http://192.168.1.5:80", "http://[2001:db8::1]:80"])
def test_plain_http_on_a_non_loopback_listener_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="plain HTTP is served only on loopback"):
        plan(_cfg(tmp_path, admin_listen=(text,)))


def test_the_same_address_twice_and_no_listener_are_refused(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"web\.door_listen: 127\.0\.0\.1:8080 is already a listener \(in web\.listen"
    ):
        plan(_cfg(tmp_path, listen=("127.0.0.1:8080",), door_listen=("127.0.0.1:8080",)))
    with pytest.raises(ConfigError, match="no listener"):
        plan(_cfg(tmp_path, listen=()))


def test_a_port_in_use_is_a_listen_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ListenError, match=f"web.listen: cannot listen on 127.0.0.1:{port}: Address already in use"):
            bind(Listener("127.0.0.1", port, False, True, True, "web.listen"))


# -- certificates ----------------------------------------------------------------------------------------------------


def test_a_self_signed_certificate_is_made_once_and_reused(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    cert, key = tls.certificate_files(cfg, ["0.0.0.0", "192.0.2.7", "kiosk.example"])
    assert (cert, key) == (cfg.tls_dir / "cert.pem", cfg.tls_dir / "key.pem")
    assert key.stat().st_mode & 0o777 == 0o600 and cfg.tls_dir.stat().st_mode & 0o777 == 0o700
    assert cfg.data_dir.stat().st_mode & 0o777 == 0o700
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    public = loaded.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    san = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = set(san.get_values_for_type(x509.IPAddress))
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"), ipaddress.ip_address("192.0.2.7")} <= ips
    names = set(san.get_values_for_type(x509.DNSName))
    assert {"localhost", socket.gethostname(), "kiosk.example"} <= names
    before = cert.read_bytes()
    assert tls.certificate_files(cfg) == (cert, key) and cert.read_bytes() == before  # reused


def test_an_expiring_or_unreadable_generated_certificate_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg(tmp_path)
    cert, _ = tls.certificate_files(cfg)
    first = cert.read_bytes()
    monkeypatch.setattr(tls, "RENEW_DAYS", tls.VALID_DAYS + 1)
    tls.certificate_files(cfg)
    assert cert.read_bytes() != first
    monkeypatch.undo()
    cert.write_text("garbage")
    tls.certificate_files(cfg)
    assert cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")


def test_a_configured_certificate_is_checked(tmp_path: Path) -> None:
    made_cert, made_key = tls.generate_self_signed(tmp_path / "mine")
    other_cert, _ = tls.generate_self_signed(tmp_path / "other")
    assert tls.certificate_files(_cfg(tmp_path, tls_cert=made_cert, tls_key=made_key)) == (made_cert, made_key)
    assert not (tmp_path / "data" / "tls").exists()  # nothing generated when one is configured
    with pytest.raises(ConfigError, match=r"web\.tls_key: must be set with web\.tls_cert"):
        tls.certificate_files(_cfg(tmp_path, tls_cert=made_cert))
    with pytest.raises(ConfigError, match=r"web\.tls_cert: .* is not a readable file"):
        tls.certificate_files(_cfg(tmp_path, tls_cert=tmp_path / "missing.pem", tls_key=made_key))
    with pytest.raises(ConfigError, match="not a PEM certificate and its private key"):
        tls.certificate_files(_cfg(tmp_path, tls_cert=other_cert, tls_key=made_key))


# -- the real server -------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Running:
    proc: subprocess.Popen[str]
    urls: dict[str, str]
    lines: list[str]
    data: Path


def _kiosk(cfg: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSK_")} | {"PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "kiosk", "-c", str(cfg), *args], input=stdin, capture_output=True, text=True,
        timeout=60, env=env, check=False,
    )  # fmt: skip


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Running]:
    """`kiosk web` in a subprocess: TLS forced on one loopback listener, plain HTTP on another, a door-only one."""
    cfg = config_file(
        tmp_path,
        "web:\n  listen: ['https://127.0.0.1:0']\n  door_listen: ['127.0.0.1:0']\n"
        "  admin_listen: ['http://[::1]:0']\n" if socket.has_ipv6 else
        "web:\n  listen: ['https://127.0.0.1:0']\n  door_listen: ['127.0.0.1:0']\n",
    )  # fmt: skip
    made = _kiosk(cfg, "web", "user", "add", "ada", "--role", "admin", stdin=PASSWORD + "\n")
    assert made.returncode == 0, made.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSK_")} | {"PYTHONPATH": str(ROOT)}
    with child_process([sys.executable, "-m", "kiosk", "-c", str(cfg), "web"], env) as web:
        web.wait_for("TLS certificate", timeout_s=60)
        urls: dict[str, str] = {}
        for ln in list(web.lines):
            m = re.search(r"serving (.+) on (\S+)", ln)
            if m:
                urls[m.group(2).split("://")[0] + ":" + m.group(1)] = m.group(2)
        assert urls, web.text()
        yield Running(web.proc, urls, web.lines, tmp_path / "data")


def _https(url: str, cafile: Path) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(cafile))  # trusts only the server's own certificate
    host, port = re.match(r"https://([\d.]+):(\d+)/", url).groups()
    return http.client.HTTPSConnection(host, int(port), context=context, timeout=10)


def test_the_server_serves_https_with_its_certificate_and_stops_cleanly(server: Running) -> None:
    cert = server.data / "tls" / "cert.pem"
    https_url = server.urls["https:the door screen and the admin app"]
    conn = _https(https_url, cert)  # verifies the chain and that 127.0.0.1 is in the certificate
    conn.request("GET", "/api/health")
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["loop"] in ("up", "down")
    assert r.getheader("strict-transport-security", "").startswith("max-age=")
    assert "frame-ancestors 'none'" in r.getheader("content-security-policy", "")
    peer = conn.sock.getpeercert(binary_form=True)
    assert peer == ssl.PEM_cert_to_DER_cert(cert.read_text())
    conn.request(
        "POST", "/api/session", body=json.dumps({"username": "ada", "password": PASSWORD}),
        headers={"content-type": "application/json"},
    )  # fmt: skip
    r = conn.getresponse()
    body = json.loads(r.read())
    cookie = r.getheader("set-cookie", "")
    assert r.status == 200 and body["account"]["name"] == "ada"
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    conn.close()
    # plain HTTP to the TLS port gets no page
    port = int(https_url.rsplit(":", 1)[1].strip("/"))
    plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        plain.request("GET", "/api/health")
        plain.getresponse().read()
    plain.close()
    # the door-only listener: plain HTTP on loopback, the door screen's routes but no admin API
    door_url = server.urls["http:the door screen"]
    host, port_text = door_url.removeprefix("http://").strip("/").rsplit(":", 1)
    door = http.client.HTTPConnection(host, int(port_text), timeout=10)
    door.request("GET", "/api/health")
    health = door.getresponse()
    assert health.status == 200 and "loop" in json.loads(health.read())
    door.request("POST", "/api/session", body="{}", headers={"content-type": "application/json"})
    response = door.getresponse()
    response.read()
    assert response.status in (404, 405)
    door.close()
    assert server.data.joinpath("tls", "key.pem").stat().st_mode & 0o777 == 0o600
    if socket.has_ipv6:
        assert server.urls["http:the admin app"].startswith("http://[::1]:")
    os.kill(server.proc.pid, signal.SIGTERM)
    assert server.proc.wait(timeout=20) == 0
    log = "".join(server.lines)
    assert PASSWORD not in log and "Traceback" not in log


def test_a_server_without_accounts_says_how_to_make_one(tmp_path: Path) -> None:
    cfg = config_file(tmp_path, "web:\n  listen: ['127.0.0.1:0']\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSK_")} | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiosk", "-c", str(cfg), "web"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        text=True, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        first, second = proc.stderr.readline(), proc.stderr.readline()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=20)
        proc.stderr.close()
    assert code == 0, first + second
    assert re.fullmatch(r"kiosk web: serving the door screen and the admin app on http://127\.0\.0\.1:\d+/\n", first)
    assert "no web accounts yet: make the first admin with `kiosk web user add NAME --role admin`" in second


def test_a_config_error_stops_the_start_with_one_line(tmp_path: Path) -> None:
    cfg = config_file(tmp_path, "web:\n  listen: ['http://0.0.0.0:8080']\n")
    result = _kiosk(cfg, "web")
    assert result.returncode == ExitCode.CONFIG
    assert result.stderr.strip().splitlines() == [
        "kiosk: error: web.listen: 'http://0.0.0.0:8080': plain HTTP is served only on loopback addresses "
        "(127.0.0.1, ::1); drop 'http://' to serve 0.0.0.0:8080 with TLS"
    ]
    result = _kiosk(cfg, "web", "--listen", "localhost")
    assert result.returncode == ExitCode.CONFIG and "--listen: 'localhost' is not HOST:PORT" in result.stderr


def test_a_generated_certificate_covers_the_wildcard_listeners_host(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    cert, _ = tls.certificate_files(cfg, ["0.0.0.0"])
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    assert loaded.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    san = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert socket.gethostname() in san.get_values_for_type(x509.DNSName)
