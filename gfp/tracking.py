"""Face tracks across video frames and landmark smoothing, so pasted faces do not jitter.

A detector finds each frame's faces independently; its 5 landmarks wobble by a pixel or two from frame to
frame even on a still face, and the alignment transform (and so the pasted face) wobbles with them. This
module links detections into tracks (box overlap, else landmark distance relative to the face size) and
runs a One-Euro filter (Casiez et al., CHI 2012) over each track's landmarks: strong smoothing while a
face is still, little lag when it moves. The filter works on timestamps, so variable-rate clips are
smoothed by elapsed time, not by frame count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from gfp.checks import is_real

T = TypeVar("T", float, np.ndarray)


@dataclass(frozen=True)
class SmoothingOptions:
    """One-Euro parameters; speeds are measured in face sizes (eye-to-mouth distance) per second."""

    min_cutoff: float = 0.5
    """Cutoff frequency (Hz) of a still face: lower = smoother and laggier."""
    beta: float = 2.0
    """How fast the cutoff rises with speed (per face size per second): higher = less lag on motion."""
    d_cutoff: float = 1.0
    """Cutoff frequency (Hz) of the speed estimates themselves: the filter's, and each track's velocity (where
    a face the detector misses is looked for)."""
    match_iou: float = 0.3
    """A detection continues a track when their boxes overlap at least this much (IoU) ..."""
    match_distance: float = 0.5
    """... or when their landmarks are within this many face sizes of each other (fast motion); faces lost
    together are found again together when each lands within it of where one shift of the whole scene (a
    camera pan) takes it."""
    keep_lost: float = 0.5
    """Seconds a face the detector misses keeps its track: found again within this time near where it was,
    or where it was heading, it continues its track (the same id, so a face choice keeps applying to it),
    its smoothing restarted."""
    cut_jump: float = 0.25
    """A face whose landmarks land more than this many face sizes from where their last motion would have
    taken them (a hard cut to another face at about the same place) starts its smoothing over, keeping its
    track: smoothed, the first frames after the cut were dragged toward the last shot's face. Steady motion,
    however fast, is foreseen and keeps its smoothing."""

    def __post_init__(self) -> None:
        ranges: dict[str, tuple[Callable[[float], bool], str]] = {
            "min_cutoff": (lambda v: v > 0, "> 0"),
            "beta": (lambda v: v >= 0, ">= 0"),
            "d_cutoff": (lambda v: v > 0, "> 0"),
            "match_iou": (lambda v: 0 < v <= 1, "in (0, 1]"),
            "match_distance": (lambda v: v >= 0, ">= 0 face sizes"),
            "keep_lost": (lambda v: v >= 0, ">= 0 seconds"),
            "cut_jump": (lambda v: v > 0, "> 0 face sizes"),
        }
        for name, (within, limits) in ranges.items():
            value = getattr(self, name)  # a bool or a string is no number here; NaN is within no range
            if not is_real(value) or not within(value):
                raise ValueError(f"{name} must be a number {limits}, got {value!r}")


def _low_pass(value: T, target: T, cutoff: float, dt: float) -> T:
    """One step of ``dt`` seconds of a first-order low-pass filter with this cutoff (Hz) from ``value``
    toward ``target``: the landmarks' and speed's of the One-Euro filter, a track's and the scene's
    velocity."""
    alpha = 1.0 / (1.0 + 1.0 / (2.0 * math.pi * cutoff) / dt)
    return value + alpha * (target - value)


def face_size(landmarks: np.ndarray) -> float:
    """Eye-centre to mouth-centre distance of 5 landmarks (pixels): the scale the filter works in."""
    eyes = (landmarks[0] + landmarks[1]) / 2
    mouth = (landmarks[3] + landmarks[4]) / 2
    return max(float(np.linalg.norm(mouth - eyes)), 1.0)


@dataclass
class OneEuroFilter:
    """One-Euro filter over one face's (5, 2) landmarks; one adaptive cutoff for the whole face.

    A single cutoff per face (from the mean landmark speed) moves all points together, so the face's
    shape is not distorted by points being smoothed differently. Points far from where the last two
    observed ones were heading (more than ``options.cut_jump`` face sizes: a cut) start it over.
    """

    options: SmoothingOptions = field(default_factory=SmoothingOptions)
    _value: np.ndarray | None = None
    _speed: float = 0.0
    _time: float | None = None
    _seen: np.ndarray | None = None
    """The last points observed (unsmoothed)."""
    _heading: np.ndarray | None = None
    """How fast each observed point moved between the last two observations (pixels per second)."""

    def __call__(self, points: np.ndarray, time: float) -> np.ndarray:
        """Filter ``points`` observed at ``time`` (seconds); returns the smoothed points (float64)."""
        points = np.asarray(points, dtype=np.float64)
        if self._value is None or self._time is None or time <= self._time or self._cut(points, time):
            self._value, self._speed, self._time = points.copy(), 0.0, time
            self._seen, self._heading = points.copy(), None
            return points.copy()
        dt = time - self._time
        self._heading, self._seen = (points - self._seen) / dt, points.copy()
        scale = face_size(points)
        raw_speed = float(np.linalg.norm(points - self._value, axis=-1).mean()) / scale / dt
        self._speed = _low_pass(self._speed, raw_speed, self.options.d_cutoff, dt)
        cutoff = self.options.min_cutoff + self.options.beta * abs(self._speed)
        self._value = _low_pass(self._value, points, cutoff, dt)
        self._time = time
        return self._value.copy()

    def _cut(self, points: np.ndarray, time: float) -> bool:
        """Whether ``points`` lie more than ``cut_jump`` face sizes (mean over the points) from where the
        last two observations were heading: not motion but a cut. Needs two observations since the start."""
        if self._heading is None or self._seen is None or self._time is None:
            return False
        expected = self._seen + self._heading * (time - self._time)
        miss = float(np.linalg.norm(points - expected, axis=-1).mean()) / face_size(points)
        return miss > self.options.cut_jump


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes ``a`` (N, >=4) and ``b`` (M, >=4) given as x1, y1, x2, y2."""
    a, b = np.asarray(a, np.float64)[:, None, :4], np.asarray(b, np.float64)[None, :, :4]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


