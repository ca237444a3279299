"""Template encryption keys: AES-GCM, and loading the key from a file or a systemd credential (issue #6 part 4)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from kiosk.cli import main
from kiosk.config import Config, parse_config
from kiosk.errors import ExitCode, InputError, InsecureStorageError, TemplateKeyError
from kiosk.gallery.keys import AesGcmCipher, generate_key_file, key_id, load_cipher, parse_key

KEY = bytes(range(32))


def _cfg(tmp_path: Path, **gallery: object) -> Config:
    return parse_config({"data_dir": str(tmp_path / "data"), "gallery": {"encrypt": True, **gallery}})


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_cipher_round_trip_binds_the_row_and_hides_the_key() -> None:
    c = AesGcmCipher(KEY)
    blob = c.encrypt(b"template bytes", b"1|sface|abc|128")
    assert len(blob) == 12 + len(b"template bytes") + 16 and b"template" not in blob
    assert c.decrypt(blob, b"1|sface|abc|128") == b"template bytes"
    assert c.encrypt(b"template bytes", b"a") != c.encrypt(b"template bytes", b"a"), "nonces must be fresh"
    with pytest.raises(TemplateKeyError, match=c.key_id):
        c.decrypt(blob, b"2|sface|abc|128")  # moved to another person
    with pytest.raises(TemplateKeyError):
        AesGcmCipher(bytes(32)).decrypt(blob, b"1|sface|abc|128")  # wrong key
    flipped = bytearray(blob)
    flipped[20] ^= 1
    with pytest.raises(TemplateKeyError):
        c.decrypt(bytes(flipped), b"1|sface|abc|128")
    with pytest.raises(TemplateKeyError, match="truncated"):
        c.decrypt(blob[:20], b"1|sface|abc|128")
    assert KEY.hex() not in repr(c) and c.key_id in repr(c)
    assert c.key_id == key_id(KEY) and len(c.key_id) == 16 and c.key_id not in KEY.hex()
    assert key_id(KEY) != key_id(bytes(32))
    with pytest.raises(TemplateKeyError, match="32 bytes"):
        AesGcmCipher(KEY[:16])


@pytest.mark.parametrize(
    "content",
    [KEY, KEY.hex().encode(), KEY.hex().encode() + b"\n", KEY.hex().upper().encode() + b"\r\n"],
    ids=["raw", "hex", "hex-newline", "hex-crlf"],
)
def test_key_file_formats(tmp_path: Path, content: bytes) -> None:
    path = _write(tmp_path / "k", content)
    assert load_cipher(_cfg(tmp_path, key_file=str(path))).key_id == key_id(KEY)


@pytest.mark.parametrize(
    "content",
    [KEY[:31], KEY + b"\n", KEY.hex()[:-2].encode() + b"\n", b"z" * 64, b"", KEY.hex().encode() + b"\n\n"],
    ids=["31-raw", "33-raw", "62-hex", "64-not-hex", "empty", "two-newlines"],
)
def test_wrong_key_lengths_are_refused_without_echoing_the_key(tmp_path: Path, content: bytes) -> None:
    path = _write(tmp_path / "k", content)
    with pytest.raises(TemplateKeyError, match="not a key") as exc:
        load_cipher(_cfg(tmp_path, key_file=str(path)))
    assert KEY.hex()[:16] not in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(TemplateKeyError):
        parse_key(content, "test")


def test_missing_and_unreadable_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(TemplateKeyError, match="does not exist"):
        load_cipher(_cfg(tmp_path, key_file=str(tmp_path / "nope")))
    with pytest.raises(TemplateKeyError, match="LoadCredential=gallery-key"):
        load_cipher(_cfg(tmp_path))  # no key file and no credentials folder
    with pytest.raises(TemplateKeyError, match="not a regular file"):
        load_cipher(_cfg(tmp_path, key_file=str(tmp_path)))


def test_credential_from_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    # systemd owns the credentials folder and its modes: a 0440 credential is not refused.
    _write(creds / "gallery-key", KEY.hex().encode() + b"\n", 0o440)
    _write(creds / "other-key", bytes(32))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load_cipher(_cfg(tmp_path)).key_id == key_id(KEY)
    assert load_cipher(_cfg(tmp_path, key_credential="other-key")).key_id == key_id(bytes(32))
    with pytest.raises(TemplateKeyError, match="missing-key"):
        load_cipher(_cfg(tmp_path, key_credential="missing-key"))
    # A key file, when configured, wins over the credential.
    path = _write(tmp_path / "file-key", bytes(32))
    assert load_cipher(_cfg(tmp_path, key_file=str(path))).key_id == key_id(bytes(32))


def test_group_readable_key_file_is_insecure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "k", KEY, 0o640)
    with pytest.raises(InsecureStorageError, match="chmod 600"):
        load_cipher(_cfg(tmp_path, key_file=str(path)))
    assert load_cipher(_cfg(tmp_path, key_file=str(path), check_permissions=False)).key_id == key_id(KEY)
    # Through the CLI: any command that needs the key exits INSECURE, with one line.
    cfg = tmp_path / "kiosk.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\ngallery:\n  encrypt: true\n  key_file: {path}\n")
    assert main(["--config", str(cfg), "keys", "rotate", "--new-key", str(path)]) == ExitCode.INSECURE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mode 0640" in err


def test_generate_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys" / "gallery.key"
    kid = generate_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    text = path.read_text()
    assert len(text) == 65 and text.endswith("\n") and key_id(bytes.fromhex(text.strip())) == kid
    before = path.read_bytes()
    with pytest.raises(InputError, match="refusing to overwrite"):
        generate_key_file(path)
    assert path.read_bytes() == before
    # The CLI prints the key id, never the key.
    other = tmp_path / "other.key"
    assert main(["keys", "generate", str(other)]) == 0
    out = capsys.readouterr().out
    secret = other.read_text().strip()
    assert key_id(bytes.fromhex(secret)) in out and secret not in out
    assert main(["keys", "generate", str(other)]) == ExitCode.INPUT


def test_missing_cryptography_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(TemplateKeyError, match=r"face-kiosk\[secure\]"):
        AesGcmCipher(KEY)


def test_umask_does_not_widen_a_generated_key(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        generate_key_file(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
