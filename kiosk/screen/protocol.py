"""The names both sides of docs/screen-protocol.md share (no heavy imports: ``kiosk web`` imports this)."""

from __future__ import annotations

VERSION = 1
STATE_SOCK, PREVIEW_SOCK, CONTROL_SOCK = "state.sock", "preview.sock", "control.sock"
SOCKETS = (STATE_SOCK, PREVIEW_SOCK, CONTROL_SOCK)
MAX_REQUEST_BYTES = 64 * 1024
