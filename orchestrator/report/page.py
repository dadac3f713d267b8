"""The report page: one self-contained HTML file (inline CSS and JS, the data as embedded JSON).

Nothing is fetched from elsewhere, so it works from ``file://`` offline. The data sits in a
``<script type="application/json">`` tag with every ``<``, ``>`` and ``&`` escaped, so an input
such as ``</script><img onerror=...>`` stays text: the script reads it with ``JSON.parse`` and
puts user text into the page only through ``textContent`` and attributes.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from importlib import resources
from pathlib import Path
from typing import Any

from orchestrator.report.view import View
from orchestrator.results import atomic_file

__all__ = ["VIDEO_CAP", "render_page", "write_page"]

VIDEO_CAP = 12  # live <video> elements at most; every other cell shows its poster


def _asset(name: str) -> str:
    return resources.files("orchestrator.report").joinpath(name).read_text(encoding="utf-8")


def embed_json(data: Any) -> str:
    """JSON that cannot end the script tag it sits in, nor open a comment or CDATA."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return (
        text.replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def render_page(view: View, *, served: bool = False, cap: int = VIDEO_CAP) -> str:
    """The whole page; ``served``: the page shows rating buttons that POST to ``api/rating``."""
    data = view.to_json() | {"served": served, "cap": cap}
    title = html.escape(f"{view.name} · comfysweep report")
    script = "\n" + _asset("report.js") + "\n"
    # Only this script may run: no event-handler attribute or other inline script, should any
    # ever slip into the page.
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return _TEMPLATE.format(
        title=title,
        csp=f"script-src 'sha256-{digest}'; object-src 'none'; base-uri 'none'",
        css=_asset("report.css"),
        js=script,
        data=embed_json(data),
    )


def write_page(view: View, path: Path, *, served: bool = False) -> Path:
    """Write the page at ``path`` atomically (a killed report leaves the old page whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as handle:
        handle.write(render_page(view, served=served))
    return path


_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>
{css}
</style>
</head>
<body>
<header id="top">
  <h1 id="title"></h1>
  <div id="fixed"></div>
  <div id="controls">
    <label>X <select id="axis-x"></select></label>
    <label>Y <select id="axis-y"></select></label>
    <label>Z <select id="axis-z"></select></label>
    <span id="filters"></span>
  </div>
  <div id="player">
    <button id="play" type="button">Play all</button>
    <label><input id="loop" type="checkbox" checked> loop</label>
    <input id="scrub" type="range" min="0" max="1000" value="0" aria-label="time">
    <span id="clock">0.00 s</span>
    <button id="ab-open" type="button" disabled>A/B (pick 2)</button>
    <button id="summary-toggle" type="button">Summary</button>
    <label>size <input id="size" type="range" min="100" max="480" step="20" value="200"></label>
  </div>
  <nav id="tabs"></nav>
</header>
<section id="summary" hidden></section>
<main id="grid"></main>
<div id="ab" hidden>
  <div id="ab-frame">
    <video id="ab-b" muted playsinline loop preload="auto"></video>
    <video id="ab-a" muted playsinline loop preload="auto"></video>
    <div id="ab-line"></div>
  </div>
  <div id="ab-bar">
    <span id="ab-label-a"></span>
    <input id="ab-slider" type="range" min="0" max="100" value="50" aria-label="wipe">
    <span id="ab-label-b"></span>
    <button id="ab-close" type="button">Close</button>
  </div>
</div>
<script id="report-data" type="application/json">{data}</script>
<script>{js}</script>
</body>
</html>
"""
