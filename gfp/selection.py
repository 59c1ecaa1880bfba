"""Which faces to restore: all, the largest, the centre one, or faces by number; and a minimum size.

Faces are numbered from 1, left to right (by the centre of their boxes; ties top to bottom), so the
numbers of a row of people read as the row does. Those are the numbers the CLI's file names (face ``N`` is
``NAME_{N-1:02d}.png``) and the app's gallery show. In a video the faces are the tracks of people, numbered
in the order they appear (those appearing together, left to right); a face seen for less than
:data:`BRIEF_SECONDS` (a passer-by, a false detection) is no person: not numbered nor chosen.

Pure functions over detection boxes (x1, y1, x2, y2 in the image's pixels): the pipeline calls
:func:`select_faces` for a photo, the video code :func:`choose_tracks` for the people of a clip (which
applies :func:`select_faces` to them), and both paste every face skipped back untouched.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gfp.checks import is_whole
from gfp.messages import OptionError
from gfp.tracking import box_iou

FACE_CHOICES = ("all", "largest", "center")
"""The named face choices; anything else must be a list of face numbers ("2", "1,3")."""
BRIEF_SECONDS = 0.5
"""A face seen in a clip for less than this long (and in less than half its frames) is a brief face, not a
person: a one-frame false detection early in a clip was person 1, and ``faces="1"`` restored it."""
_NUMBERS = re.compile(r"\d+(\s*[,\s]\s*\d+)*")


def parse_faces(value: str | int | Sequence[int]) -> str:
    """A face choice in its one spelling: "all", "largest", "center" or numbers "1,3" (ascending, once
    each). Takes those, "centre", numbers separated by commas or spaces, one int (as a JSON or MCP client
    sends a face number) or a sequence of ints; ``ValueError`` naming what is allowed for anything else (0,
    negative or non-numbers, bools)."""
    if is_whole(value):
        value = [value]
    if not isinstance(value, str):
        listed = isinstance(value, Sequence) and not isinstance(value, bytes)
        listed |= isinstance(value, np.ndarray) and value.ndim > 0  # a 0-d array is no list: no TypeError
        numbers = list(value) if listed else [None]  # 2, None, a generator ... are no list of numbers
        if not all(is_whole(n) for n in numbers):
            raise _faces_error(value)
        value = ",".join(str(int(n)) for n in numbers)
    text = value.strip().lower()
    if text == "centre":
        return "center"
    if text in FACE_CHOICES:
        return text
    if not _NUMBERS.fullmatch(text):
        raise _faces_error(value)
    numbers = sorted({int(n) for n in re.split(r"[,\s]+", text)})
    if numbers[0] < 1:
        raise OptionError("{faces}: face numbers start at 1, got {value!r}", value=value)
    return ",".join(map(str, numbers))


def _faces_error(value: object) -> OptionError:
    return OptionError(
        "{faces} must be all, largest, center or face numbers such as 1,3 (from 1), got {value!r}",
        value=value,
    )


def face_numbers(choice: str) -> tuple[int, ...]:
    """The face numbers of a parsed choice ("1,3" → (1, 3)); () for a named choice."""
    return () if choice in FACE_CHOICES else tuple(int(n) for n in choice.split(","))


def reading_order(boxes: np.ndarray) -> np.ndarray:
    """Indices of ``boxes`` (N, >=4) left to right by box centre, ties top first: face number - 1 → index."""
    boxes = _boxes(boxes)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return np.lexsort((cy, cx)).astype(np.int64)


def _boxes(boxes: np.ndarray) -> np.ndarray:
    """Boxes as float64 (N, >=4); no boxes as (0, 4)."""
    boxes = np.asarray(boxes, np.float64)
    return boxes.reshape(len(boxes), -1) if boxes.size else np.zeros((0, 4))


def center_face(boxes: np.ndarray, width: float, height: float) -> int:
    """Index of the box whose centre is nearest the image centre (the official ``only_center_face``)."""
    boxes = np.asarray(boxes, np.float64)
    centers = (boxes[:, 0:2] + boxes[:, 2:4]) / 2
    return int(np.argmin(np.linalg.norm(centers - np.array([width / 2, height / 2]), axis=1)))


def shorter_sides(boxes: np.ndarray) -> np.ndarray:
    """The shorter side of each box (N, >=4), in pixels."""
    boxes = _boxes(boxes)
    return np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


@dataclass(frozen=True)
class FaceSelection:
    """What a face choice made of the faces found: which numbers are restored, which skipped and why."""

    found: int
    """Faces found (detections in a photo, tracks in a video)."""
    restored: tuple[int, ...] = ()
    """Face numbers restored, ascending."""
    skipped: dict[int, str] = field(default_factory=dict)
    """Face number → why it was skipped ("smaller than 40 px", "not chosen")."""
    missing: tuple[int, ...] = ()
    """Face numbers asked for that are not there (beyond ``found``)."""
    brief: int = 0
    """Faces of a clip seen too briefly to be people (:data:`BRIEF_SECONDS`): not in ``found``."""
    brief_restored: int = 0
    """How many of those were restored (``faces="all"`` restores them)."""

    @property
    def any_face(self) -> bool:
        """Whether any face was found: a person, or a clip's brief face (what "no face found" is said by)."""
        return bool(self.found or self.brief)

    def summary(self, noun: str = "face", plural: str | None = None) -> str:
        """One line: "4 faces found, 2 restored, 2 skipped (1 smaller than 40 px, 1 not chosen)"; ``noun``
        and its ``plural`` (``noun`` + "s" when None) say what was found: a clip's are people."""
        nouns = f"{noun}s" if plural is None else plural
        text = f"{self.found} {noun if self.found == 1 else nouns} found, {len(self.restored)} restored"
        if self.skipped:
            reasons = Counter(self.skipped.values())
            why = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
            text += f", {len(self.skipped)} skipped ({why})"
        if self.missing:
            text += f"; no {noun} {_spans(self.missing)} (numbers go up to {self.found})"
        if self.brief:
            faces = f"{self.brief} brief face{'s' if self.brief > 1 else ''} (seen under {BRIEF_SECONDS:g} s)"
            if self.brief_restored == self.brief:
                text += f"; {faces} restored too"
            else:
                text += f"; {faces}, {self.brief_restored or 'none'} restored"
        return text


