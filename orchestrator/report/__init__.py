"""Looking at a sweep: the X/Y/Z HTML report, its posters, the mosaic video, the rating server."""

from __future__ import annotations
