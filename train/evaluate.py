"""``python -m train evaluate``: the paper's CelebA-Test protocol in one command.

Ground truth is a folder of aligned HQ faces. The LQ inputs are given, or made from the HQ faces with a fixed
seed (and written to a folder, so runs compare) by the paper's degradation model,
y = [(x ⊛ k_σ)↓_r + n_δ]_JPEG_q enlarged back; the training set's colour augmentations (colour shift, gray,
brightness/contrast/saturation/hue jitter) only when asked for, since they are not part of that model.
The restored faces are given, or produced by a model through the ``gfp`` pipeline exactly as ``python -m gfp
--aligned -s 1 --bg_upsampler none`` would. Every image is scored at ``--size`` (512) as uint8: PSNR and SSIM
on Y (BT.601) and on RGB with basicsr's definitions and no border crop, identity cosine, NIQE; the LQ inputs
are scored the same way as the baseline row.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml
from tqdm import tqdm

import gfp  # noqa: F401  (torchvision shim before basicsr)
from gfp.faces import resize_aligned
from gfp.imageio import ImageReadError, read_image, write_image
from gfp.loading import WeightsError
from gfp.messages import headline
from train.config import DEFAULTS, ConfigError
from train.data import (
    DataError,
    check_faces,
    degrade,
    list_images,
    same_folder,
    sample_degradation,
    stem_clash,
)

METRICS = ("psnr_y", "ssim_y", "psnr", "ssim", "id_cos", "niqe")
NIQE_MIN_SIZE = 192  # basicsr's NIQE works on 96-px blocks at full and half resolution
MOBILEFACENET_SHARED = Path("weights") / "mobilefacenet_casia_arcface.ckpt"


class EvaluationError(ValueError):
    """Folders, files or options that cannot be evaluated (the message says which)."""


# ----------------------------------------------------------------------------------------------- images
def _bgr8(path: Path, size: int) -> np.ndarray:
    """An image as 8-bit BGR at ``size``², resized the way the pipeline resizes aligned faces: shrunk by
    area averaging (as a face is brought to a smaller model), enlarged with Lanczos (as a restored face is
    brought to the output size), so the faces a smaller model writes are scored as its output image."""
    try:
        img = read_image(path, max_pixels=None)
    except ImageReadError as err:
        raise EvaluationError(str(err)) from err
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0).round().astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    img = img[:, :, :3]
    if img.shape[0] != img.shape[1]:
        raise EvaluationError(f"{path} is {img.shape[1]}x{img.shape[0]}: aligned faces are square")
    if img.shape[0] < size:
        return cv2.resize(img, (size, size), interpolation=cv2.INTER_LANCZOS4)
    return resize_aligned(img, size)


def match(stem: str, files: list[Path]) -> Path | None:
    """The file of ``files`` for ``stem``: ``STEM.*`` first, else ``STEM_NN`` or ``STEM_NN_SUFFIX`` (the
    CLI's face files); never another face whose name only begins with ``STEM_`` (``face_2`` for ``face``)."""
    exact = [p for p in files if p.stem == stem]
    if exact:
        return exact[0]
    face = re.compile(re.escape(stem) + r"_\d{2}(_.*)?")
    numbered = [p for p in files if face.fullmatch(p.stem)]
    return numbered[0] if numbered else None


def _one_per_stem(files: list[Path], what: str) -> None:
    """Refuse two faces of one name (``e.jpg`` and ``e.png``): one would be scored against the other's HQ
    face, or the LQ of one against the restored face of the other."""
    clash = stem_clash(files)
    if clash:
        first, second = clash
        raise EvaluationError(
            f"{what} faces {first.name} and {second.name} share a name: keep one ({second.parent})"
        )


def make_lq(hq_files: list[Path], out: Path, size: int, seed: int, degradation: dict[str, Any]) -> None:
    """Degrade each HQ face at ``size`` with a seed per file (seed, index) and write ``out/STEM.png``."""
    out.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(tqdm(hq_files, desc="degrade", unit="face")):
        hq = _bgr8(path, size).astype(np.float32) / 255.0
        rng = np.random.default_rng([seed, index])
        lq = degrade(hq, sample_degradation(degradation, rng), degradation, rng)
        write_image(out / f"{path.stem}.png", (np.clip(lq, 0, 1) * 255.0).round().astype(np.uint8))


def restore_with_model(spec: str, lq_files: list[Path], out: Path, weights_dir: str | None) -> None:
    """Restore aligned LQ faces with a generator as the CLI does (``--aligned -s 1 --bg_upsampler none``)."""
    from gfp.pipeline import RestoreOptions, Restorer

    restorer = Restorer(weights_dir=weights_dir, device="auto")
    options = RestoreOptions(version=spec, upscale=1, bg_upsampler="none", aligned=True)
    out.mkdir(parents=True, exist_ok=True)
    for path in tqdm(lq_files, desc="restore", unit="face"):
        img = read_image(path)
        write_image(out / f"{path.stem}.png", restorer.restore(img, options).image)


# ---------------------------------------------------------------------------------------------- metrics
class Identity:
    """Identity cosine between faces: ArcFace-ResNet18 when its weights resolve, else MobileFaceNet."""

    def __init__(self, weights_dir: str | None, data_dir: Path | None) -> None:
        from train.identity import IdentityEmbedder
        from train.networks import load_weights

        self.name, self.net, self.skipped = "", None, ""
        tried = []
        candidates = [("arcface_resnet18", "arcface_resnet18"), ("mobilefacenet", "mobilefacenet")]
        if data_dir is not None and (data_dir / MOBILEFACENET_SHARED).is_file():
            candidates.append(("mobilefacenet", str(data_dir / MOBILEFACENET_SHARED)))
        for arch, spec in candidates:
            try:
                state = load_weights(spec, weights_dir)
            except WeightsError as err:
                tried.append(f"{arch}: {headline(err)}")
                continue
            embedder = IdentityEmbedder(arch)
            embedder.net.load_state_dict(state, strict=True)
            self.name, self.net = arch, embedder.eval()
            return
        self.skipped = "no identity network weights (" + "; ".join(tried) + ")"

    @torch.no_grad()
    def embed(self, bgr: np.ndarray) -> torch.Tensor:
        rgb = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1))).float()
        return self.net(rgb[None] / 127.5 - 1.0)[0]


