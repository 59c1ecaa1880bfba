"""Benchmark of the video face tracker: how often faces keep their numbers in simulated scenes.

A track id is a person: ``--faces 1`` restores person 1 in every frame, so a face that gets a new id
(split) or takes another's (swap) changes who is restored. Each scenario moves faces 80 px tall (boxes
and FFHQ-template landmarks, 1.5 px of detector noise, 25 frames a second) and hides some of them in some
frames (the detector missed them: turned away, hidden, motion blur), then counts the runs, of ``--runs``
seeded ones, where a face had several ids (split) or two faces shared one (swap), and the tracker's time
per frame. To compare two versions, run it at each commit.

``--photos`` instead pans a window across real group photos (GFP_TEST_DATA, default ../shared/data) and
detects each frame with the real RetinaFace MobileNet-0.25: the frames where the pan starts are blurred
along it and their detections dropped (every face's, or one face's), and each detection is told by where
it lies in the photo.

    python benchmarks/tracking.py                       # every scenario, 300 runs each
    python benchmarks/tracking.py --only pan_blackout --runs 100
    python benchmarks/tracking.py --photos              # 108 clips of two real group photos
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gfp.faces import FFHQ_TEMPLATE_512, detect_faces  # noqa: E402
from gfp.store import ModelStore  # noqa: E402
from gfp.tracking import FaceTracker  # noqa: E402

SIZE, NOISE, FPS = 80.0, 1.5, 25.0
Scene = tuple[np.ndarray, np.ndarray]
"""Face centres (frames, faces, 2) and whether each face is detected (frames, faces)."""


def _misses(rng: np.random.Generator, frames: int, faces: int, p: float = 0.08) -> np.ndarray:
    """Detected-or-not of faces missed now and then, for 2-7 frames at a time."""
    shown = np.ones((frames, faces), bool)
    for f in range(faces):
        i = 3
        while i < frames - 3:
            if rng.random() < p:
                n = int(rng.integers(2, 8))
                shown[i : min(i + n, frames - 3), f] = False
                i += n + 2
            else:
                i += 1
    return shown


def _panned(base: np.ndarray, speed: float, start: int, frames: int) -> np.ndarray:
    """Faces at ``base`` (faces, 2) that a pan moves ``speed`` px a frame to the right from ``start`` on."""
    x = speed * np.clip(np.arange(frames) - start, 0, None)
    return base[None] + np.stack([x, 0 * x], 1)[:, None]


def side_by_side(rng: np.random.Generator) -> Scene:
    """Two faces whose boxes overlap, swaying, each missed now and then."""
    t = np.arange(75)[:, None]
    sway = 4 * np.sin(t / 7 + rng.uniform(0, 6, 2))[:, :, None] * np.array([1, 0.3])
    return np.array([[100, 100], [135, 100]])[None] + sway, _misses(rng, 75, 2)


def crossing(rng: np.random.Generator) -> Scene:
    """Two people crossing at 6-16 px a frame, one hidden behind the other while they overlap."""
    v, t = rng.uniform(6, 16), np.arange(40)
    a = np.stack([100 + v * t, 100 + 0 * t], 1)
    b = np.stack([100 + v * 39 - v * t, 100 + rng.uniform(-10, 10) + 0 * t], 1)
    shown = np.ones((40, 2), bool)
    shown[np.abs(a[:, 0] - b[:, 0]) < 60, rng.integers(2)] = False
    return np.stack([a, b], 1), shown


def start_moving(rng: np.random.Generator) -> Scene:
    """One still face starts moving at 4-16 px a frame and is missed for 3-10 frames soon after."""
    start = int(rng.integers(10, 25))
    centres = _panned(np.array([[100.0, 200.0]]), rng.uniform(4, 16), start, 60)
    shown = np.ones((60, 1), bool)
    gap = start + int(rng.integers(2, 8))
    shown[gap : gap + int(rng.integers(3, 11))] = False
    return centres, shown


def pan(rng: np.random.Generator) -> Scene:
    """Two faces, the camera starting to pan at 4-14 px a frame; each missed now and then."""
    base = np.array([[100.0, 100.0], [190.0, 100.0]])
    return _panned(base, rng.uniform(4, 14), int(rng.integers(10, 25)), 60), _misses(rng, 60, 2, p=0.1)


def pan_blackout(rng: np.random.Generator) -> Scene:
    """Two or three faces in a row, the camera starting to pan at 4-14 px a frame while the detector
    misses them all for 3-9 frames (motion blur); they come back a frame apart at most."""
    n, start = int(rng.integers(2, 4)), int(rng.integers(10, 20))
    base = np.array([[100 + 90 * k + rng.uniform(-10, 10), 100 + rng.uniform(-20, 20)] for k in range(n)])
    shown = np.ones((50, n), bool)
    gap = start + int(rng.integers(-1, 3))
    shown[gap : gap + int(rng.integers(3, 10))] = False
    for k in range(n):
        shown[gap : gap + int(rng.integers(0, 2)) + 3, k] = False
    return _panned(base, rng.uniform(4, 14), start, 50), shown


def pan_one_missed(rng: np.random.Generator) -> Scene:
    """Two faces, the camera starting to pan at 4-14 px a frame; one is missed for 3-10 frames meanwhile
    (turned away), the other seen."""
    start = int(rng.integers(10, 20))
    base = np.array([[100.0, 100.0], [190.0, 100 + rng.uniform(-20, 20)]])
    shown = np.ones((50, 2), bool)
    gap = start + int(rng.integers(-2, 6))
    shown[gap : gap + int(rng.integers(3, 11)), rng.integers(2)] = False
    return _panned(base, rng.uniform(4, 14), start, 50), shown


def row_pan_one_spacing(rng: np.random.Generator) -> Scene:
    """Four faces in a row 90 px apart, the camera panning exactly one spacing while all are missed."""
    gap = int(rng.integers(4, 9))
    base = np.array([[100 + 90 * k, 100 + rng.uniform(-3, 3)] for k in range(4)])
    x = 90 / (gap + 1) * np.clip(np.arange(40) - 15, 0, gap + 1)
    shown = np.ones((40, 4), bool)
    shown[15 : 15 + gap] = False
    return base[None] + np.stack([x, 0 * x], 1)[:, None], shown


def newcomers(rng: np.random.Generator) -> Scene:
    """Two faces leave; 1-5 frames later two others come in elsewhere, 60-200 px apart (new numbers)."""
    third = [100 + rng.uniform(150, 400), 100 + rng.uniform(-150, 150)]
    fourth = [third[0] + rng.uniform(60, 200), third[1] + rng.uniform(-40, 40)]
    centres = np.repeat(np.array([[[100, 100], [190, 100], third, fourth]], float), 40, 0)
    shown = np.zeros((40, 4), bool)
    shown[:20, :2] = True
    shown[20 + int(rng.integers(1, 6)) :, 2:] = True
    return centres, shown


def shot_cut(rng: np.random.Generator) -> Scene:
    """Two people, a frame with no face (the cut), then two others framed alike, 100-200 px away."""
    offset = rng.uniform(100, 200) * np.array([np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a)])
    before = np.array([[300.0, 300.0], [390.0, 300.0]])
    centres = np.repeat(np.concatenate([before, before + offset])[None], 30, 0)
    shown = np.zeros((30, 4), bool)
    shown[:15, :2] = True
    shown[16:, 2:] = True
    return centres, shown


SCENARIOS: dict[str, Callable[[np.random.Generator], Scene]] = {
    f.__name__: f
    for f in (
        side_by_side,
        crossing,
        start_moving,
        pan,
        pan_blackout,
        pan_one_missed,
        row_pan_one_spacing,
        newcomers,
        shot_cut,
    )
}


def _kept(ids: list[set[int]]) -> tuple[bool, bool]:
    """(a face had several ids, two faces shared one)."""
    split = any(len(seen) > 1 for seen in ids)
    return split, any(a & b for a, b in itertools.combinations(ids, 2))


def run(centres: np.ndarray, shown: np.ndarray, rng: np.random.Generator) -> tuple[bool, bool, float]:
    """Track one scene; (a face had several ids, two faces shared one, seconds spent in the tracker)."""
    tracker, ids = FaceTracker(), [set() for _ in range(centres.shape[1])]
    template, spent = FFHQ_TEMPLATE_512 / 512 * SIZE - SIZE / 2, 0.0
    for i in range(len(centres)):
        faces = np.flatnonzero(shown[i])
        at = centres[i, faces] + rng.normal(0, NOISE, (len(faces), 2))
        boxes = np.array([[*(c - SIZE / 2), *(c + SIZE / 2), 1] for c in at], np.float32)
        landmarks = np.array([template + c + rng.normal(0, NOISE / 2, (5, 2)) for c in at], np.float32)
        clock = time.perf_counter()
        _, got = tracker.update(boxes.reshape(-1, 5), landmarks.reshape(-1, 5, 2), i / FPS)
        spent += time.perf_counter() - clock
        for face, track in zip(faces, got, strict=True):
            ids[face].add(track)
    return (*_kept(ids), spent)


PHOTOS = ("codeformer_02.png", "deepface_selfie-many-people.jpg")  # 4 and 5 faces, 75-134 px wide


def photo_pans() -> None:
    """Pan a window (80 % of the width) across each of :data:`PHOTOS` at 4, 8 or 12 px a frame from frame 15
    or 16; the first 4, 6 or 9 frames of the pan are blurred along it and lose every face's detection, or
    one face's. Prints the clips where a face split or two shared an id."""
    data = Path(os.environ.get("GFP_TEST_DATA") or ROOT.parent / "shared" / "data")
    detector = ModelStore(weights_dir=data / "weights").detector("retinaface_mobile0.25").run
    clips = split = swap = 0
    for photo in PHOTOS:
        img = cv2.imread(str(data / "photos" / photo))
        width = int(img.shape[1] * 0.8)
        known = detect_faces(detector, img)
        people = (known.boxes[:, :2] + known.boxes[:, 2:4]) / 2
        rng = np.random.default_rng(0)
        for speed, gap, lost, start in itertools.product((4, 8, 12), (4, 6, 9), ("all", "one"), (15, 16)):
            tracker, ids = FaceTracker(), [set() for _ in people]
            missed = int(rng.integers(len(people)))
            blur = np.full((1, 3 * speed + 1), 1 / (3 * speed + 1), np.float32)
            for i in range(40):
                x = min(img.shape[1] - width, speed * max(i - start, 0))
                frame = np.ascontiguousarray(img[:, x : x + width])
                blurred = start <= i < start + gap
                found = detect_faces(detector, cv2.filter2D(frame, -1, blur) if blurred else frame)
                centres = (found.boxes[:, :2] + found.boxes[:, 2:4]) / 2 + [x, 0]
                who = [int(np.argmin(np.linalg.norm(people - c, axis=1))) for c in centres]
                keep = [j for j in range(len(who)) if not (blurred and (lost == "all" or who[j] == missed))]
                _, got = tracker.update(found.boxes[keep], found.landmarks[keep], i / FPS)
                for j, track in zip(keep, got, strict=True):
                    ids[who[j]].add(track)
            s, w = _kept(ids)
            clips, split, swap = clips + 1, split + s, swap + w
        print(f"{photo:34s} clips {clips:3d}  split {split:3d}  swap {swap:3d} (so far)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="seeded runs per scenario (default 300)")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), help="these scenarios only")
    parser.add_argument("--photos", action="store_true", help="pans across real photos instead")
    args = parser.parse_args()
    if args.photos:
        photo_pans()
        return
    for name in args.only or SCENARIOS:
        split = swap = frames = 0
        spent = 0.0
        for seed in range(args.runs):
            centres, shown = SCENARIOS[name](np.random.default_rng(seed))
            s, w, t = run(centres, shown, np.random.default_rng(1000 + seed))
            split, swap, spent, frames = split + s, swap + w, spent + t, frames + len(centres)
        print(
            f"{name:20s} split {split:4d}/{args.runs}  swap {swap:4d}/{args.runs}  "
            f"{1e6 * spent / frames:5.0f} us a frame",
            flush=True,
        )


if __name__ == "__main__":
    main()
