"""``Gallery``: the gallery database's people and their model-tagged templates, encrypted at rest with a
``TemplateCipher``; access rules, events, backup and the connection come from the classes it builds on."""

from __future__ import annotations

import logging
import math
import unicodedata
from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import numpy as np
from sqlite_utils import Database

from kiosk.errors import DuplicateError, InputError, PersonNotFoundError
from kiosk.gallery import utc_iso
from kiosk.gallery.access import AccessStore
from kiosk.gallery.backup import GalleryBackup
from kiosk.gallery.connection import GalleryConnection
from kiosk.gallery.events import EventLog
from kiosk.gallery.records import (
    GalleryMatrix,
    Person,
    TemplateCipher,
    TemplateIn,
    _as_id,
    _check_window,
    _embedding_blob,
    _has_surrogate,
    _opt_dt,
    _opt_iso,
    _template_aad,
    clean_credential,
    clean_name,
)

# NOTE: the name of the module this code came from (kiosk/gallery.py), so log lines and their filters stay as they were.
logger = logging.getLogger("kiosk.gallery")

_PERSON_SQL = """SELECT p.id, p.name, p.created, p.enabled, p.valid_from, p.valid_until, p.note, p.credential,
    (SELECT count(*) FROM templates t WHERE t.person_id = p.id) AS templates FROM people p"""


