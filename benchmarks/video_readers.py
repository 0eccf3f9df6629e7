"""Decode speed of the Video4Removal readers (PyAV, decord) on the sample clips.

Measures what a segment costs: the analysis pass (every ``stride``-th frame scaled to the analysis
long side) and the full-resolution fetch of a few frames, from a path and from a file-like, one
decoder thread (one Ray task per CPU). Prints video frames covered per second (the decoder must
decode every frame of a GOP, whatever the stride) and the best of ``--repeat`` runs.

    .venv/bin/python benchmarks/video_readers.py [--stride 3] [--long-side 480] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pairmine.operators.video_io import analysis_size, probe, read_frames, DecodeParams

VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "video"
CLIPS = ["01_dog.mp4", "02_cups.mp4", "synth_static_dev.mp4", "bikes.mp4"]


def best_of(repeat: int, run) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stride", type=int, default=3)
    parser.add_argument("--long-side", type=int, default=480)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{'clip':22s} {'reader':7s} {'source':8s} {'analysis fps':>13s} {'8 full-res frames':>18s}")
    for clip in CLIPS:
        path = VIDEOS / clip
        info = probe(str(path), DecodeParams())
        size = analysis_size(info.width, info.height, args.long_side)
        wanted = range(0, info.frames, args.stride)
        picks = [round(k * (info.frames - 1) / 7) for k in range(8)]
        for reader in ("pyav", "decord"):
            for kind, source in (("path", str(path)), ("filelike", lambda: open(path, "rb"))):
                analysis = best_of(args.repeat, lambda: read_frames(source, wanted, (reader,), size, 1))
                fetch = best_of(args.repeat, lambda: read_frames(source, picks, (reader,), None, 1))
                print(f"{clip:22s} {reader:7s} {kind:8s} {info.frames / analysis:13.0f} {fetch * 1000:15.0f} ms")


if __name__ == "__main__":
    main()
