"""Make the app's example photos from scikit-image's public-domain astronaut portrait.

The portrait (NASA photo of astronaut Eileen Collins, public domain) ships with scikit-image as
``skimage.data.astronaut()``. Every example is that photo degraded the way real photos are degraded
(blur + JPEG, sensor noise, low resolution, a faded grayscale "old photo", a group of small faces),
so the Space has realistic inputs without anyone else's pictures. Seeded: reruns give the same files.

    python examples/make_examples.py            # writes next to this script
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from skimage import data

SEED = 20210621  # GFPGAN's CVPR 2021 paper; any fixed number keeps the files reproducible
FACE_BOX = (110, 0, 340, 230)  # x0, y0, x1, y1 of the head in the 512 px portrait (BGR array)


def astronaut_bgr() -> np.ndarray:
    """The 512x512 portrait as an OpenCV BGR uint8 array."""
    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Square resize with area averaging (downscaling) as cameras and web sites do."""
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip through JPEG so the compression artefacts are baked into the pixels."""
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def add_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian sensor noise, per colour channel."""
    noisy = img.astype(np.float32) + rng.normal(0.0, sigma, img.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def blur_jpeg(img: np.ndarray) -> np.ndarray:
    """Out-of-focus and heavily compressed: a forwarded phone photo."""
    small = resize(img, 320)
    return jpeg(cv2.GaussianBlur(small, (0, 0), 2.2), 25)


def noisy(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Low light: strong colour noise, mild JPEG."""
    return jpeg(add_noise(resize(img, 320), 16.0, rng), 75)


def low_resolution(img: np.ndarray) -> np.ndarray:
    """A thumbnail: the face is about 70 px wide, near the smallest that RetinaFace finds at 0.97."""
    return resize(img, 160)


def old_photo(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A faded, grainy, scratched sepia print with a vignette, scanned and saved as JPEG."""
    small = resize(img, 320)
    gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.float32)
    gray = cv2.GaussianBlur(gray, (0, 0), 1.6)
    gray = 70.0 + gray * 0.55  # faded: lifted blacks, low contrast
    gray += rng.normal(0.0, 9.0, gray.shape).astype(np.float32)  # film grain
    h, w = gray.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    radius = np.sqrt(((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2)
    gray *= np.clip(1.15 - 0.45 * radius**2, 0.4, 1.0)  # vignette
    for _ in range(7):  # scratches
        x0, x1 = rng.integers(0, w, 2)
        cv2.line(gray, (int(x0), 0), (int(x1), h - 1), float(rng.uniform(170, 230)), 1, cv2.LINE_AA)
    gray = np.clip(gray, 0, 255)
    sepia = np.stack([gray * 0.78, gray * 0.92, gray * 1.0], axis=-1)  # BGR: warm tint
    return jpeg(np.clip(sepia, 0, 255).astype(np.uint8), 55)


def group_photo(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Five degraded head crops of different sizes on one canvas: several faces, some small."""
    x0, y0, x1, y1 = FACE_BOX
    head = img[y0:y1, x0:x1]
    canvas = np.full((300, 640, 3), (96, 110, 122), np.uint8)
    canvas = add_noise(cv2.GaussianBlur(canvas, (0, 0), 3), 6.0, rng)
    placements = [(10, 60, 150), (165, 30, 170), (345, 80, 120), (475, 40, 150), (250, 215, 80)]
    for i, (x, y, size) in enumerate(placements):
        face = resize(head if i % 2 == 0 else head[:, ::-1], size)
        if i in (1, 3):
            face = cv2.GaussianBlur(face, (0, 0), 1.5)
        if i == 2:
            face = add_noise(face, 14.0, rng)
        canvas[y : y + size, x : x + size] = face
    return jpeg(canvas, 60)


def alpha_portrait(img: np.ndarray) -> np.ndarray:
    """A small cut-out with a soft elliptical alpha mask (BGRA): shows that transparency survives."""
    small = cv2.GaussianBlur(resize(img[0:400, 56:456], 192), (0, 0), 1.2)
    mask = np.zeros(small.shape[:2], np.uint8)
    cv2.ellipse(mask, (96, 90), (70, 92), 0, 0, 360, 255, -1, cv2.LINE_AA)
    mask = cv2.GaussianBlur(mask, (0, 0), 3)
    return np.dstack([small, mask])


def main() -> None:
    """Write every example next to this script (or into --out)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    img = astronaut_bgr()
    files = {
        "astronaut_blur_jpeg.jpg": blur_jpeg(img),
        "astronaut_noise.jpg": noisy(img, rng),
        "astronaut_lowres.png": low_resolution(img),
        "old_photo.jpg": old_photo(img, rng),
        "group_photo.jpg": group_photo(img, rng),
        "astronaut_alpha.png": alpha_portrait(img),
    }
    for name, pixels in files.items():
        params = [cv2.IMWRITE_JPEG_QUALITY, 92] if name.endswith(".jpg") else [cv2.IMWRITE_PNG_COMPRESSION, 9]
        path = out / name
        if not cv2.imwrite(str(path), pixels, params):
            raise SystemExit(f"could not write {path}")
        print(f"{path.name}: {pixels.shape[1]}x{pixels.shape[0]}, {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
