"""Benchmark of ``gfp batch`` (Ray Data) against the plain CLI on one folder: images/s and what Ray adds.

The same folder of shared photos (GFP_TEST_DATA, default ../shared/data) is restored by the plain CLI
(``python -m gfp``) and by ``python -m gfp.batch`` on a local Ray instance with each ``--workers`` count,
every run in a fresh process into a fresh output folder, after one untimed CLI run on the first photo
(file caches, and the OpenVINO conversion with ``--backend auto``). Each batch run splits the machine's
cores between its workers (``--cpus-per-worker``: their PyTorch threads); the CLI uses them all, unless
``--threads N`` gives every process and worker N threads.

Weights (``--weights``): ``full`` (default) is the seeded random full-size GFPGAN clean generator and
ParseNet of tests/_official_pipeline.py with the real RetinaFace MobileNet-0.25: the compute of v1.4
(outputs are not real restorations); ``tiny`` is the tests' tiny generator without a parser, to check
the script quickly. Per run it prints:

* wall: the whole process (interpreter, imports, Ray start, loading, every photo);
* start: from the process start to the first finished photo, less that photo's own seconds;
* images/s: photos / wall, and steady: (photos - 1) / (last finish - first finish);
* per image: the steady seconds between finishes; batch runs also give the median seconds a photo spends
  in its worker (the manifest's ``seconds``), and "Ray adds" = the 1-worker run's steady seconds per
  image less the CLI's (scheduling, transfer, the record).

The CLI's finish times come from wrapping ``gfp.cli.save_outputs`` in its process; the batch's from the
manifest. Timings on a shared or loaded machine are noise: rerun on a quiet one.

    python benchmarks/batch.py                            # 24 photos, full-size networks, 1 and 2 workers
    python benchmarks/batch.py --photos 4 --weights tiny  # quick check
    python benchmarks/batch.py --workers 1 2 4 --background realesr-general-x4v3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from _official_pipeline import DETECTOR, GENERATOR_FILE, make_weights  # noqa: E402
from _zoo_helpers import save_tiny_generator, shared_data_dir  # noqa: E402

CLI_TIMED = """
import json, sys, time
import gfp.cli as cli
began, finished, read, save = [], [], cli.read_image, cli.save_outputs
def reading(*args, **kwargs):
    began.append(time.time())
    return read(*args, **kwargs)
def saving(*args, **kwargs):
    written = save(*args, **kwargs)
    finished.append(time.time())
    return written
cli.read_image, cli.save_outputs = reading, saving
code = cli.main(sys.argv[1:])
print("TIMES", json.dumps([began, finished]))
sys.exit(code)
"""
"""The CLI with the time each photo's reading begins and its last output is written."""


@dataclass
class Run:
    """One timed process: its start (epoch seconds), wall time and when each photo finished."""

    name: str
    threads: int
    photos: int
    began: float
    wall: float
    finished: list[float]
    first_seconds: float
    worker_seconds: list[float]

    @property
    def start(self) -> float:
        return self.finished[0] - self.first_seconds - self.began

    @property
    def per_image(self) -> float:
        return (self.finished[-1] - self.finished[0]) / max(1, len(self.finished) - 1)


def make_folder(folder: Path, weights: str, data: Path) -> tuple[list[str], Path]:
    """Weights for ``weights`` in ``folder``; returns (the model flags, the weights folder)."""
    if weights == "full":
        make_weights(folder, data)
        return ["-v", str(folder / GENERATOR_FILE)], folder
    save_tiny_generator(folder / "tiny")
    (folder / "detection_mobilenet0.25_Final.pth").symlink_to(
        data / "weights" / "detection_mobilenet0.25_Final.pth"
    )
    (folder / "parsing_parsenet.pth").write_bytes(b"none: faces blended with the soft square")
    return ["-v", str(folder / "tiny")], folder


