"""gfp.video and gfp.tracking: clips keep frames, timing, rotation and sound; broken files; no jitter.

CPU-fast: a tiny random generator (64 px faces), clips of at most a few seconds at small sizes made here
with PyAV (a sine tone on the audio track). Without the shared data a "blind" detector finds no face, so
those tests check the container side (frames, timestamps, audio, errors); with it, the real
MobileNet-0.25 finds the face of a shared photo placed on a synthetic background.
"""

from __future__ import annotations

import ctypes
import dataclasses
import fnmatch
import functools
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from _video_helpers import read_clip, tone, write_clip
from conftest import MOBILE, make_weights

import gfp.video
from gfp.atomic import PARTIAL_GLOB
from gfp.cli import face_summary, main
from gfp.faces import FFHQ_TEMPLATE_512
from gfp.pipeline import RestoreOptions, Restorer
from gfp.selection import FaceSelection, FrameFaces, choose_tracks
from gfp.tracking import FaceTracker, OneEuroFilter, SmoothingOptions, box_iou, face_size
from gfp.video import (
    VIDEO_CODECS,
    VideoError,
    VideoOptions,
    is_video,
    plan_faces,
    probe_video,
    restore_frames,
    restore_video,
)
from gfp.weights.errors import WeightsError

PHOTO = "codeformer_04.jpg"  # 225x225, one face

pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture(scope="module")
def blind(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights(tmp_path_factory.mktemp("blind"))


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    return make_weights(tmp_path_factory.mktemp("real"), shared_data / "weights" / MOBILE)


@functools.cache
def _restorer(folder: Path) -> Restorer:
    """One Restorer per weights folder, shared by the tests (networks load once)."""
    return Restorer(weights_dir=folder, device="cpu")


def _options(folder: Path, **kw: object) -> RestoreOptions:
    base = {"version": str(folder / "tiny"), "bg_upsampler": "none", "detector": "retinaface_mobile0.25"}
    return RestoreOptions(**(base | kw))


def _scene(h: int = 48, w: int = 64, i: int = 0) -> np.ndarray:
    """A smooth synthetic frame whose colours change with ``i`` (no face in it)."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.dstack([xx * 255 // w, yy * 255 // h, np.full_like(xx, (40 + 9 * i) % 256)]).astype(np.uint8)
    img[: h // 4, : w // 4] = (0, 0, 255)  # a red corner: tells rotations apart
    return img


def _face_frames(shared_data: Path, n: int, noise: float = 3.0, seed: int = 0) -> tuple[list, tuple]:
    """``n`` frames of the shared photo on a 400x240 gradient with fresh pixel noise each; the photo's box."""
    photo = cv2.imread(str(shared_data / "photos" / PHOTO))
    canvas = _scene(240, 400)
    canvas[8:233, 8:233] = photo
    rng = np.random.default_rng(seed)
    frames = [np.clip(canvas + rng.normal(0, noise, canvas.shape), 0, 255).astype(np.uint8) for _ in range(n)]
    return frames, (8, 8, 233, 233)


# --- tracking and smoothing, no video ----------------------------------------------------------------


def _still_face(center: tuple[float, float] = (200, 200), size: float = 100) -> np.ndarray:
    return FFHQ_TEMPLATE_512 / 512 * size + np.array(center) - size / 2


def test_one_euro_smooths_a_still_face_and_follows_a_moving_one() -> None:
    truth = _still_face()
    rng = np.random.default_rng(0)
    noisy = truth + rng.normal(0, 0.5, (200, 5, 2))
    smooth = OneEuroFilter()
    out = np.array([smooth(points, i / 25) for i, points in enumerate(noisy)])[25:]
    raw_error = np.abs(noisy[25:] - truth).mean()
    assert np.abs(out - truth).mean() < 0.6 * raw_error
    assert out.std(axis=0).mean() < 0.6 * noisy[25:].std(axis=0).mean()

    follow = OneEuroFilter()
    scale = face_size(truth)
    for i in range(50):  # one face size per second, to the right
        moved = truth + [scale * i / 25, 0]
        lag = np.abs(follow(moved, i / 25) - moved).mean()
    assert lag < 0.05 * scale


def test_tracker_keeps_identities_and_smooth_false_gives_detections() -> None:
    a, b = _still_face((100, 100), 80), _still_face((300, 120), 80)
    boxes = np.array([[60, 60, 140, 140, 1], [260, 80, 340, 160, 1]], np.float32)
    tracker = FaceTracker()
    _, first = tracker.update(boxes, np.stack([a, b]), 0.0)
    _, swapped = tracker.update(boxes[::-1] + 2, np.stack([b, a]) + 2, 0.04)
    assert swapped == first[::-1]  # each face keeps its track when the detector reorders them
    _, later = tracker.update(boxes[:1] + 600, a[None] + 600, 0.08)
    assert later[0] not in first  # a face far from every track starts a new one
    raw = FaceTracker(smooth=False)
    raw.update(boxes, np.stack([a, b]), 0.0)
    out, _ = raw.update(boxes, np.stack([a, b]) + 1.5, 0.04)
    np.testing.assert_allclose(out, np.stack([a, b]) + 1.5, rtol=0, atol=1e-4)
    assert box_iou(boxes, boxes).diagonal().tolist() == [1.0, 1.0]


def test_a_face_missed_for_a_moment_keeps_its_track_with_smoothing_restarted() -> None:
    a, b = _still_face((100, 100), 80), _still_face((300, 120), 80)
    boxes = np.array([[60, 60, 140, 140, 1], [260, 80, 340, 160, 1]], np.float32)
    tracker = FaceTracker(SmoothingOptions(keep_lost=0.2))
    _, first = tracker.update(boxes, np.stack([a, b]), 0.0)
    tracker.update(boxes, np.stack([a, b]) + 3, 0.04)
    _, gap = tracker.update(boxes[:1], a[None], 0.08)  # b missed for one frame
    out, back = tracker.update(boxes, np.stack([a, b]) + 4, 0.12)
    assert gap == first[:1] and back == first  # b is the same face again
    np.testing.assert_allclose(out[1], b + 4, rtol=0, atol=1e-4)  # its smoothing started over
    assert np.abs(out[0] - (a + 4)).max() > 0.5  # a's did not
    tracker.update(boxes[:1], a[None], 0.16)
    _, late = tracker.update(boxes, np.stack([a, b]), 0.5)  # b gone for longer than keep_lost
    assert late[0] == first[0] and late[1] not in first
    with pytest.raises(ValueError, match="keep_lost"):
        SmoothingOptions(keep_lost=-1)


def test_a_lost_face_does_not_take_the_face_that_moved_to_its_place() -> None:
    """Two people cross, one hidden behind the other meanwhile: the one in front reaches the place where
    the hidden one was last seen. It was taken for the hidden one (its track id, so a face choice
    restored the wrong person from then on); the tracks of the previous frame are matched first. The
    hidden one, found again further along its way, is the same face (a new one, it was a new person)."""
    tracker = FaceTracker()
    front, behind = [], []
    for i in range(9):
        a, b = 100 + 20 * i, 300 - 20 * i  # centres: a moves right, b left; they meet at frame 5
        shown = [b] if 4 <= i <= 6 else [a, b]  # a hidden behind b in frames 4-6
        boxes = np.array([[x - 40, 60, x + 40, 140, 1] for x in shown], np.float32)
        _, ids = tracker.update(boxes, np.stack([_still_face((x, 100), 80) for x in shown]), i / 25)
        front.append(ids[-1])
        behind += ids[:-1]
    assert len(set(front)) == 1  # b keeps its track all along, also where a was last seen (frame 7)
    assert front[0] not in behind and len(set(behind)) == 1


def test_a_face_hidden_while_two_cross_is_not_looked_for_where_a_wobble_sent_it() -> None:
    """Two people cross at 12 px a frame, one hidden behind the other for 6 frames; its last detection
    before that is 6 px low (the detector's wobble). Its velocity from that one step (150 px/s downwards)
    looked for it 42 px below where it came out, so it came back as a new person. A track's velocity is
    low-passed over its detections."""
    frames = []
    for i in range(20):
        a, b = (100 + 12 * i, 106 if i == 6 else 100), (328 - 12 * i, 100)
        frames.append({"b": b} if 7 <= i <= 12 else {"a": a, "b": b})
    _assert_one_track_each(_track_ids(frames))


def _track_ids(frames: list[dict[str, tuple[float, float]]]) -> dict[str, set[int]]:
    """Track 80 px faces at the centres each frame shows ({face: centre}, 25 frames a second); the track ids
    each face got."""
    tracker = FaceTracker()
    ids_of: dict[str, set[int]] = {}
    for i, shown in enumerate(frames):
        boxes = np.array([[x - 40, y - 40, x + 40, y + 40, 1] for x, y in shown.values()], np.float32)
        landmarks = np.array([_still_face(c, 80) for c in shown.values()], np.float32)
        _, ids = tracker.update(boxes.reshape(-1, 5), landmarks.reshape(-1, 5, 2), i / 25)
        for face, track in zip(shown, ids, strict=True):
            ids_of.setdefault(face, set()).add(track)
    return ids_of


def _assert_one_track_each(ids_of: dict[str, set[int]]) -> None:
    """Each face kept one track id all along, and no two faces shared one."""
    assert all(len(ids) == 1 for ids in ids_of.values()), ids_of
    assert len(set.union(*ids_of.values())) == len(ids_of), ids_of


def test_a_hard_cut_to_another_face_nearby_starts_its_smoothing_over() -> None:
    """A cut from one face to another a little aside (the same track: close enough to match) dragged the
    smoothed landmarks toward the last shot's face: 5.7 px (a quarter face) off on the cut frame. Steady
    motion, even fast, keeps its smoothing."""
    rng = np.random.default_rng(0)
    seq = [_still_face((260, 160), 88)] * 24 + [_still_face((275, 170), 88)] * 24  # face size 22.5 px
    seq = [pts + rng.uniform(-0.2, 0.2, pts.shape) for pts in seq]
    tracker, ids, out = FaceTracker(), set(), []
    for i, pts in enumerate(seq):
        c = pts.mean(0)
        smoothed, got = tracker.update(np.array([[*(c - 44), *(c + 44), 1]]), pts[None], i / 25)
        out.append(smoothed[0])
        ids |= set(got)
    error = np.linalg.norm(np.array(out) - np.array(seq), axis=-1).mean(-1)
    assert ids == {0} and error[24] < 1e-3 and error[24:29].max() < 0.3  # was 5.7, 1.7, 0.5, 0.2, 0.1
    assert error[10:24].max() > 0.01  # the still face before it was smoothed
    for speed in (5, 20):  # px per frame, with +-1 px of detector noise
        tracker = FaceTracker()
        for i in range(30):
            pts = _still_face((100 + speed * i, 180), 88) + rng.uniform(-1, 1, (5, 2))
            c = pts.mean(0)
            smoothed, _ = tracker.update(np.array([[*(c - 44), *(c + 44), 1]]), pts[None], i / 25)
            assert i < 3 or np.abs(smoothed[0] - pts).max() > 0.05  # smoothed, not started over
    with pytest.raises(ValueError, match="cut_jump must be a number > 0 face sizes"):
        SmoothingOptions(cut_jump=0)


def test_two_faces_side_by_side_each_missed_in_turn_keep_their_tracks() -> None:
    """Two still faces whose boxes overlap, the detector missing one, then the other: the face of the
    previous frame took the detection of the other, lost the frame before, where that one stood (the two
    swapped numbers for the rest of the clip). A lost face is taken where it was heading (here: where it
    stood) before a face of the previous frame that continues the detection less well."""
    tracker = FaceTracker()
    places = {"a": 100, "b": 130}  # boxes 80 px wide: IoU 0.45, above match_iou
    seen: dict[str, set[int]] = {"a": set(), "b": set()}
    for i, shown in enumerate(["ab", "ab", "a", "b", "ab", "ab"]):
        boxes = np.array([[places[f] - 40, 60, places[f] + 40, 140, 1] for f in shown], np.float32)
        _, ids = tracker.update(boxes, np.stack([_still_face((places[f], 100), 80) for f in shown]), i / 25)
        for face, track in zip(shown, ids, strict=True):
            seen[face].add(track)
    assert len(seen["a"]) == len(seen["b"]) == 1 and seen["a"] != seen["b"], seen


def test_a_still_face_missed_for_a_while_beside_another_is_found_where_it_stood() -> None:
    """A 3 px wobble of a still face's detection, then that face missed for 0.4 s beside another whose box
    overlaps it: it was looked for only where the wobble would have taken it (33 px off), so the face seen
    took its detection when it came back and the other was missed (the two swapped numbers). A lost face is
    also looked for where it stood, and a track's velocity is low-passed over its detections."""
    places = {"a": (100, 100), "b": (130, 100)}  # boxes 80 px wide: IoU 0.45, above match_iou
    shown = ["ab", "ab", "ab"] + ["b"] * 10 + ["a", "ab", "ab"]
    frames = [
        {f: (places[f][0], places[f][1] + (3 if (f, i) == ("a", 2) else 0)) for f in faces}
        for i, faces in enumerate(shown)
    ]
    _assert_one_track_each(_track_ids(frames))


def test_a_face_that_walked_in_front_of_a_still_one_does_not_take_it_when_it_shows_again() -> None:
    """B walks in front of A, who sits still and is missed meanwhile (hidden behind B). When A shows again,
    B has moved on 16 px past where A sits, and was 4 px from it a frame before: at its last place, B's
    track continued A's detection better than its own, and the two swapped numbers. The previous frame's
    faces are looked for where their motion has taken them."""
    frames = []
    for i in range(30):
        a, b = (100, 100), (180 - 12 * max(i - 10, 0), 100)
        frames.append({"b": b} if 10 <= i < 18 else {"a": a, "b": b})
    _assert_one_track_each(_track_ids(frames))


def test_a_face_missed_just_after_it_began_to_move_fast_keeps_its_track() -> None:
    """A face still for a second, then moving at 12 px a frame (a pan starting), missed for 9 frames after
    its first 2 steps: its low-passed velocity (108 of its 300 px/s by then) looked for it 77 px behind where
    it came back, so it came back as a new person. A lost face is also looked for where its last step would
    have taken it, for the detections nothing else continues."""
    tracker = FaceTracker()
    seen = set()
    for i in range(40):
        x = 100 + 12 * max(i - 25, 0)
        shown = [] if 28 <= i < 37 else [x]
        boxes = np.array([[x - 40, 60, x + 40, 140, 1] for x in shown], np.float32).reshape(-1, 5)
        seen.update(tracker.update(boxes, np.array([_still_face((x, 100), 80) for x in shown]), i / 25)[1])
    assert len(seen) == 1, seen


def test_faces_missed_as_a_pan_begins_are_found_where_the_pan_took_them() -> None:
    """Three faces in a row, the camera starting to pan at 10 px a frame while the detector misses them all
    for 6 frames (motion blur): each came back 60 px along, nearer its right-hand neighbour's last place, and
    took its number. Faces lost together are found again where one shift of the whole scene lands them."""
    frames = []
    for i in range(30):
        x = 10 * max(i - 10, 0)
        faces = {"a": (100 + x, 100), "b": (190 + x, 100), "c": (280 + x, 110)}
        frames.append({} if 10 <= i < 16 else faces)
    _assert_one_track_each(_track_ids(frames))


def test_a_face_missed_while_the_camera_pans_is_found_where_the_scene_moved() -> None:
    """Two faces, the camera panning at 10 px a frame; one is missed for 8 frames meanwhile (turned away),
    the other seen: still when it was lost, it came back 70 px from its last place, as a new person. A face
    missed is also looked for where the faces seen have moved since (the scene's motion)."""
    frames = []
    for i in range(30):
        x = 10 * max(i - 10, 0)
        faces = {"a": (100 + x, 100), "b": (190 + x, 100)}
        frames.append({"b": faces["b"]} if 8 <= i < 16 else faces)
    _assert_one_track_each(_track_ids(frames))


def test_the_scene_carried_on_through_frames_with_no_face_keeps_that_motion() -> None:
    """Two faces; A turns away as the camera starts to pan at 12 px a frame, and the detector misses both
    for 3 frames meanwhile (motion blur). The scene, carried on at its velocity through those frames, fell
    back to where it was before them once B was seen twice in a row again, so A was looked for 36 px short
    of where it came back, as a new person."""
    frames = []
    for i in range(20):
        x = 12 * max(i - 10, 0)
        faces = {"a": (100 + x, 100), "b": (190 + x, 105)}
        frames.append({} if 12 <= i < 15 else {"b": faces["b"]} if 9 <= i < 18 else faces)
    _assert_one_track_each(_track_ids(frames))


def test_a_face_seen_once_while_the_camera_pans_is_looked_for_where_the_scene_moved() -> None:
    """The camera pans at 12 px a frame past two faces; a third comes into sight, is detected once and then
    missed for 5 frames (motion blur). Its own motion unknown, it was taken as still in the picture, not
    moving with the scene, and came back 72 px on as a new person."""
    frames = []
    for i in range(20):
        x = 12 * i
        faces = {"a": (100 + x, 100), "b": (190 + x, 105), "c": (x - 20, 110)}
        frames.append({k: faces[k] for k in "ab"} if i < 10 or 11 <= i < 16 else faces)
    _assert_one_track_each(_track_ids(frames))


def test_a_cut_to_other_people_framed_alike_elsewhere_gives_them_new_numbers() -> None:
    """Two people side by side, a frame with no face detected (the cut), then two others framed alike
    (the same spacing), 150 px right and 60 px lower: one shift of the whole scene landed both lost faces
    on them, and they took the numbers of the two before the cut. No pan moves faces 4 face sizes a frame."""
    frames: list[dict[str, tuple[float, float]]] = []
    for i in range(20):
        before = {"a": (100, 100), "b": (190, 100)}
        frames.append(before if i < 10 else {} if i == 10 else {"c": (250, 160), "d": (340, 160)})
    _assert_one_track_each(_track_ids(frames))


def test_faces_a_pan_moved_one_spacing_along_a_row_are_not_taken_for_their_neighbours() -> None:
    """Four faces in a row 90 px apart, the camera panning 90 px left while the detector misses them all:
    each came back exactly where its left-hand neighbour had been. One shift of the whole scene explained all
    four, but each face's neighbour, at its last place, continued its detection as well, and the order of
    the detections decided: each took its neighbour's number. The faces the shift lands are matched first."""
    frames = []
    for i in range(24):
        x = -18 * min(max(i - 10, 0), 5)
        order = "abcd" if i < 10 else "dcba"  # the detector's order changes
        faces = {k: (300 + 90 * "abcd".index(k) + x, 100) for k in order}
        frames.append({} if 10 <= i < 15 else faces)
    _assert_one_track_each(_track_ids(frames))


def test_a_face_that_left_while_another_walked_is_not_looked_for_on_the_walkers_way() -> None:
    """A sits still and leaves while B walks past at 12 px a frame; 0.2 s later C shows up 80 px right of
    where A sat. The scene's motion is what the faces seen share, here B's walk alone: A, who did not move
    with it, is not looked for where it would have carried A (else C, found there, took A's number)."""
    frames = []
    for i in range(16):
        faces = {"a": (100, 100), "b": (300 + 12 * i, 100)} if i < 5 else {"b": (300 + 12 * i, 100)}
        frames.append({**faces, "c": (180, 100)} if i >= 10 else faces)
    _assert_one_track_each(_track_ids(frames))


def _track_frames(sides: list[dict[int, float]]) -> list[FrameFaces]:
    """Frames of square faces: per frame {track id: box side}; track t sits at x = 200 * t."""
    frames = []
    for faces in sides:
        boxes = np.array(
            [[200 * t, 50, 200 * t + side, 50 + side, 1] for t, side in faces.items()], np.float32
        )
        frames.append(FrameFaces(boxes.reshape(-1, 5), np.zeros((len(faces), 5, 2), np.float32), list(faces)))
    return frames


def test_tracks_are_chosen_as_people_on_their_median_size() -> None:
    # track 7 appears first; 3 and 5 appear together later (3 on the left); 5 is big but once small
    frames = _track_frames([{7: 40}, {7: 40, 5: 90, 3: 60}, {7: 40, 5: 20, 3: 60}, {5: 90, 3: 60}])
    plan = choose_tracks(frames, 1200, 400)
    assert plan.numbers == {7: 1, 3: 2, 5: 3} and plan.restore == {3, 5, 7}
    assert choose_tracks(frames, 1200, 400, "largest").restore == {5}  # median 90, not its one small frame
    assert choose_tracks(frames, 1200, 400, "1,3").restore == {7, 5}
    small = choose_tracks(frames, 1200, 400, min_face=50)
    assert small.restore == {3, 5} and small.selection.skipped == {1: "smaller than 50 px"}
    assert small.selection.summary() == "3 faces found, 2 restored, 1 skipped (1 smaller than 50 px)"


def test_people_are_found_among_many_tracks_comparing_each_track_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every clip's people are counted now, with --faces all too: a crowd's thousands of tracks (faces each
    missed now and then) were each compared with every person one pair at a time (40 s for 5000 tracks,
    after the clip was written); a track is compared with all of them at once."""
    import gfp.selection

    calls = []
    monkeypatch.setattr(gfp.selection, "box_iou", lambda a, b: calls.append(1) or box_iou(a, b))
    rng = np.random.default_rng(0)
    frames = []
    for i in range(400):  # a new face every frame, each seen for 3 frames, here and there
        ids = [t for t in range(i - 2, i + 1) if t >= 0]
        corners = rng.uniform(0, 1000, (len(ids), 2))
        boxes = np.hstack([corners, corners + 60, np.ones((len(ids), 1))]).astype(np.float32)
        frames.append(FrameFaces(boxes, np.zeros((len(ids), 5, 2), np.float32), ids))
    plan = choose_tracks(frames, 1100, 1100)
    assert plan.selection.found + plan.selection.brief > 100 and len(calls) <= 2 * 400  # (faces of 3 frames)


def test_a_face_back_where_a_track_ended_is_the_same_person() -> None:
    """After a cut-away longer than the tracker waits, the face found again where a track ended starts a
    new track but is the same person: a face choice keeps restoring it (it restored only the first part).
    A face there while the first is still seen is someone else."""

    def frame(*faces: tuple[int, float, float]) -> FrameFaces:
        boxes = np.array([[x, 50, x + side, 50 + side, 1] for _, x, side in faces], np.float32)
        return FrameFaces(
            boxes.reshape(-1, 5), np.zeros((len(faces), 5, 2), np.float32), [t for t, _, _ in faces]
        )

    host, guest = (1, 100, 90), (3, 600, 40)  # (track, x, side)
    frames = [frame(host, guest)] * 8 + [frame(guest)] * 20 + [frame((2, 108, 86), guest)] * 8  # 0.64 s
    plan = choose_tracks(frames, 800, 400, "largest")
    assert plan.restore == {1, 2} and plan.numbers == {1: 1, 2: 1, 3: 2}
    assert plan.selection == FaceSelection(2, (1,), {2: "not chosen"})
    beside = [frame(host, guest)] * 3 + [frame(host, (2, 108, 86), guest)] * 3  # together: two people
    assert choose_tracks(beside, 800, 400).numbers == {1: 1, 3: 2, 2: 3}
    elsewhere = [frame(host)] * 3 + [frame((2, 500, 90))] * 3  # back, but far from where it was
    assert choose_tracks(elsewhere, 800, 400, "1").restore == {1}


def test_a_brief_face_is_no_person() -> None:
    """A false detection in frame 0 and a passer-by in frames 1-2 appeared first: they were people 1 and
    2, and faces="1" restored the one-frame face instead of the person the clip is about. Seen for less
    than 0.5 s (and in less than half the frames) a face is not numbered nor chosen; "all" restores it."""
    frames = _track_frames([{5: 30}, {3: 50}, {3: 50}, {}] + [{1: 60, 2: 40}] * 44)  # 25 fps
    plan = choose_tracks(frames, 1200, 400, "1")
    assert plan.numbers == {1: 1, 2: 2} and plan.restore == {1}
    assert plan.selection == FaceSelection(2, (1,), {2: "not chosen"}, brief=2)
    assert plan.selection.summary("person", "people") == (
        "2 people found, 1 restored, 1 skipped (1 not chosen); "
        "2 brief faces (seen under 0.5 s), none restored"
    )
    every = choose_tracks(frames, 1200, 400)
    assert every.restore == {1, 2, 3, 5} and every.numbers == plan.numbers
    assert (
        every.selection.summary()
        == "2 faces found, 2 restored; 2 brief faces (seen under 0.5 s) restored too"
    )
    assert choose_tracks(frames, 1200, 400, "largest").restore == {1}
    assert choose_tracks(frames, 1200, 400, min_face=45).restore == {1, 3}  # a brief face is still a face
    slow = [dataclasses.replace(f, time=i / 2) for i, f in enumerate(frames)]  # 2 fps: 1 s, 0.5 s
    assert choose_tracks(slow, 1200, 400).numbers == {5: 1, 3: 2, 1: 3, 2: 4}
    short = _track_frames([{5: 30}, {5: 30, 1: 60}, {1: 60}])  # in a short clip, two of three frames
    assert choose_tracks(short, 1200, 400).numbers == {5: 1, 1: 2}
    assert choose_tracks(_track_frames([{}] * 3), 1200, 400, "1").selection == FaceSelection(0, missing=(1,))
    only = FaceSelection(0, brief=1, brief_restored=1)  # a brief face is still a face found: the line says it
    clip = gfp.video.VideoResult(Path("c.mp4"), 48, 2, 64, 48, 25.0, 1.9, "none", {}, "cpu", selection=only)
    assert face_summary(clip) == "0 people found, 0 restored; 1 brief face (seen under 0.5 s) restored too"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"codec": "mjpeg"}, "unknown video codec"),
        ({"crf": 52}, "crf must be an integer in \\[0, 51\\]"),
        ({"codec": "vp9", "crf": 64}, "\\[0, 63\\]"),
        ({"buffer_frames": 0}, "buffer_frames"),
        ({"buffer_frames": True}, "buffer_frames"),
        ({"max_seconds": 0}, "max_seconds"),
        ({"max_seconds": "10"}, "max_seconds must be a positive number"),
        ({"max_pixels": "10"}, "max_pixels must be a positive integer"),
        ({"smooth": "no"}, "smooth must be True or False"),
    ],
)
def test_bad_video_options(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VideoOptions(**kwargs)


def test_a_numpy_bool_is_a_bool_for_smooth() -> None:
    assert type(VideoOptions(smooth=np.False_).smooth) is bool and not VideoOptions(smooth=np.False_).smooth


def test_bad_smoothing_options() -> None:
    with pytest.raises(ValueError, match="min_cutoff"):
        SmoothingOptions(min_cutoff=0)
    with pytest.raises(ValueError, match="match_iou"):
        SmoothingOptions(match_iou=1.5)
    # a string passed float(); match_distance was never checked: both failed deep inside a later frame
    for bad in ({"min_cutoff": "1"}, {"match_distance": "x"}, {"match_distance": -1.0}, {"beta": True}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be a number"):
            SmoothingOptions(**bad)
    with pytest.raises(ValueError, match="match_distance must be a number >= 0 face sizes, got nan"):
        SmoothingOptions(match_distance=float("nan"))
    assert SmoothingOptions(min_cutoff=np.float32(1.0)).min_cutoff == 1.0
    assert (
        VideoOptions(crf=np.int64(20), max_seconds=np.float32(2.5)).crf == 20
    )  # NumPy's numbers are numbers


def test_is_video() -> None:
    assert is_video("a/clip.MP4") and is_video("x.webm") and is_video("y.mkv")
    assert all(is_video(f"camera.{ext}") for ext in ("MTS", "m2ts", "3gp", "flv", "h264"))
    assert not is_video("photo.jpg") and not is_video("anim.gif")


# --- clips, without faces (blind detector) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("container", "suffix", "audio", "how"),
    [
        (None, ".mp4", "aac", "copied"),
        ("matroska", ".mkv", "pcm_s16le", "re-encoded (pcm_s16le → aac)"),
        ("mov", ".mov", None, "none"),
    ],
)
def test_clip_keeps_frames_rate_duration_and_sound(
    blind: Path, tmp_path: Path, container: str | None, suffix: str, audio: str | None, how: str
) -> None:
    frames = [_scene(i=i) for i in range(60)]  # 2.4 s at 25 fps
    source = write_clip(tmp_path / f"clip{suffix}", frames, fps=25, audio=audio, container=container)
    seen: list[tuple[int, int, str]] = []
    result = restore_video(
        source,
        tmp_path / "out" / "clip.mp4",
        _options(blind, upscale=2),
        restorer=_restorer(blind),
        progress=lambda done, total, stage: seen.append((done, total, stage)),
    )
    original, restored = read_clip(source), read_clip(result.path)
    assert len(restored.frames) == result.frames == 60
    assert restored.fps == 25 and restored.video_codec == "h264"
    assert restored.duration == pytest.approx(original.duration, abs=1e-3) == pytest.approx(2.4)
    np.testing.assert_allclose(restored.times, original.times, atol=1e-3)
    assert restored.frames[0].shape == (96, 128, 3) and (result.width, result.height) == (128, 96)
    assert result.audio == how
    if audio is None:
        assert restored.audio is None
    else:
        assert restored.audio_codec == "aac"
        # AAC pads to whole 1024-sample frames (and the encoder adds its priming): at most 2 frames longer.
        assert 0 <= restored.audio.shape[1] - original.audio.shape[1] <= 2048
        spectrum = np.abs(np.fft.rfft(restored.audio[0, 4800:52800]))
        assert np.argmax(spectrum) / 1.0 == pytest.approx(440, abs=2)  # the tone, 1 s of it → 1 Hz bins
    # Without faces the frames are the Lanczos-upscaled input, up to the codecs' losses.
    upscaled = cv2.resize(original.frames[30], (128, 96), interpolation=cv2.INTER_LANCZOS4)
    assert np.abs(restored.frames[30].astype(int) - upscaled).mean() < 3
    # A Matroska header gives no frame count: the bar has no total until the end says 60.
    assert seen == [(done, 60 if container != "matroska" else 0, "frames") for done in range(1, 61)] + (
        [(60, 60, "frames")] if container == "matroska" else []
    )


def test_mp3_audio_is_copied_and_named_by_its_codec(blind: Path, tmp_path: Path) -> None:
    """MP3 is named "mp3" (FFmpeg's decoder is "mp3float") and copied into the MP4 as promised."""
    source = write_clip(tmp_path / "clip.mp4", [_scene(i=i) for i in range(10)], audio="libmp3lame")
    assert probe_video(source).audio == "mp3"
    result = restore_video(source, tmp_path / "out.mp4", _options(blind), restorer=_restorer(blind))
    assert result.audio == "copied"
    with av.open(str(result.path)) as written:
        assert written.streams.audio[0].codec_context.codec.canonical_name == "mp3"


@pytest.mark.parametrize(
    ("container", "suffix", "audio", "how"),
    [(None, ".mp4", "aac", "copied"), ("matroska", ".mkv", "pcm_s16le", "re-encoded (pcm_s16le → aac)")],
)
def test_stream_languages_and_titles_and_the_clips_tags_are_kept(
    blind: Path, tmp_path: Path, container: str | None, suffix: str, audio: str, how: str
) -> None:
    """The audio's language and title were dropped (the output's audio said language=und), the video's
    language and the clip's title, date and comment too. MP4 gives a stream's title back as "name"."""
    tags = {
        "container": {"title": "Holiday", "comment": "first day", "date": "2020"},
        "video": {"language": "deu", "title": "main view"},
        "audio": {"language": "fra", "title": "commentary"},
    }
    frames = [_scene(i=i) for i in range(10)]
    source = write_clip(tmp_path / f"clip{suffix}", frames, audio=audio, container=container, metadata=tags)
    result = restore_video(source, tmp_path / "out.mp4", _options(blind), restorer=_restorer(blind))
    assert result.audio == how
    with av.open(str(result.path)) as written:
        video, sound = written.streams.video[0].metadata, written.streams.audio[0].metadata
        assert (video["language"], video["name"]) == ("deu", "main view")
        assert (sound["language"], sound["name"]) == ("fra", "commentary")
        assert {key: written.metadata.get(key) for key in tags["container"]} == tags["container"]


def _with_picture(path: Path, picture_first_in: str | None, frames: list[np.ndarray]) -> Path:
    """A file with a one-frame MJPEG picture: a cover ("attached pic") beside AAC audio when
    ``picture_first_in`` is None, else a plain picture stream ahead of ``frames`` as H.264, in that format."""

    def encode(out: av.container.OutputContainer, stream: av.stream.Stream, images: list[np.ndarray]) -> None:
        for i, img in enumerate(images):
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)

    with av.open(str(path), "w", format=picture_first_in) as out:
        cover = out.add_stream("mjpeg", rate=25)
        cover.width, cover.height, cover.pix_fmt = 64, 48, "yuvj420p"
        if picture_first_in is None:
            cover.disposition = av.stream.Disposition.attached_pic
            sound = out.add_stream("aac", rate=48000)
            encode(out, cover, [_scene()])
            for start in range(0, 48000, 1024):
                chunk = av.AudioFrame.from_ndarray(
                    np.zeros((2, 1024), np.float32), format="fltp", layout="stereo"
                )
                chunk.sample_rate, chunk.pts = 48000, start
                for packet in sound.encode(chunk):
                    out.mux(packet)
            for packet in sound.encode(None):
                out.mux(packet)
        else:
            clip = out.add_stream("libx264", rate=25)
            clip.width, clip.height, clip.pix_fmt = 64, 48, "yuv420p"
            encode(out, cover, [_scene()])
            encode(out, clip, frames)
    return path


def test_a_cover_picture_is_not_taken_for_the_video(blind: Path, tmp_path: Path) -> None:
    """A music file's cover is no video (refused, not made a one-frame clip); a one-frame picture stream
    ahead of the clip is passed over for the clip."""
    song = _with_picture(tmp_path / "song.mp4", None, [])
    with pytest.raises(VideoError, match="no video stream \\(only a cover picture\\)"):
        restore_video(song, tmp_path / "a.mp4", _options(blind), restorer=_restorer(blind))
    frames = [_scene(i=i) for i in range(12)]
    source = _with_picture(tmp_path / "picture_first.mkv", "matroska", frames)
    result = restore_video(source, tmp_path / "b.mp4", _options(blind), restorer=_restorer(blind))
    assert result.frames == 12 and len(read_clip(result.path).frames) == 12


def test_variable_frame_rate_keeps_timestamps(blind: Path, tmp_path: Path) -> None:
    times = np.cumsum([0.0, *np.random.default_rng(1).uniform(0.02, 0.12, 29)])
    frames = [_scene(i=i) for i in range(30)]
    source = write_clip(tmp_path / "vfr.mkv", frames, times=list(times), container="matroska")
    result = restore_video(
        source, tmp_path / "vfr.mp4", _options(blind, upscale=1), restorer=_restorer(blind)
    )
    restored = read_clip(result.path)
    np.testing.assert_allclose(restored.times, times, atol=1e-3)
    assert result.duration == pytest.approx(read_clip(source).duration, abs=1e-3)
    # the rate the output plays at on average, not FFmpeg's guess for a Matroska header (25)
    assert result.fps == pytest.approx(restored.fps) and 12 < result.fps < 16  # frames 0.02-0.12 s apart


def test_an_avi_with_b_frames_keeps_its_frame_times(blind: Path, tmp_path: Path) -> None:
    """AVI keeps no presentation times: with B-frames FFmpeg hands frames their neighbours' timestamps.
    They are timed by their count (AVI is constant-rate), not pushed later one by one (a 12-frame clip
    came out 0.56 s long, its frames shown at the wrong times and the sound out of step)."""
    frames = [_scene(i=i) for i in range(12)]
    source = write_clip(tmp_path / "b.avi", frames, audio="pcm_s16le", container="avi")
    with av.open(str(source)) as clip:  # the premise: timestamps out of order as decoded
        stamps = [frame.pts for frame in clip.decode(video=0)]
    assert stamps != sorted(stamps)
    result = restore_video(source, tmp_path / "b.mp4", _options(blind, upscale=1), restorer=_restorer(blind))
    restored = read_clip(result.path)
    np.testing.assert_allclose(restored.times, np.arange(12) / 25 + restored.times[0], atol=1e-3)
    assert result.duration == pytest.approx(12 / 25, abs=1e-3)
    colours = [int(frame[40, 60, 2]) for frame in restored.frames]  # the red channel counts the frames
    assert colours == sorted(colours)


@pytest.mark.parametrize("audio", ["aac", "mp2"])
def test_segments_joined_end_to_end_keep_their_sound(blind: Path, tmp_path: Path, audio: str) -> None:
    """Transport-stream segments joined end to end (a camera's or recorder's files) start their timestamps
    again: the audio, copied or re-encoded, continues after the last packet as the video does (the muxer
    refused it and the whole clip failed after decoding)."""
    segment = write_clip(
        tmp_path / "seg.ts", [_scene(i=i) for i in range(12)], audio=audio, container="mpegts"
    )
    joined = tmp_path / "joined.ts"
    joined.write_bytes(segment.read_bytes() * 2)
    result = restore_video(
        joined, tmp_path / "out.mp4", _options(blind, upscale=1), restorer=_restorer(blind)
    )
    restored = read_clip(result.path)
    assert result.frames == len(restored.frames) == 24
    assert restored.audio.shape[1] / restored.audio_rate == pytest.approx(24 / 25, abs=0.1)
    assert np.all(np.diff(restored.times) > 0)


def _sound_end(path: Path) -> float:
    """Where the last audio packet of ``path`` ends (seconds)."""
    with av.open(str(path)) as clip:
        packets = [p for p in clip.demux(clip.streams.audio[0]) if p.pts is not None]
    return float((packets[-1].pts + packets[-1].duration) * packets[-1].time_base)


def _small_video_with(out: av.container.OutputContainer, frames: int, audio: str) -> av.audio.AudioStream:
    """``frames`` small frames at 25 fps written into ``out``, and an ``audio`` stream (48 kHz stereo) added
    for the caller to fill."""
    video = out.add_stream("libx264", rate=25)
    video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
    sound = out.add_stream(audio, rate=48000)
    sound.layout = "stereo"
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(_scene(i=i), format="bgr24")
        frame.pts = i
        out.mux(video.encode(frame))
    out.mux(video.encode(None))
    return sound


@pytest.mark.parametrize(("audio", "how"), [("aac", "copied"), ("mp2", "re-encoded (mp2 → aac)")])
def test_sound_whose_timestamps_jitter_stays_with_the_picture(
    blind: Path, tmp_path: Path, audio: str, how: str
) -> None:
    """Audio timestamps jittering by a millisecond (a capture's MPEG-TS) make some packets begin before
    the one before ends: each was moved after it, so the sound fell behind the picture, for good and
    more and more (0.47 s after 10 s). Only timestamps that go back are moved; no sound is lost."""
    source = tmp_path / "capture.ts"
    with av.open(str(source), "w", format="mpegts") as out:
        sound = _small_video_with(out, 100, audio)
        samples = tone(4.0)
        if audio == "mp2":  # packed 16-bit
            samples = (samples * 32767).astype(np.int16).T.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format=sound.codec_context.format.name, layout="stereo")
        frame.sample_rate = 48000
        size = sound.codec_context.frame_size
        for n, packet in enumerate([*sound.encode(frame), *sound.encode(None)]):
            packet.pts = packet.dts = size * n + (96 if n % 2 else 0)  # every other packet 2 ms late
            packet.time_base = Fraction(1, 48000)
            out.mux(packet)
    result = restore_video(
        source, tmp_path / "out.mp4", _options(blind, upscale=1), restorer=_restorer(blind)
    )
    assert result.audio == how
    assert _sound_end(result.path) == pytest.approx(_sound_end(source), abs=0.03)
    heard, given = read_clip(result.path).audio.shape[1], read_clip(source).audio.shape[1]
    assert heard == pytest.approx(given, abs=2048)


