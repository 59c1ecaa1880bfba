"""Benchmark of video restoration: throughput, peak memory against clip length, jitter with/without smoothing.

Clips are made here from a shared photo (GFP_TEST_DATA, default ../shared/data) placed on a gradient, with
fresh pixel noise in every frame, so the detector's landmarks wobble as on real footage of a still face.

* speed: frames/s of ``gfp.video.restore_video`` (faces of several frames batched through the generator)
  against a frame-by-frame loop (PyAV decode → ``Restorer.restore`` → the same encoder), file to file,
  with a full-size GFPGAN "clean" generator (seeded random weights: no checkpoint is available offline,
  the compute is the same), random ParseNet, the real RetinaFace MobileNet-0.25, Lanczos background.
* memory: peak RSS of ``restore_video`` (each run in a fresh subprocess) on a short and a long clip,
  tiny generator (the point is how memory grows with length, not the network's size).
* jitter: std over frames (pixels) of the alignment's translation and of the landmarks on a still face,
  with and without smoothing.

    python benchmarks/video.py                 # all three
    python benchmarks/video.py --only jitter   # one of speed, memory, jitter
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import av  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from _official_pipeline import DETECTOR, GENERATOR_FILE, make_weights  # noqa: E402
from _video_helpers import write_clip  # noqa: E402
from _zoo_helpers import tiny_config, tiny_generator  # noqa: E402

from gfp.loading import save_pretrained  # noqa: E402
from gfp.pipeline import RestoreOptions, Restorer  # noqa: E402
from gfp.video import VideoOptions, restore_frames, restore_video  # noqa: E402

PHOTO = "codeformer_04.jpg"  # one face


def _data_dir() -> Path:
    return Path(os.environ.get("GFP_TEST_DATA") or ROOT.parent / "shared" / "data")


def make_frames(n: int, size: tuple[int, int] = (240, 400), noise: float = 3.0, seed: int = 0) -> list:
    """``n`` frames (h, w = size) of the shared photo on a gradient, fresh Gaussian pixel noise each."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    canvas = np.dstack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 90)]).astype(np.float32)
    photo = cv2.imread(str(_data_dir() / "photos" / PHOTO))
    canvas[8 : 8 + photo.shape[0], 8 : 8 + photo.shape[1]] = photo
    rng = np.random.default_rng(seed)
    return [np.clip(canvas + rng.normal(0, noise, canvas.shape), 0, 255).astype(np.uint8) for _ in range(n)]


def tiny_weights(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_config()
    save_pretrained(tiny_generator(config), config, folder / "tiny")
    link = folder / "detection_mobilenet0.25_Final.pth"
    if not link.exists():
        link.symlink_to(_data_dir() / "weights" / link.name)
    return folder


def frame_by_frame(source: Path, target: Path, restorer: Restorer, options: RestoreOptions) -> int:
    """The naive loop: decode a frame, ``Restorer.restore`` it, encode it (same codec settings)."""
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        stream = src.streams.video[0]
        out = dst.add_stream("libx264", rate=stream.average_rate)
        out.width = round(stream.codec_context.width * options.upscale)
        out.height = round(stream.codec_context.height * options.upscale)
        out.pix_fmt, out.options = "yuv420p", {"crf": "18"}
        frames = 0
        for frame in src.decode(stream):
            image = restorer.restore(frame.to_ndarray(format="bgr24"), options).image
            dst.mux(out.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
            frames += 1
        dst.mux(out.encode(None))
    return frames


def bench_speed(work: Path, frames: int) -> dict:
    folder = make_weights(work / "full", _data_dir())
    source = write_clip(work / "speed.mp4", make_frames(frames, (242, 242)), fps=25)
    restorer = Restorer(weights_dir=folder, device="cpu")
    options = RestoreOptions(
        version=str(folder / GENERATOR_FILE), upscale=2, bg_upsampler="none", detector=DETECTOR, batch_size=4
    )
    restorer.restore(make_frames(1, (242, 242))[0], options)  # load and warm up every network
    start = time.perf_counter()
    naive = frame_by_frame(source, work / "naive.mp4", restorer, options)
    naive_s = time.perf_counter() - start
    start = time.perf_counter()
    result = restore_video(source, work / "batched.mp4", options, VideoOptions(), restorer)
    batched_s = time.perf_counter() - start
    return {
        "frames": frames,
        "faces_per_frame": result.faces / result.frames,
        "frame_by_frame_fps": naive / naive_s,
        "batched_fps": result.frames / batched_s,
        "batched_timings_s": {k: round(v, 2) for k, v in result.timings.items()},
    }


def _memory_run(source: str, folder: str, out: str) -> None:
    options = RestoreOptions(
        version=str(Path(folder) / "tiny"), upscale=2, bg_upsampler="none", detector=DETECTOR
    )
    result = restore_video(source, out, options, VideoOptions(), Restorer(weights_dir=folder, device="cpu"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"frames": result.frames, "seconds": result.duration, "peak_mb": peak}))


def bench_memory(work: Path, short: int, long: int) -> list[dict]:
    folder = tiny_weights(work / "tiny")
    rows = []
    for n in (short, long):
        source = work / f"mem_{n}.mp4"
        frames = make_frames(1)[0]
        # 25 noisy frames repeated: the clip is long, the script that writes it stays small.
        rng = np.random.default_rng(n)
        clip = [np.clip(frames + rng.normal(0, 2, frames.shape), 0, 255).astype(np.uint8) for _ in range(25)]
        write_clip(source, [clip[i % 25] for i in range(n)], fps=25)
        cmd = [sys.executable, __file__, "--memory-run", str(source), str(folder), str(work / f"out_{n}.mp4")]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.split("RESULT ", 1)[1]))
    return rows


def bench_jitter(work: Path, frames: int) -> dict:
    folder = tiny_weights(work / "tiny")
    restorer = Restorer(weights_dir=folder, device="cpu")
    options = RestoreOptions(version=str(folder / "tiny"), upscale=1, bg_upsampler="none", detector=DETECTOR)
    clip = [(f, i / 25) for i, f in enumerate(make_frames(frames, noise=6.0))]
    out = {}
    for smooth in (False, True):
        done = list(restore_frames(restorer, clip, options, VideoOptions(smooth=smooth)))[10:]
        shifts = np.array([cv2.invertAffineTransform(f.matrices[0])[:, 2] for f in done])
        marks = np.array([f.landmarks[0] for f in done])
        out["smoothed" if smooth else "raw"] = {
            "translation_std_px": float(shifts.std(axis=0).mean()),
            "landmark_std_px": float(marks.std(axis=0).mean()),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["speed", "memory", "jitter"])
    p.add_argument("--speed-frames", type=int, default=8)
    p.add_argument("--short", type=int, default=25, help="frames of the short clip (25 fps)")
    p.add_argument("--long", type=int, default=250, help="frames of the long clip (25 fps)")
    p.add_argument("--jitter-frames", type=int, default=75)
    p.add_argument("--memory-run", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_run:
        _memory_run(*args.memory_run)
        return
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs visible")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only in (None, "jitter"):
            print("jitter", json.dumps(bench_jitter(work, args.jitter_frames)))
        if args.only in (None, "memory"):
            print("memory", json.dumps(bench_memory(work, args.short, args.long)))
        if args.only in (None, "speed"):
            print("speed", json.dumps(bench_speed(work, args.speed_frames)))


if __name__ == "__main__":
    main()
