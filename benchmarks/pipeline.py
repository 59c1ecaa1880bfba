"""Benchmark (and parity table): our restore pipeline against the official GFPGAN stack, photo by photo.

Both sides get identical weights (tests/_official_pipeline.py: seeded random full-size GFPGAN clean
generator and ParseNet, the real RetinaFace MobileNet-0.25 and, with --background, the real
realesr-animevideov3 or a seeded random realesr-general-x4v3). For each photo, ours and then the official
``GFPGANer.enhance`` run back to back, each in a fresh subprocess so that its peak RSS
(resource.getrusage) is its own. Prints per photo: faces ours/official, PSNR of the two restored images,
total wall time, the ratio ours/official (< 1: ours is faster) and peak memory; then the time of each
stage (load, detect, align, restore, parse, background, paste) summed over the photos, side by side.
The official stages are timed by wrapping its helper's methods; its ParseNet call runs inside its
paste, so it is timed on its own and taken out of paste. Those timings start when the restorer is made;
each process is also timed whole, from its start to its exit (interpreter, imports, loading, the photo),
as a user running one photo waits for it.

    python benchmarks/pipeline.py                         # 3 small photos, Lanczos background
    python benchmarks/pipeline.py --background            # with realesr-animevideov3 on both sides
    python benchmarks/pipeline.py --background realesr-general-x4v3 --photos gfpgan_10045.png
    python benchmarks/pipeline.py --all --jsonl out.jsonl # all photos of the shared data
    python benchmarks/pipeline.py --backend torch         # ours in PyTorch (default: auto, as users get)
    python benchmarks/pipeline.py --warm                  # each side's second run in its process (an app)
    python benchmarks/pipeline.py --cold                  # ours as a new user's first command: empty cache

With the OpenVINO backend, an untimed first run converts the networks (cached on disk), so the timings are
those of a warm cache. With ``--cold`` each of our processes starts on an empty model cache instead (no
warm-up): it runs in PyTorch while a low-priority process converts for the next command; the benchmark
waits for that conversion to end before timing the official side, so neither run disturbs the other.
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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

DEFAULT_PHOTOS = ("codeformer_04.jpg", "codeformer_05.jpg", "codeformer_01.jpg")
STAGES = ("load", "detect", "align", "restore", "parse", "background", "paste", "total")
BACKGROUNDS = ("realesr-animevideov3", "realesr-general-x4v3")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass(frozen=True)
class Job:
    """One side's run: the photo, the weights folder, where the image goes, the settings both sides share,
    our backend, and ``warm``: time a second restore of the photo in the same process (networks loaded and
    run once), loading not counted."""

    photo: Path
    folder: Path
    out: Path
    upscale: float
    background: str | None
    backend: str = "auto"
    warm: bool = False


def run_ours(job: Job) -> dict:
    """Restore with gfp.pipeline; stage timings come from RestoreResult.timings."""
    import cv2
    import torch
    from _official_pipeline import our_options

    from gfp.pipeline import Restorer

    torch.set_grad_enabled(False)
    start = time.perf_counter()
    restorer = Restorer(weights_dir=job.folder, device="cpu", backend=job.backend)
    options = our_options(job.folder, job.upscale, job.background or False)
    restorer.prepare(options)  # as the CLI does: in the background, beside reading and detecting
    load = time.perf_counter() - start
    img = cv2.imread(str(job.photo), cv2.IMREAD_COLOR)
    if job.warm:
        restorer.restore(img, options)
        load = 0.0
    result = restorer.restore(img, options)
    cv2.imwrite(str(job.out), result.image)
    t = dict(result.timings)
    times = {s: t.get(s, 0.0) for s in STAGES}
    times["load"] += load
    times["total"] += load
    return {"faces": len(result.restored_faces), "times": times, "peak_mb": _peak_rss_mb()}


def run_official(job: Job) -> dict:
    """Restore with the official GFPGANer.enhance; stages timed by wrapping its helper's methods."""
    import cv2
    import facexlib.detection  # noqa: F401  (imported before the clock, as ours are: "load" is loading)
    import facexlib.parsing  # noqa: F401
    import gfpgan.utils  # noqa: F401
    import realesrgan  # noqa: F401
    import torch
    from _official_pipeline import official_restorer

    torch.set_grad_enabled(False)
    times = dict.fromkeys(STAGES, 0.0)
    start = time.perf_counter()
    er = official_restorer(job.folder, job.upscale, job.background or False)
    times["load"] = time.perf_counter() - start

    def timed(obj: object, name: str, stage: str) -> None:
        original = getattr(obj, name)

        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                times[stage] += time.perf_counter() - t0

        setattr(obj, name, wrapper)

    timed(er.face_helper, "get_face_landmarks_5", "detect")
    timed(er.face_helper, "align_warp_face", "align")
    timed(er.gfpgan, "forward", "restore")
    timed(er.face_helper, "paste_faces_to_input_image", "paste")
    timed(er.face_helper.face_parse, "forward", "parse")  # called inside paste
    if er.bg_upsampler is not None:
        timed(er.bg_upsampler, "enhance", "background")
    img = cv2.imread(str(job.photo), cv2.IMREAD_COLOR)
    if job.warm:
        er.enhance(img, has_aligned=False, only_center_face=False, paste_back=True)
        times.update(dict.fromkeys(STAGES, 0.0))
    t0 = time.perf_counter()
    _, restored_faces, restored = er.enhance(img, has_aligned=False, only_center_face=False, paste_back=True)
    times["total"] = time.perf_counter() - t0 + times["load"]
    times["paste"] -= times["parse"]
    cv2.imwrite(str(job.out), restored)
    return {"faces": len(restored_faces), "times": times, "peak_mb": _peak_rss_mb()}