def test_sound_that_decodes_longer_than_its_place_is_cut_not_refused(blind: Path, tmp_path: Path) -> None:
    """A packet that decodes to more sound than its time slot (measured: garbled Opus packets of a WebM)
    was re-encoded whole, the AAC encoder's timestamps went back and the whole clip failed ("Invalid
    argument"); the sound that overlaps what came before is cut. Here FLAC frames of 96 ms, 60 ms apart."""
    source = tmp_path / "overlap.nut"
    with av.open(str(source), "w") as out:
        sound = _small_video_with(out, 25, "flac")
        frame = av.AudioFrame.from_ndarray(
            (tone(1.0) * 32767).astype(np.int16).T.reshape(1, -1), layout="stereo"
        )
        frame.sample_rate = 48000
        packets = [
            p for p in [*sound.encode(frame), *sound.encode(None)] if p.size
        ]  # 4608 samples, last 1920
        for n, packet in enumerate(packets):
            packet.pts = packet.dts = round(n * 0.06 * 48000)
            packet.time_base = Fraction(1, 48000)
            out.mux(packet)
    result = restore_video(
        source, tmp_path / "out.mp4", _options(blind, upscale=1), restorer=_restorer(blind)
    )
    assert result.audio == "re-encoded (flac → aac)"
    restored = read_clip(result.path)
    assert len(restored.frames) == 25
    expected = (len(packets) - 1) * 0.06 + 1920 / 48000
    assert restored.audio.shape[1] / restored.audio_rate == pytest.approx(expected, abs=0.05)


