"""What a mosaic video costs: a 4x4 and a 10x10 grid of the emulator's 480x480x81 videos (every
cell a different cfg x steps, so no two decode alike), written at the default cell width (320;
the 10x10 shrinks to fit ~9.4 Mpixel frames). Each mosaic runs in its own process, so its peak RSS
is its own; the RSS after imports is printed beside it.

    python benchmarks/mosaic.py

The last line is one JSON object: {"benchmark": "mosaic", ...}.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRIDS = (4, 10)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _videos(folder: Path, side: int) -> list[list[Path]]:
    from orchestrator.emulator.media import render_mp4

    inputs = {
        "56_text": "a lighthouse at dusk",
        "118_image": "https://example.com/in.png",
        "4_valuex3_value": "480x480 (1:1)",
        "25_value": 81,
        "38_value": 16,
        "98_seed": 1,
        "41_value": 8.0,
    }
    rows = []
    for steps in range(4, 4 + side):
        row = []
        for column in range(side):
            cfg = 1.0 + column * 0.5
            path = folder / f"steps-{steps}_cfg-{cfg}.mp4"
            if not path.exists():
                render_mp4(path, inputs | {"47_value": steps, "108_cfg": cfg})
            row.append(path)
        rows.append(row)
    return rows


def _one(folder: Path, side: int) -> dict[str, float | int]:
    """Runs in a child process: one mosaic, timed, with this process's peak RSS."""
    from orchestrator.report.mosaic import MosaicCell, write_mosaic

    before = _rss_mb()
    videos = _videos(folder, side)
    cells = [[MosaicCell(p, p.stem.replace("_", " ")) for p in row] for row in videos]
    start = time.perf_counter()
    info = write_mosaic(
        folder / f"mosaic-{side}.mp4",
        cells,
        x_labels=[f"cfg={1.0 + c * 0.5}" for c in range(side)],
        y_labels=[f"steps={s}" for s in range(4, 4 + side)],
        title=f"{side}x{side} emulator videos",
    )
    took = time.perf_counter() - start
    return {
        "seconds": round(took, 2),
        "peak_rss_mb": round(_rss_mb(), 1),
        "rss_after_imports_mb": round(before, 1),
        "width": info.width,
        "height": info.height,
        "frames": info.frames,
        "mib": round(info.path.stat().st_size / 1024**2, 1),
    }


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        print(json.dumps(_one(Path(sys.argv[2]), int(sys.argv[3]))))
        return
    results: dict[str, object] = {"benchmark": "mosaic"}
    with tempfile.TemporaryDirectory() as folder:
        _videos(Path(folder), max(GRIDS))  # rendered once, outside the timings
        for side in GRIDS:
            child = [sys.executable, __file__, "--one", folder, str(side)]
            out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
            figures = json.loads(out.strip().splitlines()[-1])
            print(
                f"{side}x{side}: {figures['seconds']} s, peak RSS {figures['peak_rss_mb']} MB "
                f"({figures['rss_after_imports_mb']} MB after imports), "
                f"{figures['width']}x{figures['height']}x{figures['frames']}, {figures['mib']} MiB"
            )
            results[f"{side}x{side}"] = figures
    print(json.dumps(results))


if __name__ == "__main__":
    main()
