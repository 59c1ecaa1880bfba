"""The model trained by `train/configs/cpu.yml` restores faces it never saw better than their degraded input.

The model (examples/model-cpu, provenance in its README) was trained on the first 30 shared CelebA-HQ
faces and on faces cropped from the shared photos; the last 8 CelebA-HQ faces (sorted) were held out. They
are degraded here with the paper's degradation model (blur, downsample, noise, JPEG; no colour
augmentation) at 512 px with two fixed seeds, restored through the CLI with its default options exactly as
a user would (`--aligned -s 1 --bg_upsampler none`), and scored with basicsr's PSNR/SSIM on Y at 512 px,
and with the identity cosine of `train.evaluate`.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from basicsr.metrics import calculate_psnr, calculate_ssim

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "model-cpu"
HELD_OUT = 8  # data.val_holdout of train/configs/cpu.yml
SEEDS = (0, 1)


def test_trained_model_beats_the_degraded_input_on_held_out_faces(shared_data: Path, tmp_path: Path) -> None:
    from gfp.cli import main as gfp_cli
    from train.config import DEFAULTS
    from train.evaluate import evaluate, make_lq, paper_degradation

    hq_files = sorted((shared_data / "faces" / "hq").glob("*.jpg"))[-HELD_OUT:]
    psnr, ssim, identity = {"restored": [], "lq": []}, {"restored": [], "lq": []}, []
    for seed in SEEDS:
        lq_dir, out_dir, hq_dir = tmp_path / f"lq{seed}", tmp_path / f"out{seed}", tmp_path / f"hq{seed}"
        hq_dir.mkdir()
        for path in hq_files:  # the held-out faces only, for the identity score below
            (hq_dir / path.name).symlink_to(path)
        make_lq(hq_files, lq_dir, 512, seed=seed, degradation=paper_degradation(DEFAULTS["degradation"]))
        args = ["-i", str(lq_dir), "-o", str(out_dir), "-v", str(MODEL), "--aligned", "-s", "1"]
        assert gfp_cli([*args, "--bg_upsampler", "none"]) == 0
        for path in hq_files:
            gt = cv2.resize(cv2.imread(str(path)), (512, 512), interpolation=cv2.INTER_AREA)
            for key, img_path in (
                ("restored", out_dir / "restored_faces" / f"{path.stem}_00.png"),
                ("lq", lq_dir / f"{path.stem}.png"),
            ):
                img = cv2.imread(str(img_path))
                assert img is not None and img.shape == (512, 512, 3), img_path
                psnr[key].append(calculate_psnr(img, gt, 0, test_y_channel=True))
                ssim[key].append(calculate_ssim(img, gt, 0, test_y_channel=True))
        report = evaluate(hq_dir, lq_dir, out_dir / "restored_faces", data_dir=shared_data)
        assert report["n"] == HELD_OUT and report["identity_net"] == "mobilefacenet"
        identity.append([report["mean"][k]["id_cos"] for k in ("restored", "lq")])

    gain = np.array(psnr["restored"]) - np.array(psnr["lq"])
    # What this model meets (measured: +0.98 and +1.14 dB on seeds 0 and 1, every face gained, the least
    # +0.10 dB; identity +0.027 and +0.020 above the input's). The same recipe at lr 1e-3 gave a model that
    # scored +0.86 and +1.03 dB with identity +0.022 and +0.014, and the previous one (no detail path, 30
    # faces) +0.71 and +0.87 with +0.013 and +0.009: both fail the first and last lines.
    assert gain.mean() >= 0.95, f"PSNR-Y gain {gain.mean():+.2f} dB (per face: {np.round(gain, 2)})"
    assert gain.min() >= 0.0, f"a face lost {gain.min():.2f} dB PSNR-Y (per face: {np.round(gain, 2)})"
    assert np.mean(ssim["restored"]) > np.mean(ssim["lq"]), (np.mean(ssim["restored"]), np.mean(ssim["lq"]))
    restored_id, lq_id = np.mean(identity, axis=0)
    assert restored_id >= lq_id + 0.02, (restored_id, lq_id)


def test_trained_model_is_small_fp16_safetensors_in_the_published_format() -> None:
    import json

    from safetensors.torch import load_file

    assert (MODEL / "model.safetensors").stat().st_size <= 2 * 1024 * 1024
    assert json.loads((MODEL / "config.json").read_text())["format"] == "gfp-generator"
    assert {t.dtype for t in load_file(MODEL / "model.safetensors").values()} == {torch.float16}
    assert "train/configs/cpu.yml" in (MODEL / "README.md").read_text()  # provenance beside the weights