def test_rotation_is_applied_to_the_pixels(blind: Path, tmp_path: Path) -> None:
    frames = [_scene(i=i) for i in range(10)]
    source = write_clip(tmp_path / "phone.mp4", frames, rotation=90)  # shown turned 90° counter-clockwise
    info = probe_video(source)
    assert (info.width, info.height, info.rotation) == (48, 64, 90)
    result = restore_video(
        source, tmp_path / "upright.mp4", _options(blind, upscale=1), restorer=_restorer(blind)
    )
    restored = read_clip(result.path)
    assert restored.frames[0].shape == (64, 48, 3) and restored.rotation == 0
    error = {k: np.abs(restored.frames[5].astype(int) - np.rot90(frames[5], k)).mean() for k in (1, 3)}
    assert error[1] < 5 and error[3] > 4 * error[1]


def _tagged_clip(path: Path, bgr: tuple[int, int, int], matrix: int, full_range: bool) -> Path:
    """Five flat frames of colour ``bgr`` converted with colour matrix ``matrix`` (FFmpeg's AVColorSpace:
    1 BT.709, 6 BT.601) in full or limited range, with the matching colour tags, as a camera writes them."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.options = {"crf": "0"}
        tags = video.codec_context
        tags.colorspace = tags.color_primaries = tags.color_trc = matrix
        tags.color_range = 2 if full_range else 1
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), bgr, np.uint8), format="bgr24")
            frame.colorspace, frame.color_range, frame.pts = matrix, tags.color_range, i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
    return path


def _plane_means(frame: av.VideoFrame) -> list[float]:
    """The mean of each plane (Y, U, V) of a decoded frame, without the padding at the end of its lines."""
    return [
        np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width].mean() for p in frame.planes
    ]


@pytest.mark.parametrize(("matrix", "full_range"), [(1, False), (1, True), (6, True), (2, False)])
def test_colours_are_tagged_as_converted(blind: Path, tmp_path: Path, matrix: int, full_range: bool) -> None:
    """The output says which colour matrix its pixels were converted with: the input's, in limited range
    (BT.601 for an untagged input, as it was decoded; 2 = unspecified). It was untagged and converted with
    BT.601, whatever the input: players take untagged HD video for BT.709, so an HD clip came out shifted
    in colour (a skin tone's red by 8 levels)."""
    source = _tagged_clip(tmp_path / "in.mp4", (40, 120, 200), matrix, full_range)
    result = restore_video(
        source, tmp_path / "out.mp4", _options(blind, upscale=1), restorer=_restorer(blind)
    )
    with av.open(str(source)) as before, av.open(str(result.path)) as after:
        frames = next(before.decode(video=0)), next(after.decode(video=0))
        tags = after.streams.video[0].codec_context
        converted = 6 if matrix == 2 else matrix
        assert (tags.colorspace, tags.color_primaries, tags.color_trc) == (converted, matrix, matrix)
        assert tags.color_range == frames[1].color_range == 1  # limited
        if not full_range:  # the same matrix and range: the same YUV values (up to rounding)
            np.testing.assert_allclose(_plane_means(frames[1]), _plane_means(frames[0]), atol=2.5)


def test_colours_survive_restoring_again_and_again(blind: Path, tmp_path: Path) -> None:
    """Decoding and encoding convert YUV to BGR and back: with swscale's default rounding each pass made the
    picture 2 levels (of 255) darker, 6 after three passes; now they round exactly."""
    clip = source = _tagged_clip(tmp_path / "in.mp4", (40, 120, 200), matrix=1, full_range=False)
    for n in range(3):
        clip = restore_video(
            clip, tmp_path / f"{n}.mp4", _options(blind, upscale=1), restorer=_restorer(blind)
        ).path
    with av.open(str(source)) as before, av.open(str(clip)) as after:
        frames = next(before.decode(video=0)), next(after.decode(video=0))
        np.testing.assert_allclose(_plane_means(frames[1]), _plane_means(frames[0]), atol=1)


@pytest.mark.parametrize("codec", list(VIDEO_CODECS))
def test_colour_tags_an_encoder_refuses_are_left_out(blind: Path, tmp_path: Path, codec: str) -> None:
    """x265 refuses to open with primaries 22 (EBU Tech 3213-E), which H.264 and FFmpeg know: a clip so
    tagged failed as "cannot decode or encode this clip" with --video-codec h265 once the input's tags were
    kept. Those tags are left unspecified; the matrix, which the pixels were converted with, stays."""
    source = tmp_path / "in.mp4"
    with av.open(str(source), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        tags = stream.codec_context
        tags.colorspace, tags.color_primaries, tags.color_trc, tags.color_range = 1, 22, 1, 1
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(_scene(i=i), format="bgr24")
            frame.colorspace, frame.pts = 1, i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    result = restore_video(
        source, tmp_path / "out.mp4", _options(blind, upscale=1), VideoOptions(codec=codec), _restorer(blind)
    )
    with av.open(str(result.path)) as written:
        tags = written.streams.video[0].codec_context
        assert (tags.colorspace, tags.color_primaries, tags.color_trc) == (1, 2, 1)


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="POSIX thread scheduling")
def test_an_av1_clip_leaves_the_threads_scheduling_as_it_was(blind: Path, tmp_path: Path) -> None:
    """SVT-AV1, opened in a process of root (a container), switched the thread that opened it to real-time
    SCHED_FIFO for good: every later restore of that thread (the app's, a folder's next clip) and every
    process it started then ran real-time, starving the others on the machine."""
    # with sound: its first packet, muxed before any frame is encoded, opens the encoder
    source = write_clip(tmp_path / "clip.mp4", [_scene(i=i) for i in range(3)])
    before = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        restore_video(
            source,
            tmp_path / "out.mp4",
            _options(blind, upscale=1),
            VideoOptions(codec="av1"),
            _restorer(blind),
        )
        after = os.sched_getscheduler(0), os.sched_getparam(0)
    finally:
        os.sched_setscheduler(0, *before)  # for the tests after this one, also when it fails
    assert after == before


@pytest.mark.parametrize(("codec", "chatter"), [("h265", "x265 [info]"), ("av1", "Svt[info]")])
def test_encoders_say_nothing_on_success(blind: Path, tmp_path: Path, codec: str, chatter: str) -> None:
    """x265 and SVT-AV1 printed their settings (about 25 lines) to stderr for every clip, between the
    progress bars; only their errors are shown now."""
    source = write_clip(tmp_path / "clip.mp4", [_scene(i=i) for i in range(3)], audio=None)
    command = [sys.executable, "-m", "gfp", "-i", str(source), "-o", str(tmp_path / "out"), "-s", "1",
               "-v", str(blind / "tiny"), "--weights-dir", str(blind), "--bg_upsampler", "none",
               "--detector", "retinaface_mobile0.25", "--device", "cpu", "--video-codec", codec]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "SVT_LOG"}
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert chatter not in done.stderr and "Svt[warn]" not in done.stderr, done.stderr[-2000:]


