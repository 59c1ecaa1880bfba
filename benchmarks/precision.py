"""What each fast path costs in dB: the generator alone against PyTorch float32, on the parity photos' faces.

Same weights as the parity tests (tests/_official_pipeline.py: the seeded random full-size generator). The
faces are those our pipeline aligns on each photo; each path restores them with ``Restorer.restore_faces``
and is compared face by face with PyTorch float32 (PSNR of the uint8 faces). Prints every face's dB and the
worst per path. The issue's bar is 50 dB for the generator alone.

    python benchmarks/precision.py
    python benchmarks/precision.py --photos gfpgan_10045.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PHOTOS = ("codeformer_04.jpg", "deepface_img62.jpg", "codeformer_05.jpg", "codeformer_01.jpg")
PHOTOS += ("gfpgan_10045.png",)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", nargs="*", default=list(PHOTOS), help="photo file names in shared data")
    args = p.parse_args()

    import tempfile

    import cv2
    from _official_pipeline import make_weights, our_options, psnr
    from _zoo_helpers import shared_data_dir

    from gfp.devices import openvino_installed
    from gfp.pipeline import Restorer

    data = shared_data_dir()
    folder = make_weights(Path(tempfile.mkdtemp(prefix="gfp-precision-")) / "weights", data)
    reference = Restorer(weights_dir=folder, device="cpu", backend="torch", bf16=False)
    paths = {"torch bf16": Restorer(weights_dir=folder, device="cpu", backend="torch", bf16=True)}
    if openvino_installed():
        for bf16 in (True, False):
            restorer = Restorer(weights_dir=folder, device="cpu", backend="openvino", bf16=bf16)
            paths[f"openvino {'bf16' if bf16 else 'f32'}"] = restorer
    options = our_options(folder, upscale=2, background=False)
    worst = dict.fromkeys(paths, float("inf"))
    for name in args.photos:
        img = cv2.imread(str(data / "photos" / name), cv2.IMREAD_COLOR)
        crops = reference.restore(img, options).cropped_faces
        expected = reference.restore_faces(crops, options)
        for label, restorer in paths.items():
            got = restorer.restore_faces(crops, options)
            values = [psnr(a, b) for a, b in zip(got, expected, strict=True)]
            worst[label] = min([worst[label], *values])
            print(f"{name:24} {label:14} " + " ".join(f"{v:6.1f}" for v in values))
    print("\nworst dB against PyTorch float32: " + ", ".join(f"{k} {v:.1f}" for k, v in worst.items()))


if __name__ == "__main__":
    main()