def score(
    img: np.ndarray, gt: np.ndarray, identity: Identity, gt_emb: torch.Tensor | None
) -> dict[str, float]:
    """All metrics of one 8-bit BGR image against its ground truth."""
    from basicsr.metrics import calculate_niqe, calculate_psnr, calculate_ssim

    values = {
        "psnr_y": calculate_psnr(img, gt, 0, test_y_channel=True),
        "ssim_y": calculate_ssim(img, gt, 0, test_y_channel=True),
        "psnr": calculate_psnr(img, gt, 0),
        "ssim": calculate_ssim(img, gt, 0),
    }
    if min(img.shape[:2]) >= NIQE_MIN_SIZE:
        values["niqe"] = float(calculate_niqe(img, 0, input_order="HWC", convert_to="y"))
    if gt_emb is not None:
        values["id_cos"] = float(torch.nn.functional.cosine_similarity(identity.embed(img), gt_emb, dim=0))
    return {k: float(v) for k, v in values.items()}


def evaluate(
    hq: Path,
    lq: Path,
    restored: Path,
    size: int = 512,
    weights_dir: str | None = None,
    data_dir: Path | None = None,
) -> dict[str, Any]:
    """Score every HQ face that has both an LQ and a restored file; the report ``--json`` writes."""
    hq_files, lq_files, out_files = list_images(hq), list_images(lq), list_images(restored)
    pairs = []
    for path in hq_files:
        lq_path, out_path = match(path.stem, lq_files), match(path.stem, out_files)
        if lq_path is not None and out_path is not None:
            pairs.append((path, lq_path, out_path))
    if not pairs:
        raise EvaluationError(
            f"no face of {hq} has both an LQ file in {lq} and a restored file in {restored} "
            "(matched by stem: STEM.* or STEM_*)"
        )
    check_faces([path for pair in pairs for path in pair])  # all of them before hours of scoring
    identity = Identity(weights_dir, data_dir)
    images, sums = [], {"restored": {}, "lq": {}}
    for gt_path, lq_path, out_path in tqdm(pairs, desc="score", unit="face"):
        gt = _bgr8(gt_path, size)
        gt_emb = identity.embed(gt) if identity.net is not None else None
        row: dict[str, Any] = {"name": gt_path.stem}
        for key, path in (("restored", out_path), ("lq", lq_path)):
            row[key] = score(_bgr8(path, size), gt, identity, gt_emb)
            for k, v in row[key].items():
                sums[key][k] = sums[key].get(k, 0.0) + v
        images.append(row)
    n = len(images)
    skipped = {
        "lpips": "LPIPS needs its AlexNet/VGG weights, which this evaluation does not download",
        "fid": "FID needs Inception weights and a reference statistics file, which this evaluation does not "
        "download",
    }
    if identity.net is None:
        skipped["id_cos"] = identity.skipped
    if size < NIQE_MIN_SIZE:
        skipped["niqe"] = f"NIQE needs images of at least {NIQE_MIN_SIZE} px"
    return {
        "n": n,
        "size": size,
        "identity_net": identity.name or None,
        "skipped": skipped,
        "unmatched": len(hq_files) - n,
        "mean": {key: {k: v / n for k, v in s.items()} for key, s in sums.items()},
        "images": images,
    }