def test_odd_output_size_is_padded_and_noted(blind: Path, tmp_path: Path) -> None:
    source = write_clip(tmp_path / "odd.mp4", [_scene(50, 66, i) for i in range(5)], audio=None)
    result = restore_video(
        source, tmp_path / "odd_out.mp4", _options(blind, upscale=1.5), restorer=_restorer(blind)
    )
    assert (result.width, result.height) == (100, 76)  # 99x75 padded
    assert any("99x75 padded to 100x76" in note for note in result.notes)
    assert read_clip(result.path).frames[0].shape == (76, 100, 3)


@pytest.fixture
def malloc_fill() -> Iterator[Callable[[int], None]]:
    """Makes glibc's malloc fill each block it hands out with one byte (``mallopt(M_PERTURB)``; 0 = off, as
    after the test): memory a library reads without writing it first then holds known, changeable bytes."""
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("needs glibc's malloc")
    mallopt = ctypes.CDLL(None).mallopt
    yield lambda byte: mallopt(-6, byte)  # -6: M_PERTURB
    mallopt(-6, 0)


def test_a_clip_restored_again_in_one_process_gives_the_same_bytes(
    blind: Path, tmp_path: Path, malloc_fill: Callable[[int], None]
) -> None:
    """x264's AVX-512 code reads memory it never wrote (frames 13 macroblocks wide, B-frames, mb-tree), so
    the file depended on what the process had freed before: restoring a clip again gave other bytes."""
    rng = np.random.default_rng(0)
    noisy = [np.clip(_scene(60, 100) + rng.normal(0, 3, (60, 100, 3)), 0, 255) for _ in range(10)]
    source = write_clip(tmp_path / "clip.mp4", [frame.astype(np.uint8) for frame in noisy], audio=None)
    written = []
    for fill in (0x00, 0x55, 0xAA):
        malloc_fill(fill)
        result = restore_video(source, tmp_path / f"{fill}.mp4", _options(blind), restorer=_restorer(blind))
        written.append(result.path.read_bytes())
    assert written[1] == written[0] and written[2] == written[0]


def test_two_clips_starting_at_once_leave_pyav_logging_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading x264's CPU choice turns PyAV's process-wide logging on for a moment. Two clips starting at
    once (two requests in the app) interleaved: the first turned it off again while the second read, so the
    second found no line (None: x264 kept its AVX-512 code) and then left logging on for good, sending
    every later FFmpeg message to the Python loggers."""
    gfp.video._x264_cpu_without_avx512.cache_clear()
    alone = gfp.video._x264_cpu_without_avx512()
    gfp.video._x264_cpu_without_avx512.cache_clear()
    before = av.logging.get_level()
    changed = threading.Condition()
    calls = {"get": 0, "set": 0}
    real_get, real_set, real_capture = av.logging.get_level, av.logging.set_level, av.logging.Capture

    def counted(name: str, call: Callable) -> Callable:
        def wrapper(*args: object) -> object:
            with changed:
                calls[name] += 1
                changed.notify_all()
            return call(*args)

        return wrapper

    class Capture:
        """PyAV's Capture, holding the first probe open until a second one has begun (at most 0.5 s: one
        probe only begins once the other is over), and the second until the first set the level back."""

        def __init__(self) -> None:
            self.capture = real_capture()

        def __enter__(self) -> list:
            with changed:
                changed.wait_for(lambda: calls["set"] != 2, timeout=0.5)  # 2: both probes raised it
            return self.capture.__enter__()

        def __exit__(self, *exc: object) -> None:
            self.capture.__exit__(*exc)
            with changed:
                changed.wait_for(lambda: calls["get"] > 1, timeout=0.5)

    monkeypatch.setattr(av.logging, "get_level", counted("get", real_get))
    monkeypatch.setattr(av.logging, "set_level", counted("set", real_set))
    monkeypatch.setattr(av.logging, "Capture", Capture)
    found: list[str | None] = []
    threads = [
        threading.Thread(target=lambda: found.append(gfp.video._x264_cpu_without_avx512())) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    gfp.video._x264_cpu_without_avx512.cache_clear()  # what a failure here found is not kept
    left = real_get()
    real_set(before)  # for the tests after this one, also when it fails
    assert left == before
    assert found == [alone, alone]


def _broken(kind: str, folder: Path) -> Path:
    """Files a user may hand over by mistake, or that were cut short."""
    frames = [_scene(i=i) for i in range(20)]
    if kind == "not a video":
        (folder / "notes.mp4").write_bytes(b"this is text, not a video " * 40)
        return folder / "notes.mp4"
    if kind == "text named as a picture":  # FFmpeg takes it for one by its name alone
        (folder / "holiday.png").write_bytes(b"this is text, not a picture " * 40)
        return folder / "holiday.png"
    if kind == "photo":
        (folder / "holiday.mp4").write_bytes(cv2.imencode(".jpg", _scene())[1].tobytes())  # named as a clip
        return folder / "holiday.mp4"
    if kind == "empty":
        (folder / "empty.mov").write_bytes(b"")
        return folder / "empty.mov"
    if kind == "truncated mp4":
        data = write_clip(folder / "whole.mp4", frames).read_bytes()
        (folder / "cut.mp4").write_bytes(data[: len(data) // 2])  # the index (moov) at the end is gone
        return folder / "cut.mp4"
    if kind == "truncated mkv":
        data = write_clip(folder / "whole.mkv", frames, container="matroska").read_bytes()
        (folder / "cut.mkv").write_bytes(data[: len(data) * 6 // 10])
        return folder / "cut.mkv"
    if kind == "no video stream":
        with av.open(str(folder / "sound.m4a"), "w", format="mp4") as out:
            sound = out.add_stream("aac", rate=48000)
            frame = av.AudioFrame.from_ndarray(
                np.zeros((2, 1024), np.float32), format="fltp", layout="stereo"
            )
            frame.sample_rate, frame.pts = 48000, 0
            out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
        return folder / "sound.m4a"
    if kind == "zero frames":  # a video stream is declared, only sound follows
        with av.open(str(folder / "blank.mkv"), "w", format="matroska") as out:
            video = out.add_stream("libx264", rate=25)
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
            sound = out.add_stream("aac", rate=48000)
            for i in range(10):
                frame = av.AudioFrame.from_ndarray(
                    np.zeros((2, 1024), np.float32), format="fltp", layout="stereo"
                )
                frame.sample_rate, frame.pts = 48000, 1024 * i
                out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
        return folder / "blank.mkv"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("not a video", "not a video or corrupt"),
        ("text named as a picture", r"not a video or corrupt \(nor a picture"),
        ("photo", "a still image, not a video; restore it as a photo"),
        ("empty", "not a video or corrupt"),
        ("truncated mp4", "not a video or corrupt"),
        ("truncated mkv", "truncated or corrupt"),
        ("no video stream", "no video stream"),
        ("zero frames", "holds no frames"),
    ],
)
def test_broken_files_are_one_line_errors_and_leave_nothing(
    blind: Path, tmp_path: Path, kind: str, message: str
) -> None:
    source = _broken(kind, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(VideoError, match=message) as err:
        restore_video(source, out / "x.mp4", _options(blind), restorer=_restorer(blind))
    assert str(source) in str(err.value) and "\n" not in str(err.value)
    assert not out.exists() or list(out.iterdir()) == []


def test_limits_refuse_before_decoding(blind: Path, tmp_path: Path) -> None:
    source = write_clip(tmp_path / "clip.mp4", [_scene(i=i) for i in range(50)], audio=None)
    with pytest.raises(VideoError, match=r"64x48 \(0.0031 MP\) are above the limit of 0.0030 MP"):
        restore_video(
            source, tmp_path / "a.mp4", _options(blind), VideoOptions(max_pixels=3000), _restorer(blind)
        )
    wide = write_clip(tmp_path / "wide.mp4", [_scene(48, 2100)], audio=None)  # x8: wider than H.264 goes
    with pytest.raises(
        VideoError, match="frames of 16800x384 are above the 16384 px a side that h264"
    ) as err:
        restore_video(wide, tmp_path / "c.mp4", _options(blind, upscale=8), restorer=_restorer(blind))
    assert str(err.value).endswith("h264 encodes; choose a smaller upscale, or codec h265 or vp9")
    # the options it names, in the flags that set them (gfp.cli), the file named as it was
    said = err.value.said({"upscale": "--upscale", "codec": "--video-codec"})
    assert said == str(err.value).replace("upscale, or codec", "--upscale, or --video-codec")
    with pytest.raises(VideoError, match="lasts 2.0 s, above the limit of 1 s"):
        restore_video(
            source, tmp_path / "b.mp4", _options(blind), VideoOptions(max_seconds=1), _restorer(blind)
        )
    with pytest.raises(ValueError, match="aligned does not apply to videos"):
        restore_video(source, tmp_path / "c.mp4", _options(blind, aligned=True), restorer=_restorer(blind))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "wide.mp4"]  # no output left


def test_limits_hold_for_a_raw_stream_whose_header_says_nothing(blind: Path, tmp_path: Path) -> None:
    """A raw H.264 stream's header has no duration (probed as 0 s) and its size may change midway: the
    limits are checked again on the decoded frames, and nothing is left behind."""
    raw = write_clip(tmp_path / "long.h264", [_scene(i=i) for i in range(50)], audio=None, container="h264")
    assert probe_video(raw).duration == 0.0
    with pytest.raises(VideoError, match="lasts more than the limit of 1 s"):
        restore_video(raw, tmp_path / "a.mp4", _options(blind), VideoOptions(max_seconds=1), _restorer(blind))
    small = write_clip(tmp_path / "s.h264", [_scene(i=i) for i in range(3)], audio=None, container="h264")
    large = write_clip(
        tmp_path / "l.h264", [_scene(96, 128, i) for i in range(3)], audio=None, container="h264"
    )
    both = tmp_path / "both.h264"
    both.write_bytes(small.read_bytes() + large.read_bytes())
    with pytest.raises(VideoError, match="frame size changes from 64x48 to 128x96 midway"):
        restore_video(both, tmp_path / "b.mp4", _options(blind), restorer=_restorer(blind))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["both.h264", "l.h264", "long.h264", "s.h264"]


def test_a_clip_cut_without_re_encoding_is_not_called_truncated(blind: Path, tmp_path: Path) -> None:
    """A clip cut without re-encoding starts inside a group of pictures: its edit list drops the frames
    before the cut, which the header still counts. They are not missing (the clip was refused as
    "truncated or corrupt (decoded 20 of 25 frames)"); the frames shown are restored."""
    times = [(i - 5) / 25 for i in range(25)]  # 5 frames before the cut
    source = write_clip(tmp_path / "cut.mp4", [_scene(i=i) for i in range(25)], times=times, audio=None)
    with av.open(str(source)) as clip:  # the premise: 25 frames in the header, 5 of them dropped
        assert clip.streams.video[0].frames == 25 and len(list(clip.decode(video=0))) == 20
    result = restore_video(
        source, tmp_path / "out.mp4", _options(blind, upscale=1), restorer=_restorer(blind)
    )
    original, restored = read_clip(source), read_clip(result.path)
    assert result.frames == len(restored.frames) == 20
    np.testing.assert_allclose(restored.times, original.times, atol=1e-3)
    for shown, out in zip(original.frames, restored.frames, strict=True):  # the same frames, in order
        assert np.abs(out.astype(int) - shown).mean() < 3


@pytest.mark.parametrize("faces", ["all", "largest"])
def test_progress_on_a_cut_clip_counts_the_frames_shown(blind: Path, tmp_path: Path, faces: str) -> None:
    """The progress total was the header's frame count, so a clip cut without re-encoding (25 frames in
    its header, 5 of them dropped by its edit list) ended at 20/25; a face choice's first pass too."""
    times = [(i - 5) / 25 for i in range(25)]
    source = write_clip(tmp_path / "cut.mp4", [_scene(i=i) for i in range(25)], times=times, audio=None)
    seen: list[tuple[int, int, str]] = []
    restore_video(
        source,
        tmp_path / "out.mp4",
        _options(blind, upscale=1, faces=faces),
        restorer=_restorer(blind),
        progress=lambda done, total, stage: seen.append((done, total, stage)),
    )
    stages = ["detect", "frames"] if faces != "all" else ["frames"]
    assert seen == [(done, 20, stage) for stage in stages for done in range(1, 21)]