def _side(args: argparse.Namespace) -> None:
    fn = run_ours if args.side == "ours" else run_official
    paths = Path(args.photo), Path(args.weights), Path(args.out)
    result = fn(Job(*paths, args.upscale, args.background, args.backend, args.warm))
    print("RESULT " + json.dumps(result))


def _spawn(
    side: str, photo: Path, folder: Path, out: Path, args: argparse.Namespace, cache: Path | None = None
) -> dict:
    """Run one side in a fresh process (``cache``: its model cache, for ours in ``--cold``)."""
    cmd = [sys.executable, __file__, "--side", side, "--photo", str(photo), "--weights", str(folder)]
    cmd += ["--out", str(out), "--upscale", str(args.upscale)]
    cmd += ["--background", args.background] if args.background else []
    cmd += ["--backend", args.backend] + (["--warm"] if args.warm else [])
    env = dict(os.environ) | ({"GFP_CACHE_DIR": str(cache)} if cache is not None else {})
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    process = time.perf_counter() - start  # the whole process: interpreter, imports, run, exit
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:]) | {"process_s": process}
    raise RuntimeError(f"{side} failed on {photo.name}:\n{proc.stderr[-2000:]}")


def _conversions_done(cache: Path) -> float:
    """Wait until no background conversion runs in ``cache`` (a lock a killed one left is not waited for:
    it was, forever); the seconds waited."""
    from gfp.openvino import conversions_running

    start = time.perf_counter()
    while conversions_running(cache):
        time.sleep(0.2)
    return time.perf_counter() - start