class Gallery(AccessStore, GalleryBackup, EventLog, GalleryConnection):
    """The gallery database; ``Gallery(":memory:")`` for tests. A context manager; close() is idempotent.

    ``cipher`` encrypts new templates and decrypts stored ones (None: plaintext float32). ``actor`` (who runs an
    admin command) makes every change also write an ``admin`` event naming them, in the change's own transaction.
    """

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- people ----------------------------------------------------------------------------------------------

    def get_person(self, ref: str | int) -> Person:
        """By id or case-insensitive name (a digits-only name that matches nobody is tried as an id)."""
        rows: list[dict[str, Any]] = []
        if isinstance(ref, str) and not _has_surrogate(ref):
            rows = self._rows(_PERSON_SQL + " WHERE p.name = ?", [unicodedata.normalize("NFC", ref.strip())])
        if not rows and (person_id := _as_id(ref)) is not None:
            rows = self._rows(_PERSON_SQL + " WHERE p.id = ?", [person_id])
        if not rows:
            raise PersonNotFoundError(f"no person {ref!r} in the gallery; see `kiosk people list`")
        r = rows[0]
        r.update(created=datetime.fromisoformat(r["created"]), enabled=bool(r["enabled"]))
        r.update(valid_from=_opt_dt(r["valid_from"]), valid_until=_opt_dt(r["valid_until"]))
        return Person(**r)

    def list_people(self) -> list[Person]:
        """Everyone, by name."""
        return [self.get_person(int(r["id"])) for r in self._rows("SELECT id FROM people ORDER BY name, id")]

    def _insert_person(self, db: Database, name: str, fields: dict[str, Any]) -> int:
        _check_window(fields["valid_from"], fields["valid_until"])
        taken = db.execute("SELECT id, name FROM people WHERE name = ?", [name]).fetchone()
        if taken:
            raise DuplicateError(
                f"a person named {taken[1]!r} already exists (id {taken[0]}); choose another name, "
                "or add templates to the existing person"
            )
        values = [name, utc_iso(), int(fields["enabled"]), _opt_iso(fields["valid_from"])]
        values += [_opt_iso(fields["valid_until"]), fields["note"]]
        sql = "INSERT INTO people (name, created, enabled, valid_from, valid_until, note) VALUES (?,?,?,?,?,?)"
        person_id = int(db.execute(sql, values).lastrowid or 0)
        logger.info("gallery: added person id=%d", person_id)
        return person_id

    def add_person(
        self,
        name: str,
        *,
        enabled: bool = True,
        valid_from: datetime | None = None,
        valid_until: datetime | None = None,
        note: str | None = None,
    ) -> Person:
        """Create a person without templates; DuplicateError when the name is taken (case-insensitively)."""
        name = clean_name(name)
        fields = {"enabled": enabled, "valid_from": valid_from, "valid_until": valid_until, "note": note}
        with self._write() as db:
            person_id = self._insert_person(db, name, fields)
            self._audit(db, "added", person_id, name, {"enabled": bool(enabled)})
        return self.get_person(person_id)

    def enroll(
        self,
        name: str,
        templates: Sequence[TemplateIn],
        *,
        append: bool = False,
        enabled: bool = True,
        valid_from: datetime | None = None,
        valid_until: datetime | None = None,
        note: str | None = None,
    ) -> Person:
        """Create the person (or with append=True add to an existing one) and store all templates, atomically.

        Either everything is stored or nothing is. The person fields apply only when the person is created.
        """
        name = clean_name(name)
        if not templates:
            raise InputError(f"no templates to enrol for {name!r}")
        fields = {"enabled": enabled, "valid_from": valid_from, "valid_until": valid_until, "note": note}
        with self._write() as db:
            existing = db.execute("SELECT id, name FROM people WHERE name = ?", [name]).fetchone()
            if existing and append:
                person_id, stored_name, action = int(existing[0]), str(existing[1]), "templates added"
            else:
                person_id, stored_name, action = self._insert_person(db, name, fields), name, "enrolled"
            for template in templates:
                self._insert_template(db, person_id, template)
            self._audit(db, action, person_id, stored_name, {"templates": len(templates)})
        logger.info("gallery: enrolled person id=%d with %d template(s)", person_id, len(templates))
        return self.get_person(person_id)

    def rename(self, ref: str | int, new_name: str) -> Person:
        """Rename a person; DuplicateError when somebody else already has the new name."""
        new_name, person = clean_name(new_name), self.get_person(ref)
        with self._write() as db:
            sql = "SELECT id, name FROM people WHERE name = ? AND id != ?"
            if other := db.execute(sql, [new_name, person.id]).fetchone():
                raise DuplicateError(f"a person named {other[1]!r} already exists (id {other[0]})")
            db.execute("UPDATE people SET name = ? WHERE id = ?", [new_name, person.id])
            self._audit(db, "renamed", person.id, new_name, {"from": person.name})
        return self.get_person(person.id)

    def set_enabled(self, ref: str | int, enabled: bool) -> Person:
        """Enable or disable a person; a disabled person's templates are left out of ``matrix()``."""
        person = self.get_person(ref)
        with self._write() as db:
            db.execute("UPDATE people SET enabled = ? WHERE id = ?", [int(enabled), person.id])
            self._audit(db, "enabled" if enabled else "disabled", person.id, person.name)
        logger.info("gallery: person id=%d enabled=%s", person.id, enabled)
        return self.get_person(person.id)

    def set_validity(self, ref: str | int, valid_from: datetime | None, valid_until: datetime | None) -> Person:
        """Admit a person only while valid_from <= t < valid_until (None = unbounded on that side)."""
        _check_window(valid_from, valid_until)
        person = self.get_person(ref)
        window = {"valid_from": _opt_iso(valid_from), "valid_until": _opt_iso(valid_until)}
        with self._write() as db:
            db.execute(
                "UPDATE people SET valid_from = ?, valid_until = ? WHERE id = ?",
                [window["valid_from"], window["valid_until"], person.id],
            )
            self._audit(db, "validity set", person.id, person.name, window)
        return self.get_person(person.id)

    def set_credential(self, ref: str | int, credential: str | None) -> Person:
        """Set a person's card number for an access panel (``door.driver: osdp``), or clear it with None.
        Digits only, at most 20 (``clean_credential``). The audit event and the log say that it changed, never
        the number."""
        value = None if credential is None else clean_credential(credential)
        person = self.get_person(ref)
        with self._write() as db:
            db.execute("UPDATE people SET credential = ? WHERE id = ?", [value, person.id])
            self._audit(db, "credential set" if value is not None else "credential cleared", person.id, person.name)
        logger.info("gallery: person id=%d credential %s", person.id, "set" if value is not None else "cleared")
        return self.get_person(person.id)

    def remove(self, ref: str | int) -> int:
        """Delete a person and their templates in one transaction and erase them; returns the templates erased.

        secure_delete zeroes the freed cells and pages; the checkpoint that follows copies the zeroed pages into
        the main file and truncates the WAL, which would otherwise keep the template's old page until later.
        """
        person = self.get_person(ref)
        with self._write() as db:
            erased = int(db.execute("SELECT count(*) FROM templates WHERE person_id = ?", [person.id]).fetchone()[0])
            db.execute("DELETE FROM templates WHERE person_id = ?", [person.id])
            db.execute("DELETE FROM people WHERE id = ?", [person.id])
            self._audit(db, "removed", person.id, person.name, {"templates": erased})
        self._checkpoint("erased templates")
        logger.info("gallery: removed person id=%d and %d template(s)", person.id, erased)
        return erased

    # -- templates -------------------------------------------------------------------------------------------

    def _insert_template(self, db: Database, person_id: int, t: TemplateIn) -> None:
        blob, dim = _embedding_blob(t.embedding)
        if not t.model_id or not t.model_sha256:
            raise InputError("a template needs its model_id and model_sha256")
        if not math.isfinite(quality := float(t.quality)):
            raise InputError(f"template quality must be finite, got {quality}")
        sql = "SELECT dim FROM templates WHERE model_id = ? AND model_sha256 = ? LIMIT 1"
        known = db.execute(sql, [t.model_id, t.model_sha256]).fetchone()
        if known and int(known[0]) != dim:
            raise InputError(f"embedding has {dim} values but model {t.model_id} produces {known[0]}")
        key_id = None
        if self._cipher is not None:
            blob = self._cipher.encrypt(blob, _template_aad(person_id, t.model_id, t.model_sha256, dim))
            key_id = self._cipher.key_id
        sql = """INSERT INTO templates (person_id, embedding, dim, model_id, model_sha256, quality, source,
                 created, key_id) VALUES (?,?,?,?,?,?,?,?,?)"""
        values = [person_id, blob, dim, t.model_id, t.model_sha256, quality, str(t.source), utc_iso(), key_id]
        db.execute(sql, values)

    def templates(self, ref: str | int) -> list[dict[str, Any]]:
        """One person's templates, oldest first: id, quality, created, source, model_id, model_sha256 (never the
        embedding itself)."""
        person = self.get_person(ref)
        sql = """SELECT id, quality, created, source, model_id, model_sha256 FROM templates WHERE person_id = ?
                 ORDER BY id"""
        return self._rows(sql, [person.id])

    def delete_template(self, ref: str | int, template_id: int) -> Person:
        """Delete and erase one template of a person (a bad photo); PersonNotFoundError when the person has no
        template with that id. The freed pages are zeroed and the WAL checkpointed, as in ``remove``."""
        person = self.get_person(ref)
        tid = _as_id(template_id) if isinstance(template_id, int) else None
        missing = PersonNotFoundError(f"{person.name!r} has no template {template_id}; see their templates")
        if tid is None:
            raise missing
        with self._write() as db:
            if db.execute("DELETE FROM templates WHERE id = ? AND person_id = ?", [tid, person.id]).rowcount != 1:
                raise missing
            left = int(db.execute("SELECT count(*) FROM templates WHERE person_id = ?", [person.id]).fetchone()[0])
            self._audit(db, "template deleted", person.id, person.name, {"template": tid, "left": left})
        self._checkpoint("an erased template")
        logger.info("gallery: deleted template id=%d of person id=%d", tid, person.id)
        return self.get_person(person.id)

    def add_templates(self, person: str | int, templates: Sequence[TemplateIn]) -> int:
        """Add templates to an existing person, all or nothing; returns how many were stored."""
        found = self.get_person(person)
        with self._write() as db:
            for template in templates:
                self._insert_template(db, found.id, template)
            self._audit(db, "templates added", found.id, found.name, {"templates": len(templates)})
        return len(templates)

    def matrix(
        self,
        model_id: str,
        model_sha256: str,
        *,
        at: datetime | None = None,
        include_disabled: bool = False,
        only: Sequence[int] | None = None,
    ) -> GalleryMatrix:
        """Templates of exactly this model (id AND sha256) of people admitted at ``at`` (default: now).

        include_disabled=True ignores both the enabled flag and the validity window (duplicate checks). ``only``:
        just these people (a door patching its matrix after a change, ``kiosk.fleet.replica.LiveMatrix``).
        Encrypted templates are decrypted with the gallery's cipher: TemplateKeyError when it is missing or wrong.
        """
        sql = """SELECT t.id, t.person_id, p.name, t.embedding, t.dim, t.model_id, t.model_sha256, t.key_id
                 FROM templates t JOIN people p ON p.id = t.person_id WHERE t.model_id = ? AND t.model_sha256 = ?"""
        params: list[Any] = [model_id, model_sha256]
        if not include_disabled:
            sql += """ AND p.enabled = 1 AND (p.valid_from IS NULL OR p.valid_from <= ?)
                       AND (p.valid_until IS NULL OR p.valid_until > ?)"""
            params += [utc_iso(at)] * 2
        if only is not None:
            sql += f" AND t.person_id IN ({','.join('?' * len(only))})"
            params += [int(p) for p in only]
        rows = self._rows(sql + " ORDER BY t.id", params)
        if not rows:
            sql = "SELECT dim FROM templates WHERE model_id = ? AND model_sha256 = ? LIMIT 1"
            known = self._rows(sql, [model_id, model_sha256])
            no_ids = np.empty(0, dtype=np.int64)
            dim = int(known[0]["dim"]) if known else 0
            return GalleryMatrix(no_ids, no_ids.copy(), [], np.empty((0, dim), dtype=np.float32))
        vectors = [np.frombuffer(self._plaintext(r, f"gallery {self.path}"), dtype="<f4") for r in rows]
        return GalleryMatrix(
            np.array([r["id"] for r in rows], dtype=np.int64),
            np.array([r["person_id"] for r in rows], dtype=np.int64),
            [r["name"] for r in rows],
            np.stack(vectors).astype(np.float32),
        )

    def stale_templates(self, model_id: str, model_sha256: str) -> dict[str, int]:
        """Per person name, templates made by any other model or model file: those are never compared."""
        sql = """SELECT p.name, count(*) AS n FROM templates t JOIN people p ON p.id = t.person_id
                 WHERE NOT (t.model_id = ? AND t.model_sha256 = ?) GROUP BY p.id ORDER BY p.name"""
        return {r["name"]: int(r["n"]) for r in self._rows(sql, [model_id, model_sha256])}

    def template_counts(self) -> dict[tuple[str, str], int]:
        """Number of templates per (model_id, model_sha256)."""
        sql = "SELECT model_id, model_sha256, count(*) AS n FROM templates GROUP BY 1, 2 ORDER BY 1, 2"
        return {(r["model_id"], r["model_sha256"]): int(r["n"]) for r in self._rows(sql)}

    def person_templates(self, ref: str | int) -> dict[str, int]:
        """One person's template counts keyed by ``"model_id (sha256 prefix)"``."""
        person = self.get_person(ref)
        sql = (
            "SELECT model_id, model_sha256, count(*) AS n FROM templates WHERE person_id = ? "
            "GROUP BY 1, 2 ORDER BY 1, 2"
        )
        return {f"{r['model_id']} ({r['model_sha256'][:12]})": int(r["n"]) for r in self._rows(sql, [person.id])}

    # -- encryption ------------------------------------------------------------------------------------------

    def encryption_status(self) -> dict[str | None, int]:
        """Templates per key id; the None entry counts plaintext templates."""
        sql = "SELECT key_id, count(*) AS n FROM templates GROUP BY key_id ORDER BY key_id"
        return {r["key_id"]: int(r["n"]) for r in self._rows(sql)}

    def rekey(self, new: TemplateCipher | None) -> int:
        """Re-encrypt every template with ``new`` (None: store them as plaintext), all in one transaction.

        The current cipher decrypts (plaintext templates need none); a template it cannot decrypt, or any failure
        of ``new``, leaves every template as it was. Records an ``admin`` event "rekeyed"; returns the count.
        """
        sql = """SELECT t.id, t.person_id, p.name, t.embedding, t.dim, t.model_id, t.model_sha256, t.key_id
                 FROM templates t LEFT JOIN people p ON p.id = t.person_id ORDER BY t.id"""
        new_id = None if new is None else new.key_id
        with self._write() as db:
            cursor = db.execute(sql)
            columns = [d[0] for d in cursor.description]
            rows = [dict(zip(columns, values, strict=True)) for values in cursor.fetchall()]
            old_ids = sorted({r["key_id"] or "plaintext" for r in rows})
            for r in rows:
                blob = self._plaintext(r, f"gallery {self.path}")
                if new is not None:
                    aad = _template_aad(int(r["person_id"]), str(r["model_id"]), str(r["model_sha256"]), int(r["dim"]))
                    blob = new.encrypt(blob, aad)
                db.execute("UPDATE templates SET embedding = ?, key_id = ? WHERE id = ?", [blob, new_id, r["id"]])
            detail = {"templates": len(rows), "from": old_ids, "to": new_id or "plaintext"}
            self._audit(db, "rekeyed", detail=detail, always=True)
        self._cipher = new
        self._checkpoint("the templates' previous encryption")
        logger.info("gallery %s: %d template(s) now under %s", self.path, len(rows), new_id or "no key (plaintext)")
        return len(rows)