def _with_commentary(path: Path, frames: list[np.ndarray], seconds: float) -> Path:
    """A Matroska clip at 25 fps with two sound tracks: silence as long as the video, then a commentary
    of ``seconds``."""
    with av.open(str(path), "w", format="matroska") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        tracks = [(out.add_stream("aac", rate=48000), length) for length in (len(frames) / 25, seconds)]
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        for sound, length in tracks:
            for start in range(0, round(length * 48000), 1024):
                chunk = av.AudioFrame.from_ndarray(
                    np.zeros((2, 1024), np.float32), format="fltp", layout="stereo"
                )
                chunk.sample_rate, chunk.pts = 48000, start
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
    return path


def test_streams_beginning_before_or_ending_after_the_video_are_no_truncation(
    blind: Path, tmp_path: Path
) -> None:
    """The container's duration spans every stream: sound that begins before the video, or a second sound
    track that outlasts it, made the whole clip "truncated or corrupt (the streams end at 1.00 s of
    1.40 s)". The video keeps its times and the sound its place."""
    frames = [_scene(i=i) for i in range(25)]
    late = write_clip(tmp_path / "late.mp4", frames, times=[0.4 + i / 25 for i in range(25)])
    result = restore_video(late, tmp_path / "a.mp4", _options(blind, upscale=1), restorer=_restorer(blind))
    original, restored = read_clip(late), read_clip(result.path)
    assert result.frames == 25 and result.audio == "copied"
    np.testing.assert_allclose(restored.times, original.times, atol=1e-3)
    assert restored.audio.shape == original.audio.shape
    both = _with_commentary(tmp_path / "commentary.mkv", frames, seconds=2.0)
    result = restore_video(both, tmp_path / "b.mp4", _options(blind, upscale=1), restorer=_restorer(blind))
    assert result.frames == len(read_clip(result.path).frames) == 25


def test_failure_midway_keeps_the_earlier_output(blind: Path, tmp_path: Path) -> None:
    source = write_clip(tmp_path / "clip.mp4", [_scene(i=i) for i in range(30)], audio=None)
    target = tmp_path / "out" / "clip.mp4"
    target.parent.mkdir()
    target.write_bytes(b"an earlier result")

    seen: list[str] = []

    def interrupt(done: int, total: int, stage: str) -> None:
        if done == 12:
            seen.extend(p.name for p in target.parent.iterdir())
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        restore_video(source, target, _options(blind), restorer=_restorer(blind), progress=interrupt)
    # meanwhile the clip was written under the temporary name that gfp batch clears after a killed run
    assert sorted(fnmatch.filter(seen, PARTIAL_GLOB)) == sorted(set(seen) - {"clip.mp4"}) and len(seen) == 2
    assert [p.name for p in target.parent.iterdir()] == ["clip.mp4"]  # no partial file left behind
    assert target.read_bytes() == b"an earlier result"


def test_an_interrupted_clip_leaves_no_folder_it_made(blind: Path, tmp_path: Path) -> None:
    """Ctrl-C (or a full disk) midway left an empty ``restored_videos/`` (and output folder) behind. The
    folders the run made go with its temporary file; a folder that was there, or that another writer (a
    ``gfp batch`` worker) put a file in meanwhile, stays."""
    source = write_clip(tmp_path / "clip.mp4", [_scene(i=i) for i in range(12)], audio=None)
    (tmp_path / "kept").mkdir()

    def interrupt(done: int, total: int, stage: str, other: Path | None = None) -> None:
        if other is not None:
            other.write_bytes(b"another worker's clip")
        if done == 3:
            raise KeyboardInterrupt

    for target, other in [
        (tmp_path / "new" / "restored_videos" / "clip.mp4", None),
        (tmp_path / "kept" / "restored_videos" / "clip.mp4", None),
        (
            tmp_path / "shared" / "restored_videos" / "clip.mp4",
            tmp_path / "shared" / "restored_videos" / "b.mp4",
        ),
    ]:
        report = functools.partial(interrupt, other=other)
        with pytest.raises(KeyboardInterrupt):
            restore_video(source, target, _options(blind), restorer=_restorer(blind), progress=report)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "clip.mp4", "kept", "shared", "shared/restored_videos", "shared/restored_videos/b.mp4",
    ]  # fmt: skip


def test_a_terminated_cli_removes_its_half_written_clip(blind: Path, tmp_path: Path) -> None:
    """SIGTERM (a killed job) or SIGHUP (a closed terminal) unwinds like Ctrl-C: exit 130, the temporary
    file removed, an earlier output kept (the process used to die with the temporary file left behind)."""
    import signal
    import time

    source = write_clip(tmp_path / "clip.mp4", [_scene(240, 320, i) for i in range(400)], audio=None)
    out = tmp_path / "out" / "restored_videos"
    out.mkdir(parents=True)
    (out / "clip.mp4").write_bytes(b"an earlier result")
    command = [sys.executable, "-m", "gfp", "-i", str(source), "-o", str(tmp_path / "out"), "-s", "4",
               "-v", str(blind / "tiny"), "--weights-dir", str(blind), "--bg_upsampler", "none",
               "--detector", "retinaface_mobile0.25", "--device", "cpu", "--backend", "torch"]  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not fnmatch.filter(os.listdir(out), PARTIAL_GLOB) and proc.poll() is None:
        assert time.monotonic() < deadline, "no temporary file within 2 minutes"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "gfp: interrupted" in err and "Traceback" not in err, err[-2000:]
    assert os.listdir(out) == ["clip.mp4"] and (out / "clip.mp4").read_bytes() == b"an earlier result"