def _spans(numbers: Sequence[int]) -> str:
    """Ascending numbers with each run of three or more as one span: (4, 5, 6, 7, 9) → "4-7, 9", so that
    a long list of faces that are not there ("1-5000") stays a short line."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def select_faces(
    boxes: np.ndarray, width: float, height: float, choice: str = "all", min_face: int = 0
) -> FaceSelection:
    """Choose among faces given in number order (``boxes[n - 1]`` is face ``n``) in a ``width`` x
    ``height`` image.

    Faces whose box is shorter than ``min_face`` px on its shorter side are skipped first; ``choice``
    (a :func:`parse_faces` spelling) then picks among the rest: all of them, the one of largest box area,
    the one nearest the image centre, or the listed numbers.
    """
    choice = parse_faces(choice)
    boxes = _boxes(boxes)
    numbers = range(1, len(boxes) + 1)
    small = shorter_sides(boxes) < min_face
    skipped = {n: f"smaller than {min_face} px" for n in numbers if small[n - 1]}
    left = [n for n in numbers if n not in skipped]
    if choice == "all" or not left:
        chosen = left
    elif choice == "largest":
        areas = [(boxes[n - 1, 2] - boxes[n - 1, 0]) * (boxes[n - 1, 3] - boxes[n - 1, 1]) for n in left]
        chosen = [left[int(np.argmax(areas))]]
    elif choice == "center":
        chosen = [left[center_face(boxes[[n - 1 for n in left]], width, height)]]
    else:
        chosen = [n for n in left if n in face_numbers(choice)]
    skipped |= {n: "not chosen" for n in left if n not in chosen}
    missing = tuple(n for n in face_numbers(choice) if n > len(boxes))
    return FaceSelection(len(boxes), tuple(chosen), dict(sorted(skipped.items())), missing)


@dataclass(frozen=True)
class FrameFaces:
    """The faces found in one frame, tracked: detections, landmarks to align with, track ids."""

    boxes: np.ndarray
    """(N, 5) detections x1, y1, x2, y2, score."""
    landmarks: np.ndarray
    """(N, 5, 2) landmarks to align with (smoothed unless smoothing is off)."""
    track_ids: list[int]
    time: float | None = None
    """Presentation time (seconds), which tells how long a face is seen; None: unknown (25 fps assumed)."""


@dataclass(frozen=True)
class FacePlan:
    """A first pass over a clip (:func:`gfp.video.plan_faces`): every frame's faces, and which tracks to
    restore."""

    frames: list[FrameFaces]
    restore: frozenset[int]
    """Track ids the face choice restores."""
    selection: FaceSelection
    """Over tracks (people): found, restored and skipped face numbers and why."""
    numbers: dict[int, int]
    """Track id → its person's number: from 1 in the order people appear (those appearing together, left
    to right); the tracks of brief faces (:data:`BRIEF_SECONDS`) have none."""


def choose_tracks(
    frames: Sequence[FrameFaces], width: int, height: int, choice: str = "all", min_face: int = 0
) -> FacePlan:
    """Apply a face choice (:func:`select_faces`) to the people of a clip, each taken as its
    median box (median centre, width and height over its frames) in a ``width`` x ``height`` frame; people
    are numbered in order of first appearance, those appearing together left to right.

    A person is a track, or several tracks one after another: a face that comes back where a track ended
    (after a cut-away or an occlusion longer than the tracker waits) continues that person. A face seen
    for less than :data:`BRIEF_SECONDS` (its frames times the clip's median frame interval)
    and in less than half the frames is brief, not a person (a passer-by, a false detection): numbered
    first, it took number 1 from the person the clip is about. It is neither numbered nor chosen, and is
    restored only by ``choice="all"`` (when not smaller than ``min_face``).
    """
    first: dict[int, tuple[int, float, float]] = {}
    last: dict[int, int] = {}
    boxes: dict[int, list[np.ndarray]] = {}
    for index, faces in enumerate(frames):
        for box, track in zip(faces.boxes, faces.track_ids, strict=True):
            boxes.setdefault(track, []).append(np.asarray(box[:4], np.float64))
            first.setdefault(track, (index, (box[0] + box[2]) / 2, (box[1] + box[3]) / 2))
            last[track] = index
    ordered = sorted(first, key=first.__getitem__)
    people: list[list[int]] = []  # each person's tracks, in order
    # each person's last frame and box so far, as arrays: a clip's thousands of tracks (faces in a crowd, each
    # missed now and then) are each compared with every person at once, not one by one (minutes)
    ends, last_boxes = np.empty(len(ordered), np.int64), np.empty((len(ordered), 4))
    for track in ordered:
        start, begins = first[track][0], boxes[track][0]
        n = len(people)
        ended = np.flatnonzero((ends[:n] < start) & _same_place(last_boxes[:n], begins))
        if len(ended):  # the person whose face was last seen nearest to where this one appears
            person = int(ended[np.argmax(box_iou(last_boxes[ended], begins[None])[:, 0])])
            people[person].append(track)
        else:
            person = n
            people.append([track])
        ends[person], last_boxes[person] = last[track], boxes[track][-1]
    times = [faces.time for faces in frames]
    steps = np.diff(np.array(times, np.float64)) if None not in times else np.zeros(0)
    period = float(np.median(steps)) if len(steps) else 1 / 25  # seconds a frame shows
    seen = [sum(len(boxes[t]) for t in person) for person in people]  # frames each person is in
    brief = [n * period < BRIEF_SECONDS and 2 * n < len(frames) for n in seen]
    typical = [_median_box(np.stack([b for t in person for b in boxes[t]])) for person in people]
    typical = np.array(typical).reshape(-1, 4)
    lasting = [p for p, short in zip(people, brief, strict=True) if not short]
    selection = select_faces(typical[np.logical_not(brief)], width, height, choice, min_face)
    restore = {track for n in selection.restored for track in lasting[n - 1]}
    # a brief face is no person to choose, but still a face that "all" restores
    kept = np.array(brief, bool) & (shorter_sides(typical) >= min_face) & (parse_faces(choice) == "all")
    restore |= {track for person, keep in zip(people, kept, strict=True) if keep for track in person}
    selection = dataclasses.replace(selection, brief=sum(brief), brief_restored=int(kept.sum()))
    numbers = {track: n for n, person in enumerate(lasting, 1) for track in person}
    return FacePlan(list(frames), frozenset(restore), selection, numbers)


def _same_place(boxes: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Which face boxes (N, 4: x1, y1, x2, y2) lie where the face box ``other`` does, as one face would:
    overlapping it by a third, or their centres closer than half a face."""
    size = (boxes[:, 2:] - boxes[:, :2] + other[2:] - other[:2]).mean(axis=1) / 2
    apart = np.linalg.norm((boxes[:, :2] + boxes[:, 2:]) / 2 - (other[:2] + other[2:]) / 2, axis=1)
    return (box_iou(boxes, other[None])[:, 0] >= 1 / 3) | (apart < size / 2)


def _median_box(boxes: np.ndarray) -> np.ndarray:
    """The box (x1, y1, x2, y2) of the median centre, width and height of ``boxes`` (N, 4)."""
    center = np.median((boxes[:, :2] + boxes[:, 2:]) / 2, axis=0)
    half = np.median(boxes[:, 2:] - boxes[:, :2], axis=0) / 2
    return np.concatenate([center - half, center + half])
