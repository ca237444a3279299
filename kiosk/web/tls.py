"""TLS for ``kiosk web``: the configured certificate (``web.tls_cert``/``web.tls_key``), else a self-signed one made on
first start in ``<data_dir>/tls`` and reused after: EC P-256, the host's name and the listeners' addresses in its
subjectAltName, the key private to the service (0600 in a 0700 folder). Its SHA-256 fingerprint is logged, so the
first visit's browser warning can be checked against it."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import socket
from collections.abc import Iterable
from pathlib import Path

from kiosk.config import Config
from kiosk.errors import ConfigError

log = logging.getLogger(__name__)

CERT_NAME, KEY_NAME = "cert.pem", "key.pem"
VALID_DAYS = 825
RENEW_DAYS = 30  # a generated certificate this close to its end is replaced at the next start


def certificate_files(cfg: Config, addresses: Iterable[str] = ()) -> tuple[Path, Path]:
    """The (certificate, key) files to serve TLS with; a self-signed pair is made when none is configured."""
    cert, key = cfg.web.tls_cert, cfg.web.tls_key
    if (cert is None) != (key is None):
        given, missing = ("web.tls_cert", "web.tls_key") if cert is not None else ("web.tls_key", "web.tls_cert")
        raise ConfigError(f"{missing}: must be set with {given} (a certificate and its private key)")
    if cert is not None and key is not None:
        for name, path in (("web.tls_cert", cert), ("web.tls_key", key)):
            if not path.is_file() or not os.access(path, os.R_OK):
                raise ConfigError(f"{name}: {path} is not a readable file")
        _check_pair(cert, key)
        return cert, key
    folder = cfg.tls_dir
    cert, key = folder / CERT_NAME, folder / KEY_NAME
    if cert.is_file() and key.is_file() and _still_good(cert):
        return cert, key
    generate_self_signed(folder, addresses)
    return cert, key


def _check_pair(cert: Path, key: Path) -> None:
    """ConfigError unless the files are a PEM certificate and its own private key."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as err:
        raise ConfigError(
            f"web.tls_cert/web.tls_key: {cert} and {key} are not a PEM certificate and its private key ({err})"
        ) from None


def _still_good(cert: Path) -> bool:
    from cryptography import x509

    try:
        loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    except ValueError:
        return False
    return loaded.not_valid_after_utc - dt.timedelta(days=RENEW_DAYS) > dt.datetime.now(dt.UTC)


def fingerprint(cert: Path) -> str:
    """SHA-256 fingerprint of a PEM certificate, as browsers show it (AB:CD:...)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    digest = x509.load_pem_x509_certificate(cert.read_bytes()).fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


def _names(addresses: Iterable[str]) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    """DNS names and IP addresses the certificate should cover: this host, localhost, the listeners' addresses
    (a wildcard listener: the addresses this host's name resolves to)."""
    host = socket.gethostname()
    dns = sorted({n for n in (host, f"{host}.local", "localhost") if n and n.isascii()})
    ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    wildcard = False
    for a in addresses:
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            if a.isascii():
                dns.append(a)
            continue
        if ip.is_unspecified:
            wildcard = True
        else:
            ips.add(ip)
    if wildcard:
        try:
            for info in socket.getaddrinfo(host, None):
                ips.add(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
        except OSError:
            pass
    return sorted(set(dns)), sorted(ips, key=lambda i: (i.version, int(i)))


def generate_self_signed(folder: Path, addresses: Iterable[str] = ()) -> tuple[Path, Path]:
    """Write a new self-signed certificate and its key to ``folder`` (replacing an old pair)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    dns, ips = _names(addresses)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0] if dns else "face-kiosk")])
    now = dt.datetime.now(dt.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ip) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the data directory: private from the start
        folder.mkdir(mode=0o700, exist_ok=True)
        _write_private(folder / KEY_NAME, key_pem)
        _write_private(folder / CERT_NAME, cert.public_bytes(serialization.Encoding.PEM))
    except OSError as err:
        raise ConfigError(f"web.tls_cert: cannot write a self-signed certificate to {folder}: {err}") from None
    log.info("made a self-signed TLS certificate in %s for %s", folder, ", ".join([*dns, *map(str, ips)]))
    return folder / CERT_NAME, folder / KEY_NAME


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new 0600 file and move it over ``path`` (a reader never sees half a key)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