@pytest.mark.skipif(sys.platform == "win32", reason="no advisory file locks")
def test_the_partial_clip_of_a_killed_restore_is_removed_by_the_next(blind: Path, tmp_path: Path) -> None:
    """SIGKILL (the out-of-memory killer) runs no cleanup: the partial clip stayed hidden beside the output
    for good, as large as the clip written so far, rerun or not. The next restore of that clip removes it,
    but not the locked file of a restore still running, a new one, or another clip's."""
    import fcntl
    import time

    source = write_clip(tmp_path / "clip.mp4", [_scene(i=i) for i in range(6)], audio=None)
    out = tmp_path / "out"
    out.mkdir()
    hour_ago = time.time() - 3600

    def partial(name: str, age: float = hour_ago) -> Path:
        path = out / name
        path.write_bytes(b"half a clip")
        os.utime(path, (age, age))
        return path

    killed = partial(".clip.mp4.0badc0de.tmp")
    kept = [partial(".clip.mp4.12345678.tmp"), partial(".clip.mp4.abcdef01.tmp", time.time())]
    kept.append(partial(".other.mp4.0badc0de.tmp"))
    locked: list[bool] = []

    def try_lock(done: int, total: int, stage: str) -> None:  # the running restore holds its own file's lock
        (mine,) = set(fnmatch.filter(os.listdir(out), PARTIAL_GLOB)) - {p.name for p in [*kept, killed]}
        with open(out / mine, "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                locked.append(True)

    with open(kept[0], "rb") as running:
        fcntl.flock(running, fcntl.LOCK_EX)
        restore_video(source, out / "clip.mp4", _options(blind), restorer=_restorer(blind), progress=try_lock)
    assert not killed.exists() and locked and all(locked)
    assert sorted(p.name for p in out.iterdir()) == sorted(["clip.mp4", *(p.name for p in kept)])


def test_an_output_that_cannot_be_written_fails_before_any_work(blind: Path, tmp_path: Path) -> None:
    """A folder where the clip should go, or a name as long as a file name may be: the first fails
    before a frame is decoded (not after the whole clip), the second is written (its temporary name is
    cut to fit)."""
    source = write_clip(tmp_path / "clip.mp4", [_scene(i=i) for i in range(6)], audio=None)
    (tmp_path / "taken.mp4").mkdir()
    frames: list[int] = []
    with pytest.raises(VideoError, match="taken.mp4: cannot write the restored clip there"):
        restore_video(
            source, tmp_path / "taken.mp4", _options(blind), restorer=_restorer(blind),
            progress=lambda done, total, stage: frames.append(done),
        )  # fmt: skip
    assert frames == [] and list((tmp_path / "taken.mp4").iterdir()) == []
    # a file where a folder should be is named as such, not "File exists"; a folder as input likewise
    with pytest.raises(VideoError, match=r"clip.mp4 is a file, not a folder"):
        restore_video(source, source / "o.mp4", _options(blind), restorer=_restorer(blind))
    with pytest.raises(VideoError, match="taken.mp4: a folder, not a video"):
        restore_video(tmp_path / "taken.mp4", tmp_path / "o.mp4", _options(blind), restorer=_restorer(blind))
    longest = tmp_path / ("a" * 251 + ".mp4")
    assert restore_video(source, longest, _options(blind), restorer=_restorer(blind)).frames == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["clip.mp4", "taken.mp4", longest.name])


def test_cli_folder_with_photos_videos_and_a_broken_clip(
    blind: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_clip(inputs / "a.mp4", [_scene(i=i) for i in range(12)])
    cv2.imwrite(str(inputs / "b.png"), _scene())
    (inputs / "c.webm").write_bytes(b"\x1a\x45\xdf\xa3 not really")
    out = tmp_path / "out"
    args = ["-v", str(blind / "tiny"), "--weights-dir", str(blind), "--detector", "retinaface_mobile0.25",
            "--bg_upsampler", "none", "--device", "cpu", "-s", "1", "--crf", "23", "--no-smooth"]  # fmt: skip
    code = main(["-i", str(inputs), "-o", str(out), *args])
    captured = capsys.readouterr()
    assert code == 1
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert len(errors) == 1 and "c.webm" in errors[0] and "Traceback" not in captured.err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "restored_imgs",
        "restored_imgs/b.png",
        "restored_videos",
        "restored_videos/a.mp4",
    ]
    assert len(read_clip(out / "restored_videos" / "a.mp4").frames) == 12
    assert "Restored 2 of 3" in captured.out
    with pytest.raises(SystemExit):
        main(["-i", str(inputs / "a.mp4"), "-o", str(out), *args[:-3], "--crf", "60"])
    assert "gfp: error: --crf must be an integer in [0, 51] for h264, got 60" in capsys.readouterr().err