@dataclass
class _Track:
    id: int
    box: np.ndarray
    landmarks: np.ndarray
    filter: OneEuroFilter
    seen: float
    """When it was last detected (seconds)."""
    velocity: np.ndarray | None = None
    """How fast its box centre moves (pixels per second), low-passed over its detections; None until it has
    been detected twice."""
    step: np.ndarray | None = None
    """How fast its box centre moved between its last two detections (pixels per second; None alike)."""
    scene: np.ndarray = field(default_factory=lambda: np.zeros(2))
    """Where the scene was (:meth:`_Scene.at`) when it was last detected."""
    with_scene: bool = True
    """Whether it moved with the scene then (within :data:`_WITH_SCENE`; a face seen once, whose motion is
    not known, is taken to: most faces coming into sight during a pan are still in the scene): missed, it is
    looked for where the scene has moved since only if so. Two people crossing, the one seen alone was the
    scene's motion, and the one hidden was looked for on its way (whose number it took)."""


@dataclass
class _Scene:
    """How far the whole scene has moved since the first frame (pixels), and how fast it moves (pixels per
    second, low-passed as a track's velocity is), as the faces seen in two frames in a row show it: a camera
    pan moves them all, also those the detector misses meanwhile."""

    shift: np.ndarray = field(default_factory=lambda: np.zeros(2))
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))
    time: float = 0.0

    def follow(self, steps: list[np.ndarray], dt: float, time: float, d_cutoff: float) -> None:
        """Move by the median of the ``steps`` the faces seen made in the ``dt`` seconds up to ``time``, from
        where it was carried on to (dropped, the motion carried through frames with no face seen twice in a
        row was lost: a face lost before them was looked for short of where the pan had taken it)."""
        step = np.median(steps, axis=0)
        self.shift = self.at(time - dt) + step
        self.velocity = _low_pass(self.velocity, step / dt, d_cutoff, dt)
        self.time = time

    def at(self, time: float) -> np.ndarray:
        """Where the scene is at ``time``: carried on at its velocity through frames where no face moved in
        sight."""
        return self.shift + self.velocity * (time - self.time)


