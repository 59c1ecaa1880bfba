"""gfp.selection: spelling of face choices, face numbers left to right, the choice itself, its summary."""

from __future__ import annotations

import numpy as np
import pytest

from gfp.selection import FaceSelection, center_face, parse_faces, reading_order, select_faces

# A row of three faces, given out of order as a detector (by score) might: small right, big left, middle.
ROW = np.array(
    [
        [500, 210, 530, 240, 0.99],  # 30 px, right
        [40, 180, 160, 300, 0.98],  # 120 px, left
        [260, 190, 340, 270, 0.97],  # 80 px, middle (the image centre is (300, 240))
    ],
    np.float32,
)


@pytest.mark.parametrize(
    ("given", "parsed"),
    [
        ("all", "all"),
        (" Largest ", "largest"),
        ("centre", "center"),
        ("3", "3"),
        ("3,1", "1,3"),
        ("2 1 2", "1,2"),
        ("1, 4", "1,4"),
        ([2, 1], "1,2"),
        ((np.int64(5),), "5"),
        (2, "2"),  # one face number, as a JSON or MCP client sends it
        (np.int64(3), "3"),
    ],
)
def test_choices_have_one_spelling(given: object, parsed: str) -> None:
    assert parse_faces(given) == parsed


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("0", "face numbers start at 1, got '0'"),
        ("2,0", "face numbers start at 1"),
        ("x", "faces must be all, largest, center or face numbers such as 1,3 \\(from 1\\), got 'x'"),
        ("-3", "got '-3'"),
        ("1,,2", "got '1,,2'"),
        ("", "got ''"),
        ([1.5], "got \\[1.5\\]"),
        (True, "got True"),
        (np.array(2), "got array\\(2\\)"),  # a 0-d array: this error, not a TypeError from iterating it
    ],
)
def test_bad_choices_are_one_line_errors(given: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        parse_faces(given)
    assert "\n" not in str(err.value)


def test_faces_are_numbered_left_to_right() -> None:
    order = reading_order(ROW)
    assert order.tolist() == [1, 2, 0]  # face 1 is the left one (detection 1), face 3 the right one
    stacked = np.array([[10, 100, 50, 140], [10, 0, 50, 40]], np.float32)  # same column: top first
    assert reading_order(stacked).tolist() == [1, 0]
    assert reading_order(np.zeros((0, 5))).tolist() == []
    assert center_face(ROW, 600, 480) == 2


def _select(choice: str = "all", min_face: int = 0) -> FaceSelection:
    return select_faces(ROW[reading_order(ROW)], 600, 480, choice, min_face)


def test_select_faces() -> None:
    assert _select() == FaceSelection(3, (1, 2, 3), {})
    assert _select("largest") == FaceSelection(3, (1,), {2: "not chosen", 3: "not chosen"})
    assert _select("center") == FaceSelection(3, (2,), {1: "not chosen", 3: "not chosen"})
    assert _select("3,1").restored == (1, 3)
    assert _select(min_face=50) == FaceSelection(3, (1, 2), {3: "smaller than 50 px"})
    # the centre face among those big enough; a listed face that is too small is skipped as too small
    assert _select("center", min_face=100).restored == (1,)
    listed = _select("2,3,7", min_face=50)
    assert listed.restored == (2,) and listed.skipped == {1: "not chosen", 3: "smaller than 50 px"}
    assert listed.missing == (7,)
    assert select_faces(np.zeros((0, 5)), 10, 10, "largest") == FaceSelection(0)


def test_summary_says_found_restored_skipped_and_why() -> None:
    assert _select().summary() == "3 faces found, 3 restored"
    text = _select("2,3,7", min_face=50).summary()
    assert text == "3 faces found, 1 restored, 2 skipped (1 not chosen, 1 smaller than 50 px); no face 7 " + (
        "(numbers go up to 3)"
    )
    assert FaceSelection(1, (1,)).summary() == "1 face found, 1 restored"
    assert FaceSelection(1, (1,)).summary("person", "people") == "1 person found, 1 restored"  # a clip's
    assert FaceSelection(2, (1,), {2: "not chosen"}, (5,)).summary("person", "people") == (
        "2 people found, 1 restored, 1 skipped (1 not chosen); no person 5 (numbers go up to 2)"
    )
    # faces asked for that are not there, as spans: "1,...,5000" made a line of 24 KB
    many = _select(",".join(map(str, range(1, 5001))) + ",7000,7002").summary()
    assert many.endswith("3 restored; no face 4-5000, 7000, 7002 (numbers go up to 3)")
    assert _select("4,5,9").summary().endswith("no face 4, 5, 9 (numbers go up to 3)")
