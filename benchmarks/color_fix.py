"""What each colour fix does on held-out faces: PSNR-Y, SSIM-Y, identity and colour cast against the HQ face.

The faces a model never saw (the last ``--holdout`` sorted shared CelebA-HQ faces: train/configs/cpu.yml
holds out 8) are restored through the CLI exactly as a user would, with each colour fix, twice: degraded
with the paper's degradation model and a fixed seed (the input is the baseline row), and clean (the HQ
face itself, whose ideal output is the input: what a model does to colours shows there without a
degradation in the way). ``python -m train evaluate`` scores them; the colour cast is the largest
per-channel difference of a face's mean colour from the HQ face's, in grey levels. Then each fix is timed
on one face at 128 and 512 px, in float32 on the CPU (median of repeats; on a shared machine treat it as
an upper bound). ``--figure`` writes the README's before/after picture: the clean held-out face whose
PSNR-Y the wavelet fix changes most, input | none | wavelet | adain. Every step is a command of its own,
so a new model is measured by rerunning this.

    python benchmarks/color_fix.py --model examples/model-cpu
    python benchmarks/color_fix.py --model examples/model-cpu --figure docs/color_fix.jpg
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
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gfp.color import COLOR_FIXES, color_fix  # noqa: E402  (after the path)

METRICS = (("psnr_y", "PSNR-Y (dB)", 2), ("ssim_y", "SSIM-Y", 4), ("id_cos", "identity cos", 4))
TILE = 256
CONDITIONS = ("degraded", "clean")
"""Inputs: the held-out faces degraded (the paper's model), and the clean faces themselves (a model that
changes colours shows it there without a degradation in the way; their ideal output is the input)."""


def run(*args: str) -> None:
    """Run one command (a module of this project), printed first; stop on failure."""
    command = [sys.executable, "-m", *args]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def measure(model: str, hq_files: list[Path], work: Path, seed: int) -> dict[str, dict[str, dict]]:
    """Degrade; restore each condition's inputs with each fix; score: {condition: {fix: report}}."""
    hq, lq = work / "hq", work / "lq"
    hq.mkdir(parents=True, exist_ok=True)
    for path in hq_files:
        link = hq / path.name
        if not link.exists():
            link.symlink_to(path.resolve())
    # Writes the LQ faces (the HQ folder stands in for restored faces: that score is not used).
    run("train", "evaluate", "--hq", str(hq), "--lq", str(lq), "--degrade", "--seed", str(seed),
        "--restored", str(hq), "--json", str(work / "degrade.json"))  # fmt: skip
    reports: dict[str, dict[str, dict]] = {}
    for condition, inputs in zip(CONDITIONS, (lq, hq), strict=True):
        reports[condition] = {}
        for fix in COLOR_FIXES:
            out = work / f"{condition}_{fix}"
            run("gfp", "-i", str(inputs), "-o", str(out), "-v", model, "--aligned", "-s", "1",
                "--bg_upsampler", "none", "--color-fix", fix)  # fmt: skip
            report = work / f"{condition}_{fix}.json"
            run("train", "evaluate", "--hq", str(hq), "--lq", str(inputs), "--restored",
                str(out / "restored_faces"), "--json", str(report))  # fmt: skip
            reports[condition][fix] = json.loads(report.read_text())
            reports[condition][fix]["cast"] = colour_cast(hq, out / "restored_faces")
        if condition == "degraded":
            reports[condition]["input"] = {"mean": {"restored": reports[condition]["none"]["mean"]["lq"]}}
            reports[condition]["input"]["cast"] = colour_cast(hq, lq)
    return reports


def colour_cast(hq: Path, faces: Path) -> float:
    """Mean over faces of the largest per-channel difference of mean colour from the HQ face (grey
    levels): how far a whole face's colour moved."""
    casts = []
    for path in sorted(hq.glob("*.jpg")):
        face = next(faces.glob(f"{path.stem}*.png"))
        img = cv2.imread(str(face), cv2.IMREAD_COLOR).astype(np.float64)
        truth = cv2.resize(
            cv2.imread(str(path), cv2.IMREAD_COLOR), img.shape[1::-1], interpolation=cv2.INTER_AREA
        )
        casts.append(float(np.abs(img.mean(axis=(0, 1)) - truth.mean(axis=(0, 1))).max()))
    return float(np.mean(casts))


