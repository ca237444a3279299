"""Shared by the door screen's tests: a scripted door app, preview JPEGs, and layout checks run in the page."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from fastapi import FastAPI

from kiosk.config import parse_config
from kiosk.lab.door_thread import LoopThread, astronaut_door

__all__ = ["LAYOUT_PROBLEMS", "LoopThread", "astronaut_door", "preview_jpeg", "scripted_app"]
from kiosk.web.scripted import ScriptedLink, ScriptedServices, door_app


def scripted_app(link: ScriptedLink, **screen: Any) -> tuple[FastAPI, ScriptedServices]:
    cfg = parse_config({"screen": screen})
    services = ScriptedServices(cfg, link)
    return door_app(services), services


def preview_jpeg(width: int = 480, height: int = 360, shade: int = 90) -> bytes:
    """A corridor-grey frame with a face-sized ellipse, as JPEG bytes."""
    img = np.full((height, width, 3), shade, np.uint8)
    cv2.ellipse(img, (width // 2, height // 2), (width // 8, height // 5), 0, 0, 360, (150, 170, 200), -1)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return bytes(buf)


# Run in the page: what does not fit the viewport. Visible text and icons must lie inside it and not overflow
# their boxes; the document must not scroll.
LAYOUT_PROBLEMS = """() => {
  const problems = [];
  const de = document.documentElement;
  if (de.scrollWidth > innerWidth || de.scrollHeight > innerHeight) {
    problems.push(`document scrolls: ${de.scrollWidth}x${de.scrollHeight} in ${innerWidth}x${innerHeight}`);
  }
  const sel = ".prompt, .countdown, .bar-icon, .overlay-icon, .overlay-title, .overlay-detail, .frame, .face-label";
  for (const el of document.querySelectorAll(sel)) {
    if (!el.checkVisibility()) continue;
    const r = el.getBoundingClientRect();
    const name = `${el.className}${el.id ? "#" + el.id : ""}`;
    if (el.closest(".faces") === null && (r.left < -0.5 || r.top < -0.5 || r.right > innerWidth + 0.5
        || r.bottom > innerHeight + 0.5)) {
      problems.push(`${name} outside the viewport: ${JSON.stringify(r)}`);
    }
    if (el.scrollWidth > el.clientWidth + 1 || el.scrollHeight > el.clientHeight + 1) {
      const inner = `${el.scrollWidth}x${el.scrollHeight} in ${el.clientWidth}x${el.clientHeight}`;
      problems.push(`${name} overflows its box: ${inner}`);
    }
  }
  return problems;
}"""