def test_the_cli_names_a_clips_refused_options_by_their_flags(
    blind: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A clip the options cannot make is a failed file whose line names the flags to change, not the
    library's field names (upscale, codec, aligned)."""
    clip = write_clip(tmp_path / "wide.mp4", [_scene(48, 2100)], audio=None)  # x8: wider than H.264 goes
    args = ["-i", str(clip), "-o", str(tmp_path / "out"), "-v", str(blind / "tiny"), "--weights-dir",
            str(blind), "--detector", "retinaface_mobile0.25", "--bg_upsampler", "none"]  # fmt: skip
    assert main([*args, "-s", "8"]) == 1
    err = capsys.readouterr().err
    assert f"gfp: error: {clip}: restored frames of 16800x384 are above the 16384 px a side" in err
    assert "h264 encodes; choose a smaller --upscale, or --video-codec h265 or vp9\n" in err
    assert main([*args, "--aligned"]) == 1
    assert f"gfp: error: {clip}: --aligned does not apply to videos" in capsys.readouterr().err


def test_each_pass_of_a_clip_has_its_own_bar_that_never_goes_back(
    blind: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One bar was reset and renamed between the passes of a face choice: "(detect) 0/N" flashed before
    the restore's "0/N" (and an unnamed first bar ": : 0frame"). Each pass's bar now only counts up, the
    detect pass's before the restore's."""
    source = write_clip(tmp_path / "clip.mp4", [_scene(i=i) for i in range(8)], audio=None)
    args = ["-v", str(blind / "tiny"), "--weights-dir", str(blind), "--detector", "retinaface_mobile0.25",
            "--bg_upsampler", "none", "--device", "cpu", "-s", "1", "--faces", "largest"]  # fmt: skip
    assert main(["-i", str(source), "-o", str(tmp_path / "out"), *args]) == 0
    shown = [line.strip() for line in capsys.readouterr().err.replace("\x1b[A", "").split("\r")]
    bars = [line for line in shown if line.startswith("clip.mp4")]
    assert bars and not any(": :" in line for line in bars)
    counts = []
    for line in bars:
        stage = "detect" if line.startswith("clip.mp4 (detect):") else "frames"
        done = re.search(r"(\d+)(?:/8|frame )", line)
        counts.append((stage == "frames", int(done.group(1))))
    assert counts == sorted(counts) and counts[0] == (False, 0)  # no "0/8" once a pass counted
    assert any(frames for frames, _ in counts) and all(done > 0 for frames, done in counts if frames)


# --- clips with a real face (shared data) ------------------------------------------------------------


@pytest.mark.shared
def test_face_restored_far_background_untouched(real: Path, tmp_path: Path, shared_data: Path) -> None:
    frames, (x0, y0, x1, y1) = _face_frames(shared_data, 25)
    source = write_clip(tmp_path / "face.mp4", frames)
    result = restore_video(
        source, tmp_path / "out.mp4", _options(real, upscale=1), VideoOptions(crf=0), _restorer(real)
    )
    assert result.faces == 25
    assert result.backends["generator"] in ("OpenVINO", "PyTorch")  # what ran it, said as for photos
    original, restored = read_clip(source), read_clip(result.path)
    diff = np.abs(np.stack(restored.frames).astype(int) - np.stack(original.frames)).mean(axis=(0, 3))
    assert diff[y0:y1, x0:x1].mean() > 10  # a random tiny generator paints something else there
    assert diff[:, 300:].mean() < 3  # the far background is the input, up to re-encoding (4:2:0 chroma)
    # Before encoding, the far background is exactly the input frame.
    decoded = [(frame, i / 25) for i, frame in enumerate(original.frames[:5])]
    for (frame, _), out in zip(
        decoded, restore_frames(_restorer(real), decoded, _options(real, upscale=1)), strict=True
    ):
        np.testing.assert_array_equal(out.image[:, 240:], frame[:, 240:])
        assert np.abs(out.image[y0:y1, x0:x1].astype(int) - frame[y0:y1, x0:x1]).mean() > 10


@pytest.mark.shared
@pytest.mark.parametrize("max_side", [None, 160])
def test_batched_frames_equal_restore_frame_by_frame(
    real: Path, shared_data: Path, max_side: int | None
) -> None:
    """Frames go through the photo's stages: each equals ``restore(frame)``, with any detection option."""
    frames, _ = _face_frames(shared_data, 6)
    restorer = Restorer(weights_dir=real, device="cpu", bf16=False)  # float32: batching changes no sum
    options = _options(real, upscale=2, batch_size=4, detect_max_side=max_side)
    clip = [(frame, i / 25) for i, frame in enumerate(frames)]
    batched = list(restore_frames(restorer, clip, options, VideoOptions(smooth=False, buffer_frames=3)))
    assert [len(f.restored_faces) for f in batched] == [1] * 6
    for frame, out in zip(frames, batched, strict=True):
        alone = restorer.restore(frame, options)
        np.testing.assert_allclose(out.landmarks, alone.landmarks, rtol=0, atol=1e-4)
        assert np.abs(out.image.astype(int) - alone.image).max() <= 1


def test_frames_of_another_kind_are_refused(blind: Path) -> None:
    """restore_frames takes what decoding makes, uint8 BGR: a 16-bit or float frame is refused, not
    restored as garbage (restore() refuses them too)."""
    restorer, options = _restorer(blind), _options(blind)
    for frame, message in (
        (_scene().astype(np.uint16) * 257, "uint8 HxWx3 BGR images, got uint16"),
        (_scene().astype(np.float32), "got float32"),
        (_scene()[:, :, 0], r"got uint8 \(48, 64\)"),
    ):
        with pytest.raises(ValueError, match=message):
            next(restore_frames(restorer, [(frame, 0.0)], options))
    with pytest.raises(ValueError, match="frames must be \\(image, seconds\\) pairs, got ndarray"):
        next(restore_frames(restorer, [_scene()], options))


def _translation_jitter(frames: list[tuple[np.ndarray, float]], real: Path, smooth: bool) -> float:
    """Std (pixels) over frames of the alignment's translation, i.e. how much the pasted face moves."""
    restorer = _restorer(real)
    out = list(restore_frames(restorer, frames, _options(real, upscale=1), VideoOptions(smooth=smooth)))
    assert all(len(f.matrices) == 1 for f in out) and len({f.track_ids[0] for f in out}) == 1
    shifts = np.array([cv2.invertAffineTransform(f.matrices[0])[:, 2] for f in out])[10:]  # filter settled
    return float(shifts.std(axis=0).mean())


@pytest.mark.shared
def test_smoothing_lowers_jitter_of_a_still_face(real: Path, shared_data: Path) -> None:
    frames, _ = _face_frames(shared_data, 50, noise=6.0)
    clip = [(frame, i / 25) for i, frame in enumerate(frames)]
    raw, smooth = _translation_jitter(clip, real, False), _translation_jitter(clip, real, True)
    assert raw > 0.05  # the detector really wobbles on the noisy frames
    assert smooth < 0.6 * raw


@pytest.mark.shared
def test_cli_restores_a_clip_with_sound(real: Path, tmp_path: Path, shared_data: Path) -> None:
    frames, _ = _face_frames(shared_data, 20)
    source = write_clip(tmp_path / "talk.mov", frames, container="mov")
    out = tmp_path / "out"
    args = ["-v", str(real / "tiny"), "--weights-dir", str(real), "--detector", "retinaface_mobile0.25",
            "--bg_upsampler", "none", "--device", "cpu", "-s", "2", "--suffix", "x"]  # fmt: skip
    assert main(["-i", str(source), "-o", str(out), *args]) == 0
    restored = read_clip(out / "restored_videos" / "talk_x.mp4")
    assert len(restored.frames) == 20 and restored.frames[0].shape == (480, 800, 3)
    assert restored.audio is not None and restored.audio_codec == "aac"
    shutil.rmtree(out)


def _two_people(shared_data: Path, n: int) -> tuple[list[tuple[np.ndarray, float]], tuple, tuple]:
    """``n`` frames with a big face on the left (its detected box about 55x71 px) and a small one on the right
    (27x34), the small one hidden in frame 4 (the detector misses it there); where the two photos are."""
    frames, big = _face_frames(shared_data, n)
    small = (270, 70, 382, 182)
    face = cv2.resize(frames[0][8:233, 8:233], (112, 112), interpolation=cv2.INTER_AREA)
    clip = []
    for i, frame in enumerate(frames):
        frame = frame.copy()
        frame[small[1] : small[3], small[0] : small[2]] = 128 if i == 4 else face
        clip.append((frame, i / 25))
    return clip, big, small


def _region(img: np.ndarray, box: tuple) -> np.ndarray:
    return img[box[1] : box[3], box[0] : box[2]].astype(int)


@pytest.mark.shared
@pytest.mark.parametrize(("choice", "restored"), [("largest", "big"), ("2", "small"), ("min40", "big")])
def test_face_choice_follows_each_person_through_the_clip(
    real: Path, shared_data: Path, choice: str, restored: str
) -> None:
    clip, big, small = _two_people(shared_data, 8)
    kwargs = {"min_face": 40} if choice == "min40" else {"faces": choice}
    options = _options(real, upscale=1, **kwargs)
    with pytest.raises(ValueError, match="needs a first pass"):
        next(restore_frames(_restorer(real), clip, options))
    plan = plan_faces(_restorer(real), clip, options)
    reason = "smaller than 40 px" if choice == "min40" else "not chosen"
    assert plan.selection == FaceSelection(
        2, (1 if restored == "big" else 2,), {2 if restored == "big" else 1: reason}
    )
    out = list(restore_frames(_restorer(real), clip, options, plan=plan))
    for i, ((frame, _), got) in enumerate(zip(clip, out, strict=True)):
        kept, changed = (small, big) if restored == "big" else (big, small)
        np.testing.assert_array_equal(_region(got.image, kept), _region(frame, kept))  # skipped: untouched
        face = tuple(np.round(got.boxes[0, :4]).astype(int)) if got.boxes.size else changed
        if restored == "small" and i == 4:
            assert got.restored_faces == []  # hidden in this frame: nothing to restore
        else:
            assert len(got.restored_faces) == 1  # the chosen person in every frame, never twice
            assert face[0] >= changed[0] and face[2] <= changed[2]  # the chosen person's face
            assert np.abs(_region(got.image, face) - _region(frame, face)).mean() > 10


@pytest.mark.shared
def test_every_face_choice_counts_a_face_back_where_it_was_as_one_person(
    real: Path, tmp_path: Path, shared_data: Path
) -> None:
    """A face hidden for longer than the tracker waits and back where it was is one person: a face choice
    said so ("1 person found") but all faces counted its two tracks ("2 people found, 2 restored")."""
    frames, _ = _face_frames(shared_data, 32)  # seen 0.68 s: a person, not a brief face
    frames = [frame if not 5 <= i < 20 else _scene(240, 400) for i, frame in enumerate(frames)]
    source = write_clip(tmp_path / "back.mp4", frames, audio=None)
    for faces in ("all", "1"):
        result = restore_video(
            source, tmp_path / f"{faces}.mp4", _options(real, upscale=1, faces=faces), None, _restorer(real)
        )
        assert result.faces == 17 and result.selection == FaceSelection(1, (1,))


@pytest.mark.shared
def test_cli_says_which_people_of_a_clip_were_restored(
    real: Path, tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip, _, _ = _two_people(shared_data, 6)
    source = write_clip(tmp_path / "pair.mp4", [frame for frame, _ in clip], audio=None)
    args = ["-v", str(real / "tiny"), "--weights-dir", str(real), "--detector", "retinaface_mobile0.25",
            "--bg_upsampler", "none", "--device", "cpu", "-s", "1", "--faces", "largest"]  # fmt: skip
    assert main(["-i", str(source), "-o", str(tmp_path / "out"), *args]) == 0
    assert "pair.mp4: 2 people found, 1 restored, 1 skipped (1 not chosen)" in capsys.readouterr().err
    assert len(read_clip(tmp_path / "out" / "restored_videos" / "pair.mp4").frames) == 6


def test_restore_faces_refuses_crops_of_the_wrong_size(blind: Path) -> None:
    with pytest.raises(ValueError, match="uint8 64x64x3 BGR crops"):
        _restorer(blind).restore_faces([np.zeros((32, 32, 3), np.uint8)], _options(blind))
    assert _restorer(blind).restore_faces([], _options(blind)) == []
    with pytest.raises(ValueError, match="uint8 64x64x3 BGR crops, got list"):
        _restorer(blind).restore_faces([np.zeros((64, 64, 3), np.uint8).tolist()], _options(blind))
    face = _scene(64, 64)
    crops = (c for c in [face, face])  # any iterable: a generator is read once, not used up by the checks
    assert len(_restorer(blind).restore_faces(crops, _options(blind))) == 2


def test_missing_default_background_falls_back_once_per_clip(blind: Path, tmp_path: Path) -> None:
    """Offline, the default upsampler gives way to Lanczos on every frame, as for photos, noted once."""
    source = write_clip(tmp_path / "bg.mp4", [_scene(48, 64, i) for i in range(5)], audio=None)
    result = restore_video(
        source, tmp_path / "bg_out.mp4", _options(blind, bg_upsampler=None), restorer=_restorer(blind)
    )
    fallbacks = [note for note in result.notes if note.startswith("background upsampler")]
    assert len(fallbacks) == 1 and "Lanczos" in fallbacks[0]
    assert read_clip(result.path).frames[0].shape == (96, 128, 3) and result.frames == 5
    with pytest.raises(WeightsError):  # asked for by name: it must be had
        restore_video(
            source,
            tmp_path / "named.mp4",
            _options(blind, bg_upsampler="realesr-general-x4v3"),
            restorer=_restorer(blind),
        )
    assert not (tmp_path / "named.mp4").exists()


@pytest.mark.parametrize("missing", [{"bg_upsampler": "realesr-general-x4v3"}, {"use_parse": True}])
def test_weights_a_clip_must_have_are_missing_before_its_first_pass(
    blind: Path, tmp_path: Path, missing: dict[str, object]
) -> None:
    """A background upsampler named, or the parser required, without weights: the clip failed once its
    first pass (a face choice detects every frame first: minutes for a long clip) and its first faces had
    run, or (the parser, in a clip without faces) not at all. Now before a frame is decoded."""
    source = write_clip(tmp_path / "clip.mp4", [_scene(i=i) for i in range(5)], audio=None)
    reported: list[str] = []
    with pytest.raises(WeightsError):
        restore_video(
            source, tmp_path / "out.mp4", _options(blind, faces="1", **missing), restorer=_restorer(blind),
            progress=lambda done, total, stage: reported.append(stage),
        )  # fmt: skip
    assert reported == [] and not (tmp_path / "out.mp4").exists()


def test_a_clip_whose_frames_cannot_fit_is_refused_before_its_first_pass(
    blind: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each frame's output is checked against the memory left in the background stage: a clip was refused
    there, once its first pass (a face choice detects every frame first) and its first faces had run."""
    from gfp import background

    source = write_clip(tmp_path / "clip.mp4", [_scene(i=i) for i in range(5)], audio=None)
    need = background.output_memory(_scene(), 4, 1)
    monkeypatch.setattr(background, "available_memory", lambda: need // 3)
    reported: list[str] = []
    with pytest.raises(background.OutputMemoryError, match="a 256x192 restored image needs at least"):
        restore_video(
            source, tmp_path / "out.mp4", _options(blind, faces="1", upscale=4), restorer=_restorer(blind),
            progress=lambda done, total, stage: reported.append(stage),
        )  # fmt: skip
    assert reported == [] and not (tmp_path / "out.mp4").exists()


def test_arguments_in_the_wrong_order_or_empty_frames_are_named(blind: Path, tmp_path: Path) -> None:
    """Swapped arguments are a TypeError naming the argument, not an AttributeError from deep inside; an
    empty frame is a ValueError, not torch's RuntimeError."""
    clip = write_clip(tmp_path / "clip.mp4", [_scene(i=0)], audio=None)
    with pytest.raises(TypeError, match="options must be a VideoOptions, got RestoreOptions"):
        probe_video(clip, RestoreOptions())
    with pytest.raises(TypeError, match="options must be a RestoreOptions, got VideoOptions"):
        restore_video(clip, tmp_path / "o.mp4", VideoOptions(), RestoreOptions())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="restorer must be a Restorer, got str"):
        restore_video(clip, tmp_path / "o.mp4", restorer="cpu")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="video must be a VideoOptions, got dict"):
        plan_faces(_restorer(blind), [], _options(blind), {"smooth": False})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"frames must be uint8 HxWx3 BGR images, got uint8 \(0, 0, 3\)"):
        next(restore_frames(_restorer(blind), [(np.zeros((0, 0, 3), np.uint8), 0.0)], _options(blind)))
    for seconds in (float("nan"), "0.1", None):  # NaN failed as "degenerate landmarks" in the aligner
        with pytest.raises(ValueError, match="frame times must be finite numbers of seconds"):
            next(restore_frames(_restorer(blind), [(_scene(i=0), seconds)], _options(blind)))
    # PyAV's own times (pts × time_base) are Fractions
    assert next(restore_frames(_restorer(blind), [(_scene(i=0), Fraction(1001, 30000))], _options(blind)))


def test_without_pyav_photos_still_run_and_videos_say_what_to_install(tmp_path, monkeypatch) -> None:
    code = "import sys; sys.modules['av'] = None; import gfp.cli, gfp.video; assert gfp.video.av is None"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    clip = write_clip(tmp_path / "clip.mp4", [_scene(i=0)], audio=None)
    monkeypatch.setattr(gfp.video, "av", None)
    with pytest.raises(VideoError, match=r"videos need PyAV.*pip install av"):
        probe_video(clip)


def test_encoding_time_counts_the_frames_the_encoder_held_back(blind: Path, tmp_path: Path) -> None:
    """x264 encodes a short clip when it is flushed: that time is the encode stage's, not unaccounted."""
    rng = np.random.default_rng(0)  # noise: costly to encode, so the flush is far above timer noise
    frames = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(20)]
    source = write_clip(tmp_path / "noise.mp4", frames, audio=None)
    result = restore_video(
        source, tmp_path / "out.mp4", _options(blind, upscale=2), restorer=_restorer(blind)
    )
    timings = result.timings
    unaccounted = timings["total"] - sum(seconds for stage, seconds in timings.items() if stage != "total")
    assert unaccounted < timings["encode"]