def format_table(report: dict[str, Any], verbose: bool = False) -> str:
    """Means (and per-face rows with ``verbose``) as a Markdown table, LQ as the baseline row."""
    cols = [m for m in METRICS if m in report["mean"]["restored"]]
    head = "| | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols) + "\n"
    fmt = {"psnr_y": "{:.2f}", "psnr": "{:.2f}", "niqe": "{:.2f}"}

    def cell(column: str, value: float) -> str:
        """A number; PSNR of identical images is inf (said in the notes), and a gain from it none."""
        if math.isfinite(value):
            return fmt.get(column, "{:.4f}").format(value)
        return "inf" if value == math.inf else "n/a"

    def line(name: str, values: dict[str, float]) -> str:
        return f"| {name} | " + " | ".join(cell(c, values[c]) for c in cols) + " |\n"

    body = line("restored", report["mean"]["restored"]) + line("lq (input)", report["mean"]["lq"])
    gain = {c: report["mean"]["restored"][c] - report["mean"]["lq"][c] for c in cols}
    body += line("restored − lq", {c: v if math.isfinite(v) else math.nan for c, v in gain.items()})
    if verbose:
        for row in report["images"]:
            body += line(f"{row['name']} restored", row["restored"]) + line(f"{row['name']} lq", row["lq"])
    notes = f"\n{report['n']} faces at {report['size']}x{report['size']}"
    if report.get("degradation"):
        notes += f"; LQ: {report['degradation']}"
    if "psnr_y" in cols:
        # an LQ face identical to its HQ face (PSNR inf) has nothing to restore: no gain to rank it by
        gains = {
            r["name"]: r["restored"]["psnr_y"] - r["lq"]["psnr_y"]
            for r in report["images"]
            if r["lq"]["psnr_y"] != math.inf
        }
        worst = min(gains, key=gains.__getitem__) if gains else None
        if worst is not None and math.isfinite(gains[worst]):
            notes += f"\nleast gain: {worst} {gains[worst]:+.2f} dB PSNR-Y against its own input"
        elif worst is not None:
            notes += "\nleast gain: none to measure, every restored face is identical to its HQ face"
        for key, what in (("lq", "LQ"), ("restored", "restored")):
            identical = [r["name"] for r in report["images"] if r[key]["psnr_y"] == math.inf]
            if identical:
                notes += (
                    f"\n{len(identical)} {what} face(s) identical to their HQ face, e.g. {identical[0]} "
                    f"(PSNR inf{': nothing to restore, no gain to measure' if key == 'lq' else ''})"
                )
    notes += f"; identity: {report['identity_net'] or 'skipped'}"
    notes += "".join(f"\n- {k} skipped: {v}" for k, v in report["skipped"].items())
    return head + body + notes


# --------------------------------------------------------------------------------------------------- CLI
COLOR_AUGMENTATIONS = {"color_jitter_prob": None, "gray_prob": 0.0, "color_jitter_pt_prob": None}


def paper_degradation(degradation: dict[str, Any]) -> dict[str, Any]:
    """The paper's degradation model from a training ``degradation`` section: blur, downsample, noise, JPEG
    and the resize back, with the training set's colour augmentations (shift, gray, jitter) switched off."""
    return {**degradation, **COLOR_AUGMENTATIONS}


def _degradation(config: str | None, augmentations: bool) -> dict[str, Any]:
    if config is None:
        degradation = dict(DEFAULTS["degradation"])
    else:
        from train.config import load_config

        degradation = load_config(config)["degradation"]
    return degradation if augmentations else paper_degradation(degradation)