class FaceTracker:
    """Links each frame's detections to the previous frame's faces and smooths their landmarks.

    Feed frames in presentation order through :meth:`update`. A face not detected in a frame ends its
    smoothing (found again, it starts unsmoothed), so a smoothed face never lags behind a cut; its track
    id is kept for ``options.keep_lost`` seconds, so a face the detector misses for a few frames is still
    the same face, also where a camera pan has taken it meanwhile (:class:`_Scene`). ``smooth=False`` keeps
    the tracking (ids) but returns the detector's landmarks as is.
    """

    def __init__(self, options: SmoothingOptions | None = None, smooth: bool = True) -> None:
        self.options = options or SmoothingOptions()
        self.smooth = smooth
        self._tracks: list[_Track] = []
        self._lost: list[_Track] = []
        self._next_id = 0
        self._scene = _Scene()

    def _visible(self, boxes: np.ndarray, landmarks: np.ndarray, time: float) -> np.ndarray:
        """How well each detection continues each previous-frame track (:meth:`_score`), each track where its
        motion has taken it by ``time`` (a still face's is its last place). Looked for at its last place, a
        face that had just walked in front of a missed one took that face's detection when it showed again
        where it had stood (the two swapped numbers)."""
        if not self._tracks or not len(boxes):
            return np.full((len(boxes), len(self._tracks)), -np.inf)
        return self._score(boxes, landmarks, _ahead(self._tracks, time))

    def _match_lost(
        self, boxes: np.ndarray, landmarks: np.ndarray, tracks: list[_Track], time: float
    ) -> list[int | None]:
        """For each detection, the index of the lost track it continues (greedy, best match first), or None:
        first where one shift of the whole scene takes several lost faces onto detections at once
        (:meth:`_common_shift`), then each track at its last place, where its motion would have taken it by
        ``time``, or where the scene's has (a face missed while the camera pans, the other faces seen); and,
        for the detections no track continues so, where its last step would have: a face that has just begun
        to move fast, whose low-passed velocity still lags far behind, came back from a few missed frames as a
        new person. Only for those, since a still face's wobble sends its last step anywhere (toward the face
        beside it, whose detection it took where both were missed)."""
        matched: list[int | None] = [None] * len(boxes)
        if not tracks or not len(boxes):
            return matched
        moved = [self._scene.at(time) - t.scene if t.with_scene else np.zeros(2) for t in tracks]
        score = self._score(boxes, landmarks, _places(tracks))
        for places in (_ahead(tracks, time), _shifted(tracks, moved)):
            score = np.maximum(score, self._score(boxes, landmarks, places))
        common = self._common_shift(landmarks, tracks, moved, score, time)
        if common is not None:  # first: a pan of one spacing lands each face on its neighbour's last place
            _greedy(self._landing(landmarks, _shifted(tracks, [shift + common for shift in moved])), matched)
        _greedy(_unmatched(score, matched), matched)
        _greedy(
            _unmatched(self._score(boxes, landmarks, _ahead(tracks, time, last_step=True)), matched), matched
        )
        return matched

    def _common_shift(
        self,
        landmarks: np.ndarray,
        tracks: list[_Track],
        moved: list[np.ndarray],
        score: np.ndarray,
        time: float,
    ) -> np.ndarray | None:
        """A shift of the whole scene, beyond ``moved`` (each track's shift so far), that lands more lost
        faces within ``match_distance`` of detections at once than ``score`` matches, and at least two: a
        pan that began while the detector missed every face (motion blur), which moved each toward the
        place of its neighbour, whose number it took. Tried: each detection on one of the lost faces seen
        last (:data:`_ANCHORS`, to bound the work of a crowd), within the reach of a pan by ``time``
        (:data:`_PAN_SPEED`): a cut to other people framed alike, elsewhere, is no pan."""
        best, found = max(_count(score), 1), None
        if best >= min(len(tracks), len(landmarks)):  # none could land more
            return None
        anchors = sorted(range(len(tracks)), key=lambda i: -tracks[i].seen)[:_ANCHORS]
        for i in anchors:
            reach = _PAN_SPEED * (time - tracks[i].seen) * face_size(tracks[i].landmarks)
            for shift in (landmarks - (tracks[i].landmarks + moved[i])).mean(axis=1):
                if np.linalg.norm(shift) > reach:
                    continue
                fits = _count(self._landing(landmarks, _shifted(tracks, [m + shift for m in moved])))
                if fits > best:
                    best, found = fits, shift
        return found

    def _landing(self, landmarks: np.ndarray, places: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """How well each detection lands on each place, by the distance of their landmarks alone (-inf beyond
        ``match_distance``): the test of a shift of the whole scene, which keeps the faces' layout."""
        near = _distance(landmarks, places)
        return np.where(near <= self.options.match_distance, -near, -np.inf)

    def _held_back(
        self, boxes: np.ndarray, landmarks: np.ndarray, lost: list[_Track], time: float, visible: np.ndarray
    ) -> np.ndarray:
        """Which detections a lost track, at its last place or where its motion would have taken it by
        ``time``, continues better than any previous-frame track does (``visible``: :meth:`_visible`), by
        more than ``match_distance`` (in :meth:`_score`'s units: where two faces cross, both continue it
        about as well, and the noise of their motion would decide).

        A lost face's last place counts too: a still face found again where it stood is the same face however
        far its wobble would have sent it (looked for only where it was heading, it lost its detection to the
        face beside it, whose box overlaps it: the two swapped identities).
        """
        if not lost or not self._tracks or not len(boxes):
            return np.zeros(len(boxes), bool)
        back = self._score(boxes, landmarks, _places(lost) + _ahead(lost, time)).max(axis=1)
        return back > visible.max(axis=1) + self.options.match_distance

    def _score(
        self, boxes: np.ndarray, landmarks: np.ndarray, places: list[tuple[np.ndarray, np.ndarray]]
    ) -> np.ndarray:
        """How well each detection continues a face at each place (box, landmarks); -inf for no match."""
        iou = box_iou(boxes, np.stack([box[:4] for box, _ in places]))
        distance = _distance(landmarks, places)
        ok = (iou >= self.options.match_iou) | (distance <= self.options.match_distance)
        return np.where(ok, iou - distance, -np.inf)  # prefer overlap, then closeness

    def _moved(self, track: _Track, box: np.ndarray, time: float) -> None:
        """Update ``track``'s motion for its detection at ``box`` at ``time``: its last step, and its
        velocity, that step low-passed at ``d_cutoff``. The detector wobbles a pixel or two, so from one step
        a still face seemed to move at tens of px/s, and missed for a few frames it was looked for well away
        from where it stood (toward its neighbour: two faces side by side swapped identities); steady motion
        is followed, as the filter's speed is."""
        dt = time - track.seen
        if dt <= 0:
            return
        track.step = (_centre(box) - _centre(track.box)) / dt
        if track.velocity is None:
            track.velocity = track.step
        else:
            track.velocity = _low_pass(track.velocity, track.step, self.options.d_cutoff, dt)

    def update(self, boxes: np.ndarray, landmarks: np.ndarray, time: float) -> tuple[np.ndarray, list[int]]:
        """Track one frame's detections (boxes (N, >=4), landmarks (N, 5, 2)) seen at ``time`` seconds.

        Returns (landmarks to align with, float32 (N, 5, 2), in detection order; the track id of each).
        """
        landmarks = np.asarray(landmarks, np.float32).reshape(-1, 5, 2)
        boxes = (
            np.asarray(boxes, np.float32).reshape(len(landmarks), -1) if len(landmarks) else np.zeros((0, 5))
        )
        lost = [t for t in self._lost if time - t.seen <= self.options.keep_lost]
        candidates = self._tracks + lost
        # The faces of the previous frame first, where their motion has taken them, the lost ones only for the
        # detections left: a lost face's last place took the face that had since moved there (two people
        # crossing swapped identities). A lost face is also looked for further along its way (one hidden
        # behind another while they cross).
        # Not a detection that a lost face, where it was or was heading, continues much better than any face
        # of the previous frame does: two faces side by side, each missed in turn, swapped identities (the
        # face seen took the other's detection, which its box overlaps).
        visible = self._visible(boxes, landmarks, time)
        held = self._held_back(boxes, landmarks, lost, time, visible)
        matched: list[int | None] = [None] * len(boxes)
        _greedy(np.where(held[:, None], -np.inf, visible), matched)
        steps = [
            _centre(boxes[i]) - _centre(self._tracks[index].box)
            for i, index in enumerate(matched)
            if index is not None
        ]
        if steps and time > self._tracks[0].seen:
            self._scene.follow(steps, time - self._tracks[0].seen, time, self.options.d_cutoff)
        left = [i for i, index in enumerate(matched) if index is None]
        for i, index in zip(left, self._match_lost(boxes[left], landmarks[left], lost, time), strict=True):
            matched[i] = None if index is None else len(self._tracks) + index
        tracks: list[_Track] = []
        out = np.empty_like(landmarks)
        ids: list[int] = []
        for i, index in enumerate(matched):
            if index is None:
                track = _Track(self._next_id, boxes[i], landmarks[i], OneEuroFilter(self.options), time)
                self._next_id += 1
            else:
                track = candidates[index]
                if index >= len(self._tracks):  # missed for a while: same face, smoothing starts again
                    track.filter = OneEuroFilter(self.options)
                self._moved(track, boxes[i], time)
                track.box, track.landmarks, track.seen = boxes[i], landmarks[i], time
            track.scene = self._scene.at(time)
            track.with_scene = track.velocity is None or (
                float(np.linalg.norm(track.velocity - self._scene.velocity)) / face_size(track.landmarks)
                <= _WITH_SCENE
            )
            smoothed = track.filter(landmarks[i], time)
            out[i] = smoothed if self.smooth else landmarks[i]
            tracks.append(track)
            ids.append(track.id)
        self._lost = [t for t in candidates if all(t is not kept for kept in tracks)]
        self._tracks = tracks
        return out, ids


def _places(tracks: list[_Track]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each track's last detected box and landmarks."""
    return [(t.box, t.landmarks) for t in tracks]


def _ahead(tracks: list[_Track], time: float, last_step: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """Where each track's motion would have taken its box and landmarks by ``time``: at its low-passed
    velocity, or (``last_step``) at its last step's."""
    velocities = [t.step if last_step else t.velocity for t in tracks]
    shifts = [
        np.zeros(2) if v is None else v * (time - t.seen) for t, v in zip(tracks, velocities, strict=True)
    ]
    return _shifted(tracks, shifts)


def _shifted(tracks: list[_Track], shifts: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each track's last detected box and landmarks, moved by its shift (pixels)."""
    return [(t.box[:4] + np.tile(d, 2), t.landmarks + d) for t, d in zip(tracks, shifts, strict=True)]


def _centre(box: np.ndarray) -> np.ndarray:
    """The centre of a box (x1, y1, x2, y2, ...)."""
    return (box[:2] + box[2:4]) / 2


def _distance(landmarks: np.ndarray, places: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Mean distance of each detection's landmarks (N, 5, 2) from each place's, in the place's face sizes."""
    at = np.stack([points for _, points in places])
    sizes = np.array([face_size(points) for points in at])
    return np.linalg.norm(landmarks[:, None] - at[None], axis=-1).mean(axis=-1) / sizes


def _unmatched(score: np.ndarray, matched: list[int | None]) -> np.ndarray:
    """``score`` without the detections (rows) and the tracks (columns) that ``matched`` pairs already."""
    score = score.copy()
    score[[i for i, index in enumerate(matched) if index is not None]] = -np.inf
    score[:, [index for index in matched if index is not None]] = -np.inf
    return score


def _count(score: np.ndarray) -> int:
    """How many pairs :func:`_greedy` makes of ``score``."""
    matched: list[int | None] = [None] * len(score)
    _greedy(score.copy(), matched)
    return sum(index is not None for index in matched)


_WITH_SCENE = 3.0
"""How much faster than the scene (face sizes per second) a face moving with it may move: its head's sway
(a 5 px sway at 1 Hz of a face 20 px tall is 1.5), not a walk across it (about 14)."""

_PAN_SPEED = 30.0
"""How fast (face sizes per second) a pan may have moved faces lost together, for
:meth:`FaceTracker._common_shift` (a 14 px a frame pan of faces 20 px tall is 17): people framed alike
seen a frame after a cut, some faces away, took the numbers of those before it."""

_ANCHORS = 4
"""How many lost faces, the last seen, :meth:`FaceTracker._common_shift` tries each detection on."""


def _greedy(score: np.ndarray, matched: list[int | None]) -> None:
    """Pair detections (rows of ``score``) with tracks (columns), best score first, into ``matched``."""
    while np.isfinite(score).any():
        det, track = np.unravel_index(int(np.argmax(score)), score.shape)
        matched[det] = int(track)
        score[det, :] = -np.inf
        score[:, track] = -np.inf
