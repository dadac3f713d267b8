"""What checking a downloaded output costs: a 1280x720x141 MP4 (the largest shape the model
makes, textured so it weighs megabytes like a real one) and the same frames remuxed to Matroska,
verified as the runner does before a rename.

PyAV reads the MP4's header only (its index gives the frame count); a Matroska has no count in
its header, so its packets are demuxed, none decoded. Best of five runs each.

    python benchmarks/verify_cost.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import av
import numpy as np

from orchestrator.verify import Shape, verify_output

SHAPE = Shape(1280, 720, 141)


def render(path: Path) -> None:
    rng = np.random.default_rng(1)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=24, options={"preset": "ultrafast", "crf": "30"})
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        for _ in range(141):
            image = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def remux(src: Path, dst: Path) -> None:
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)


def best(path: Path, ext: str, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        verify_output(path, ext, SHAPE)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        mp4, mkv = Path(folder) / "v.mp4", Path(folder) / "v.mkv"
        render(mp4)
        remux(mp4, mkv)
        for path, ext in ((mp4, "mp4"), (mkv, "mkv")):
            size, took = path.stat().st_size / 1024**2, best(path, ext) * 1000
            print(f"{ext}: {size:.1f} MiB, 1280x720x141, verified in {took:.1f} ms")


if __name__ == "__main__":
    main()
