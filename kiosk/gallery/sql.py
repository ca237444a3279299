"""Small SQLite helpers shared by the gallery's modules."""

from __future__ import annotations

import sqlite3

from sqlite_utils import Database


def _columns(conn: sqlite3.Connection | Database, table: str) -> set[str]:
    return {str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})").fetchall()}


def _sql_message(err: object) -> str:
    return " ".join(str(err).split())