def _described(args: argparse.Namespace) -> str:
    """Which degradation made the LQ faces, for the report."""
    if not args.degrade:
        return "given (--lq)"
    text = "the paper's degradation model (blur, downsample, noise, JPEG)"
    if args.color_augmentations:
        text += " + the training colour augmentations (shift, gray, jitter)"
    ranges = args.degradation_config or "the official ranges"
    return f"{text}, {ranges}, seed {args.seed}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train evaluate",
        description="Score restored faces against aligned HQ faces (PSNR/SSIM on Y and RGB, identity "
        "cosine, NIQE), with the LQ input as the baseline row.",
    )
    p.add_argument("--hq", required=True, help="folder of aligned HQ faces (the ground truth)")
    p.add_argument("--lq", required=True, help="folder of LQ faces (given, or written by --degrade)")
    p.add_argument(
        "--degrade",
        action="store_true",
        help="make --lq from --hq with the paper's degradation model (blur, downsample, noise, JPEG)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --degrade (default 0)")
    p.add_argument(
        "--degradation-config",
        default=None,
        help="training YAML whose degradation ranges --degrade uses (default: the official ones)",
    )
    p.add_argument(
        "--color-augmentations",
        action="store_true",
        help="with --degrade: also apply the training set's colour shift, gray and colour jitter, which "
        "are training augmentations, not part of the paper's degradation model",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--restored", help="folder of restored faces (STEM.* or STEM_* per HQ face)")
    src.add_argument("--model", help="generator to restore --lq with (anything `python -m gfp -v` takes)")
    p.add_argument("--out", default=None, help="with --model: folder for its restored faces (default: temp)")
    p.add_argument("--weights-dir", default=None, help="folder searched first for model and identity weights")
    p.add_argument("--size", type=int, default=512, help="scoring size in pixels (default 512)")
    p.add_argument("--json", default=None, help="write the report as JSON here")
    p.add_argument("--verbose", action="store_true", help="also print one row per face")
    return p


def _data_dir() -> Path | None:
    """The shared offline data folder (GFP_TEST_DATA, else ``shared/data`` beside the project, whatever the
    working folder), where MobileFaceNet lives."""
    import os

    beside = Path(__file__).resolve().parents[2] / "shared" / "data"
    for candidate in (os.environ.get("GFP_TEST_DATA"), beside):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.size < 16:
        print("error: --size must be at least 16", file=sys.stderr)
        return 2
    if args.seed < 0:
        print(f"error: --seed must be 0 or more, got {args.seed}", file=sys.stderr)
        return 2
    if args.json and Path(args.json).is_dir():
        print(f"error: --json {args.json} is a folder: give a file name", file=sys.stderr)
        return 2
    above = [folder for folder in Path(args.json).parents if folder.exists()][:1] if args.json else []
    if above and not above[0].is_dir():  # found now, not after all the scoring
        print(f"error: --json {args.json}: {above[0]} is a file, not a folder", file=sys.stderr)
        return 2
    if args.degrade and same_folder(args.lq, args.hq):
        print("error: --degrade writes into --lq, which is --hq: the HQ faces would be lost", file=sys.stderr)
        return 2
    # the restored faces are written as STEM.png: they would replace the faces they are scored against
    for flag, folder, faces in (("--lq", args.lq, "LQ input"), ("--hq", args.hq, "HQ")):
        if args.model and args.out and same_folder(args.out, folder):
            print(
                f"error: --out is {flag}: the restored faces would replace the {faces} faces", file=sys.stderr
            )
            return 2
    try:
        hq, lq = Path(args.hq), Path(args.lq)
        hq_files = list_images(hq)
        check_faces(hq_files)  # before degrading or restoring: a bad face is said now, not hours in
        if args.degrade:
            degradation = _degradation(args.degradation_config, args.color_augmentations)
            make_lq(hq_files, lq, args.size, args.seed, degradation)
        elif not lq.is_dir():
            raise EvaluationError(f"LQ folder not found: {lq} (add --degrade to make it from --hq)")
        _one_per_stem(list_images(lq), "LQ")
        check_faces(list_images(lq))
        with tempfile.TemporaryDirectory() as tmp:
            if args.model:
                restored = Path(args.out) if args.out else Path(tmp)
                restore_with_model(args.model, list_images(lq), restored, args.weights_dir)
            else:
                restored = Path(args.restored)
                if restored.is_dir():
                    _one_per_stem(list_images(restored), "restored")
            report = evaluate(hq, lq, restored, args.size, args.weights_dir, _data_dir())
        report["degradation"] = _described(args)
    except (EvaluationError, DataError, ConfigError, WeightsError, yaml.YAMLError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(report, args.verbose))
    if report["unmatched"]:
        print(f"({report['unmatched']} HQ face(s) had no LQ or restored match and were left out)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(_finite(report), indent=1, allow_nan=False))
    return 0


def _finite(value: Any) -> Any:
    """``value`` with every non-finite number as None: JSON has no inf or NaN (Python writes ``Infinity``,
    which other readers refuse); the PSNR of a face identical to its HQ one is inf, a gain of two such nan."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
