"""``kiosk backup``, ``kiosk restore`` and ``kiosk keys generate | rotate``: the gallery's copies and its key."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kiosk import authz
from kiosk.cli._output import emit_json
from kiosk.config import Config
from kiosk.errors import GalleryCorruptError, GalleryError, InputError, TamperedError
from kiosk.gallery import Gallery
from kiosk.gallery.backup import backup_gallery
from kiosk.gallery.keys import AesGcmCipher, generate_key_file, load_cipher, read_key_file
from kiosk.gallery.open import gallery_in_use, move_damaged_aside, open_gallery

SQLITE_MAGIC = b"SQLite format 3\x00"


def register(sub: Any) -> None:
    p = sub.add_parser("backup", help="write an online backup of the gallery", description=cmd_backup.__doc__)
    p.add_argument("--out", type=Path, metavar="FILE", help="write here instead of gallery.backup_dir")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("restore", help="replace the gallery with a backup", description=cmd_restore.__doc__)
    p.add_argument("file", type=Path, metavar="FILE", help="a backup written by `kiosk backup`")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("keys", help="make and rotate the template encryption key", description=__doc__)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    v = verbs.add_parser("generate", help="write a new random key file (0600)", description=cmd_keys_generate.__doc__)
    v.add_argument("file", type=Path, metavar="FILE", help="the new key file (never overwritten)")
    v.set_defaults(func=cmd_keys_generate)
    v = verbs.add_parser(
        "rotate", help="re-encrypt every template with another key", description=cmd_keys_rotate.__doc__
    )
    target = v.add_mutually_exclusive_group(required=True)
    target.add_argument("--new-key", type=Path, metavar="FILE", help="key file to re-encrypt the templates with")
    target.add_argument("--decrypt", action="store_true", help="store the templates unencrypted again")
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    v.set_defaults(func=cmd_keys_rotate)


def cmd_backup(args: argparse.Namespace, cfg: Config) -> int:
    """Write an online backup of the gallery (SQLite's backup API: the kiosk keeps running) and print its path.
    Backups go to gallery.backup_dir (0700) as gallery-<UTC time>.db, the oldest pruned beyond
    gallery.backups_keep. A backup holds the templates as the gallery stores them (encrypted when it is on)."""
    with open_gallery(cfg, need_key=False) as g:
        path = backup_gallery(cfg, g, args.out)
    print(path)
    if args.out is not None:
        print(
            f"note: {path} is outside gallery.backup_dir; `kiosk people remove` cannot erase people from it",
            file=sys.stderr,
        )
    return 0


def _check_backup_file(path: Path) -> None:
    """Cheap checks before anything changes; the full validation (integrity, migrations, event chain) is
    Gallery.restore_from's."""
    try:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as err:
        raise InputError(f"{path} cannot be read: {err.strerror or err}") from None
    if head != SQLITE_MAGIC:
        raise TamperedError(f"{path} is not a gallery backup (not an SQLite database)")


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise InputError("refusing to replace the gallery without confirmation: pass --yes")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def cmd_restore(args: argparse.Namespace, cfg: Config) -> int:
    """Replace the gallery's content with a backup, after validating it (SQLite integrity, known schema, intact
    event chain). A readable gallery is first backed up to gallery.backup_dir and then restored in place, so a
    running kiosk picks the restored people up. A damaged gallery needs the kiosk stopped: it is moved aside as
    gallery.db.damaged-<time> and the backup restored into a fresh file."""
    src: Path = args.file
    _check_backup_file(src)
    live = cfg.gallery_path
    if src.resolve() == live.resolve():
        raise InputError(f"{src} is the gallery itself")
    # Encrypted templates in the backup are checked against the configured key, so restore needs it too.
    cipher = load_cipher(cfg) if cfg.gallery.encrypt else None
    # Validated in memory first: a bad file changes nothing and saves nothing.
    with Gallery(":memory:", cipher=cipher) as scratch:
        scratch.restore_from(src)
    try:
        gallery: Gallery | None = open_gallery(cfg, check_keys=False)
    except GalleryCorruptError:
        gallery = None
    if not args.yes and not _confirm(f"replace the gallery {live} with {src}?"):
        if gallery is not None:
            gallery.close()
        print("nothing restored")
        return 0
    if gallery is not None:
        with gallery:
            saved = backup_gallery(cfg, gallery, spare=src)
            print(f"saved the current gallery as {saved}")
            people = gallery.restore_from(src)
        print(f"restored {people} people from {src}")
        return 0
    # The live gallery is damaged: it cannot take the backup in place.
    if gallery_in_use(live):
        raise GalleryError(
            f"gallery {live} is damaged and still open in another process: stop the kiosk "
            "(systemctl stop kiosk), then run `kiosk restore` again"
        )
    aside = move_damaged_aside(live)
    print(f"moved the damaged gallery aside as {aside} (it still holds templates: delete it once inspected)")
    try:
        with Gallery(live, busy_timeout_s=cfg.gallery.busy_timeout_s, cipher=cipher, actor=authz.actor()) as fresh:
            people = fresh.restore_from(src)
    except BaseException:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{live}{suffix}").unlink(missing_ok=True)
        raise
    print(f"restored {people} people from {src}; start the kiosk again")
    return 0


def cmd_keys_generate(args: argparse.Namespace, cfg: Config) -> int:
    """Write a new random 256-bit key (64 hex characters) to FILE, created 0600 and never overwritten, and print
    its key id. Use it with `kiosk keys rotate --new-key FILE`, then as gallery.key_file or the service's
    credential (LoadCredential=gallery-key:FILE)."""
    kid = generate_key_file(args.file)
    print(f"wrote a new key to {args.file} (key id {kid}); keep a copy offline: without it the templates are lost")
    print(f"next: kiosk keys rotate --new-key {args.file}")
    return 0


def cmd_keys_rotate(args: argparse.Namespace, cfg: Config) -> int:
    """Re-encrypt every template in one transaction: from the configured key (or from plaintext) to the key in
    --new-key FILE, or back to plaintext with --decrypt. Backups made before keep the old encryption: they stay
    readable only with the old key, so deleting the old key crypto-shreds them."""
    new: AesGcmCipher | None = None
    if args.new_key is not None:
        new = AesGcmCipher(read_key_file(args.new_key, check_permissions=cfg.gallery.check_permissions))
    # Plaintext templates need no key to read; encrypted ones need the configured (old) key.
    with open_gallery(cfg, need_key=False) as probe:
        status = probe.encryption_status()
    encrypted = sorted(k for k, n in status.items() if k is not None and n)
    old: AesGcmCipher | None = None
    if encrypted:
        old = load_cipher(cfg) if cfg.gallery.encrypt else None
        if old is None or encrypted != [old.key_id]:
            have = f"the configured key is {old.key_id}" if old else "gallery.encrypt is off"
            raise InputError(
                f"templates are encrypted with key {', '.join(encrypted)} but {have}: configure that key "
                "(gallery.encrypt: true and gallery.key_file or the credential) to rotate from it"
            )
    with _open_with(cfg, old) as g:
        count = g.rekey(new)
    before = f"key {old.key_id}" if old else "unencrypted"
    after = f"key {new.key_id}" if new else "unencrypted"
    result: dict[str, Any] = {
        "templates": count,
        "from": old.key_id if old else None,
        "to": new.key_id if new else None,
    }
    if args.json:
        emit_json(result)
        return 0
    print(f"re-encrypted {count} template(s): {before} -> {after}")
    where = cfg.origin or "the config file"
    if new is not None:
        print(
            f"next: in {where} set gallery.encrypt: true and gallery.key_file: {args.new_key.resolve()} "
            f"(or replace the service's credential: LoadCredential={cfg.gallery.key_credential}:"
            f"{args.new_key.resolve()}), then restart the kiosk"
        )
    else:
        print(f"next: in {where} set gallery.encrypt: false, then restart the kiosk")
    if old is None and new is not None:
        print(
            f"backups made before now hold the templates unencrypted: once `kiosk backup` has made a new one, "
            f"delete the older ones in {cfg.backup_dir}"
        )
    if old is not None and (new is None or new.key_id != old.key_id):
        print(
            f"backups made before now stay readable only with the old key {old.key_id}: keep it to restore them, "
            "or delete it to crypto-shred them"
        )
    return 0


def _open_with(cfg: Config, cipher: AesGcmCipher | None) -> Gallery:
    """The gallery opened with ``cipher`` as its current key, whatever the config says (keys rotate only)."""
    return Gallery(cfg.gallery_path, busy_timeout_s=cfg.gallery.busy_timeout_s, cipher=cipher, actor=authz.actor())