def run_cli(inputs: Path, out: Path, flags: list[str], env: dict[str, str], threads: int | None) -> Run:
    if threads is not None:
        env = {**env, "OMP_NUM_THREADS": str(threads)}  # PyTorch's threads
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", CLI_TIMED, "-i", str(inputs), "-o", str(out), *flags],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.time() - start
    line = next((x for x in proc.stdout.splitlines() if x.startswith("TIMES ")), None)
    if proc.returncode or line is None:
        raise SystemExit(f"the CLI failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    began, finished = json.loads(line.removeprefix("TIMES "))
    first = finished[0] - began[0]
    return Run("CLI", threads or os.cpu_count() or 1, len(finished), start, wall, finished, first, [])


def run_batch(
    inputs: Path, out: Path, flags: list[str], env: dict[str, str], workers: int, threads: int | None
) -> Run:
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    argv = [str(inputs), "-o", str(out), "--workers", str(workers), "--cpus-per-worker", str(threads), *flags]
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "gfp.batch", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.time() - start
    if proc.returncode:
        raise SystemExit(f"gfp batch failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    records = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    records.sort(key=lambda r: r["time"])
    finished = [datetime.fromisoformat(r["time"]).timestamp() for r in records]
    seconds = [r["seconds"] for r in records]
    return Run(
        f"batch, {workers} worker(s)", threads, len(records), start, wall, finished, seconds[0], seconds
    )


def table(runs: list[Run]) -> str:
    cli = runs[0]
    one = next((r for r in runs if r.name.startswith("batch, 1 ")), None)
    lines = [
        "| run | threads/worker | photos | wall s | start s | images/s | steady images/s | s/image "
        "| s/image in worker (median) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        median = f"{statistics.median(r.worker_seconds):.3f}" if r.worker_seconds else "-"
        lines.append(
            f"| {r.name} | {r.threads} | {r.photos} | {r.wall:.1f} | {r.start:.1f} | {r.photos / r.wall:.3f} "
            f"| {1 / r.per_image:.3f} | {r.per_image:.3f} | {median} |"
        )
    if one is not None:
        lines.append(
            f"\nRay adds {one.per_image - cli.per_image:+.3f} s per image (1 worker's steady s/image less "
            f"the CLI's) and {one.start - cli.start:+.1f} s at start."
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=int, default=24, help="first N shared photos, sorted (default: 24)")
    p.add_argument("--weights", choices=["full", "tiny"], default="full")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--background", default="none", help="--bg_upsampler of every run (default: none)")
    p.add_argument("--backend", default="torch", help="--backend of every run (default: torch)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="PyTorch threads of the CLI and of each worker (default: all cores for the CLI, split between "
        "the workers): 1 compares Ray's cost alone, and avoids oversubscribing a loaded machine",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the runs here")
    args = p.parse_args()
    data = shared_data_dir()
    if not (data / "photos").is_dir():
        raise SystemExit(f"no shared photos at {data} (set GFP_TEST_DATA)")
    photos = sorted((data / "photos").iterdir())[: args.photos]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with tempfile.TemporaryDirectory(prefix="gfp-batch-bench-") as tmp:
        tmp_path = Path(tmp)
        inputs = tmp_path / "in"
        inputs.mkdir()
        for photo in photos:
            (inputs / photo.name).symlink_to(photo)
        model, weights = make_folder(tmp_path / "weights", args.weights, data)
        env["GFP_CACHE_DIR"] = str(weights)  # nothing is downloaded: a missing default is a fallback
        flags = [*model, "--weights-dir", str(weights), "--detector", DETECTOR, "--device", "cpu"]
        flags += ["--bg_upsampler", args.background, "--backend", args.backend]
        warm = tmp_path / "warm"
        warm.mkdir()
        (warm / photos[0].name).symlink_to(photos[0])
        run_cli(warm, tmp_path / "warm-out", flags, env, args.threads)
        runs = [run_cli(inputs, tmp_path / "cli", flags, env, args.threads)]
        for workers in args.workers:
            runs.append(run_batch(inputs, tmp_path / f"batch{workers}", flags, env, workers, args.threads))
            print(f"done: {runs[-1].name}", file=sys.stderr)
    setup = f"weights {args.weights}, background {args.background}, backend {args.backend}"
    print(f"{len(photos)} photos, {setup}, {os.cpu_count()} cores, threads {args.threads or 'split'}")
    print(table(runs))
    if args.json is not None:
        args.json.write_text(json.dumps([r.__dict__ for r in runs], indent=1))


if __name__ == "__main__":
    main()