def table(reports: dict[str, dict]) -> str:
    """One condition's Markdown table: the input row (degraded only), then one row per fix."""
    base = reports["input"]["mean"]["restored"] if "input" in reports else None
    head = (
        "| | "
        + " | ".join(label for _, label, _ in METRICS)
        + " | colour cast (levels) | PSNR-Y over the input |"
    )
    lines = [head, "|" + " --- |" * (len(METRICS) + 3)]
    for name in (("input",) if base else ()) + COLOR_FIXES:
        row = reports[name]["mean"]["restored"]
        cells = [f"{row[key]:.{digits}f}" if key in row else "n/a" for key, _, digits in METRICS]
        cells.append(f"{reports[name]['cast']:.1f}")
        gain = f"{row['psnr_y'] - base['psnr_y']:+.2f} dB" if base and name != "input" else ""
        label = "input" if name == "input" else f"colour fix {name}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {gain} |")
    return "\n".join(lines)


def cost(sizes: tuple[int, ...], repeats: int = 30) -> dict[str, dict[int, float]]:
    """Median milliseconds of each fix on one face (1, 3, S, S) in float32 on the CPU."""
    torch.manual_seed(0)
    timings: dict[str, dict[int, float]] = {}
    for fix in COLOR_FIXES[1:]:
        timings[fix] = {}
        for size in sizes:
            restored, source = torch.rand(2, 1, 3, size, size) * 2 - 1
            color_fix(restored, source, fix)  # first call allocates
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                color_fix(restored, source, fix)
                samples.append((time.perf_counter() - start) * 1000)
            timings[fix][size] = statistics.median(samples)
    return timings


def figure(reports: dict[str, dict], work: Path, out: Path) -> str:
    """input, none, wavelet, adain of the clean held-out face whose PSNR-Y the wavelet fix changes most."""
    rows = {
        fix: {img["name"]: img["restored"]["psnr_y"] for img in reports[fix]["images"]} for fix in COLOR_FIXES
    }
    name = max(rows["none"], key=lambda n: abs(rows["wavelet"][n] - rows["none"][n]))
    paths = [work / "hq" / f"{name}.jpg"]
    paths += [work / f"clean_{fix}" / "restored_faces" / f"{name}_00.png" for fix in COLOR_FIXES]
    labels = ["input (clean, held out)"] + [f"{fix}: {rows[fix][name]:.1f} dB" for fix in COLOR_FIXES]
    tiles = []
    for path, label in zip(paths, labels, strict=True):
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        shrink = img.shape[0] > TILE
        img = cv2.resize(img, (TILE, TILE), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4)
        strip = np.full((28, TILE, 3), 255, np.uint8)
        cv2.putText(strip, label, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.vstack([img, strip]))
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), np.hstack(tiles), [cv2.IMWRITE_JPEG_QUALITY, 88])
    return name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="examples/model-cpu", help="anything `python -m gfp -v` takes")
    p.add_argument("--data", default=os.environ.get("GFP_TEST_DATA", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--holdout", type=int, default=8, help="the last N sorted HQ faces (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the degradation (default: 0)")
    p.add_argument("--work", default=None, help="folder for the faces and reports (default: a temporary one)")
    p.add_argument("--figure", default=None, help="write the before/after picture here (JPEG)")
    p.add_argument("--json", default=None, help="write the table's numbers and the costs here")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the cost timing (default: 1)")
    args = p.parse_args()

    hq_files = sorted((Path(args.data) / "faces" / "hq").glob("*.jpg"))[-args.holdout :]
    if len(hq_files) < args.holdout:
        raise SystemExit(f"color_fix.py: error: fewer than {args.holdout} HQ faces in {args.data}/faces/hq")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        reports = measure(args.model, hq_files, work, args.seed)
        print(f"\nmodel {args.model}; {len(hq_files)} held-out faces scored at 512 px against the HQ face")
        for condition in CONDITIONS:
            print(
                f"\n{condition} input (degradation seed {args.seed}):\n"
                if condition == "degraded"
                else "\nclean input:\n"
            )
            print(table(reports[condition]))
        if args.figure:
            face = figure(reports["clean"], work, Path(args.figure))
            print(f"\nfigure: {args.figure} (face {face})")
    torch.set_num_threads(args.threads)
    timings = cost((128, 512))
    print(f"\ncost per face, float32, CPU, {args.threads} thread(s), median of 30:")
    for fix, by_size in timings.items():
        print(f"  {fix}: " + ", ".join(f"{ms:.1f} ms at {size} px" for size, ms in by_size.items()))
    if args.json:
        means = {
            condition: {name: {**r["mean"]["restored"], "cast": r["cast"]} for name, r in by_fix.items()}
            for condition, by_fix in reports.items()
        }
        payload = {"model": args.model, "seed": args.seed, "means": means, "cost_ms": timings}
        Path(args.json).write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