def main() -> None:
    from gfp.devices import BACKENDS, decide_backend

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--photos", nargs="*", default=list(DEFAULT_PHOTOS), help="photo file names in shared data"
    )
    p.add_argument("--all", action="store_true", help="every photo of the shared data")
    p.add_argument(
        "--background",
        nargs="?",
        const=BACKGROUNDS[0],
        choices=BACKGROUNDS,
        help="background network on both sides (alone: %(const)s; general-x4v3 has random weights)",
    )
    p.add_argument("--upscale", type=float, default=2)
    p.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="our backend (default auto: what users get; OpenVINO on a CPU when installed)",
    )
    p.add_argument(
        "--warm",
        action="store_true",
        help="time each side's second restore of the photo in one process (as a running app), no loading",
    )
    p.add_argument(
        "--cold",
        action="store_true",
        help="ours as the first process on an empty model cache (a new user's first command), per photo",
    )
    p.add_argument("--jsonl", default=None, help="also append one JSON line per photo to this file")
    p.add_argument("--side", choices=["ours", "official"], help=argparse.SUPPRESS)
    p.add_argument("--photo", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        _side(args)
        return

    import cv2
    from _official_pipeline import make_weights, psnr
    from _zoo_helpers import shared_data_dir

    data = shared_data_dir()
    names = sorted(x.name for x in (data / "photos").iterdir()) if args.all else args.photos
    work = Path(tempfile.mkdtemp(prefix="gfp-bench-"))
    folder = make_weights(work / "weights", data)
    import torch

    bg = args.background or "Lanczos"
    backend = decide_backend(torch.device("cpu"), args.backend)
    threads = torch.get_num_threads()
    print(f"upscale {args.upscale:g}, background {bg}, CPU, {threads} torch threads, ours in {backend}")
    if backend == "openvino" and not args.cold:  # warm: networks converted (cached) by an untimed run
        start = time.perf_counter()
        _spawn("ours", data / "photos" / names[0], folder, work / "warmup.png", args)
        from gfp.weights.resolve import cache_dir

        _conversions_done(cache_dir())  # it converts in a background process: wait for it to end
        print(f"(untimed warm-up, converts the networks once: {time.perf_counter() - start:.1f} s)")
    head = f"{'photo':32} {'faces':>7} {'PSNR dB':>8} {'ours s':>8} {'official s':>10} {'ratio':>6}"
    print(f"{head} {'peak MB':>13} {'whole process s':>17} {'ratio':>6}")
    totals = {"ours": dict.fromkeys(STAGES, 0.0), "official": dict.fromkeys(STAGES, 0.0)}
    peaks = {"ours": 0.0, "official": 0.0}
    processes = {"ours": 0.0, "official": 0.0}
    for n, name in enumerate(names):
        photo = data / "photos" / name
        cache = work / f"cache-{n}" if args.cold else None
        res = {"ours": _spawn("ours", photo, folder, work / "ours.png", args, cache)}
        if cache is not None:
            waited = _conversions_done(cache)
            print(f"  (ours' background conversion ended {waited:.1f} s after its process)")
        res["official"] = _spawn("official", photo, folder, work / "official.png", args)
        ours_img, off_img = cv2.imread(str(work / "ours.png")), cv2.imread(str(work / "official.png"))
        value = psnr(ours_img, off_img)
        t_ours, t_off = res["ours"]["times"]["total"], res["official"]["times"]["total"]
        for side in res:
            for s in STAGES:
                totals[side][s] += res[side]["times"][s]
            peaks[side] = max(peaks[side], res[side]["peak_mb"])
            processes[side] += res[side]["process_s"]
        faces = f"{res['ours']['faces']}/{res['official']['faces']}"
        mem = f"{res['ours']['peak_mb']:.0f}/{res['official']['peak_mb']:.0f}"
        p_ours, p_off = res["ours"]["process_s"], res["official"]["process_s"]
        print(
            f"{name:32} {faces:>7} {value:8.2f} {t_ours:8.1f} {t_off:10.1f} {t_ours / t_off:6.2f} {mem:>13}"
            f" {f'{p_ours:.1f}/{p_off:.1f}':>17} {p_ours / p_off:6.2f}"
        )
        sys.stdout.flush()
        if args.jsonl:
            with open(args.jsonl, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"photo": name, "psnr": value, **res}) + "\n")
    print("\nstage totals (s)   " + " ".join(f"{s:>9}" for s in STAGES))
    for side in ("ours", "official"):
        print(f"{side:18} " + " ".join(f"{totals[side][s]:9.2f}" for s in STAGES))
    ratios = [
        totals["ours"][s] / totals["official"][s] if totals["official"][s] else float("nan") for s in STAGES
    ]
    print(f"{'ours/official':18} " + " ".join(f"{r:9.2f}" for r in ratios))
    print(f"peak RSS MB: ours {peaks['ours']:.0f}, official {peaks['official']:.0f}")
    whole = processes["ours"] / processes["official"]
    print(f"whole processes (start, imports, run, exit): ours {processes['ours']:.1f} s, ", end="")
    print(f"official {processes['official']:.1f} s, ratio {whole:.2f}")


if __name__ == "__main__":
    main()
