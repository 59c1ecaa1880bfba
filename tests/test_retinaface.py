"""gfp.archs.retinaface and gfp.faces.nms: equal to facexlib's RetinaFace and torchvision's NMS, which they
replace so that detecting faces imports neither facexlib nor torchvision (the oracles are imported here)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from gfp.archs.retinaface import RetinaFace, build_retinaface
from gfp.faces import nms

# (height, width) inputs per backbone: one even size and one odd size; ResNet-50 ones small (slow on CPU).
SIZES = {"mobile0.25": [(96, 128), (77, 101)], "resnet50": [(64, 64), (47, 61)]}


def facexlib_retinaface(backbone: str) -> torch.nn.Module:
    from facexlib.detection.retinaface import RetinaFace as FacexlibRetinaFace

    with warnings.catch_warnings():  # facexlib passes torchvision's deprecated `pretrained=False`
        warnings.simplefilter("ignore", UserWarning)
        return FacexlibRetinaFace(network_name=backbone, half=False, device=torch.device("cpu")).eval()


def random_state_dict(reference: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
    """Seeded weights for every key, with non-trivial BatchNorm affine parameters and running statistics
    (so that eval-mode BatchNorm really is compared) and a scale that keeps activations of order one."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in reference.items():
        shape = value.shape
        if key.endswith("num_batches_tracked"):
            out[key] = torch.randint(1, 1000, (), generator=g, dtype=value.dtype)
        elif key.endswith("running_mean"):
            out[key] = torch.randn(shape, generator=g) * 0.3
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) * 1.5 + 0.5
        elif value.ndim > 1:  # convolution weights
            out[key] = torch.randn(shape, generator=g) * value[0].numel() ** -0.5
        elif key.endswith("weight"):  # BatchNorm scale
            out[key] = torch.rand(shape, generator=g) * 0.4 + 0.4
        else:  # BatchNorm shift, convolution bias
            out[key] = torch.randn(shape, generator=g) * 0.1
        assert out[key].dtype == value.dtype
    return out


@pytest.mark.parametrize("backbone", ["mobile0.25", "resnet50"])
def test_state_dict_layout_equals_facexlib(backbone: str) -> None:
    ours, theirs = RetinaFace(backbone).state_dict(), facexlib_retinaface(backbone).state_dict()
    assert list(ours) == list(theirs)  # same keys, same order (buffers such as num_batches_tracked too)
    for key, value in theirs.items():
        assert (ours[key].shape, ours[key].dtype) == (value.shape, value.dtype), key


@pytest.mark.parametrize("backbone", ["mobile0.25", "resnet50"])
def test_forward_equals_facexlib_bit_for_bit(backbone: str) -> None:
    reference = facexlib_retinaface(backbone)
    weights = random_state_dict(reference.state_dict(), seed=7)
    reference.load_state_dict(weights, strict=True)
    ours = build_retinaface(backbone)
    ours.load_state_dict(weights, strict=True)
    assert not ours.training
    g = torch.Generator().manual_seed(3)
    for height, width in SIZES[backbone]:
        x = torch.randn(1, 3, height, width, generator=g) * 60  # like a BGR image minus its mean
        with torch.inference_mode():
            expected, got = reference(x), ours(x)
        assert len(got) == len(expected) == 3
        for name, e, o in zip(("boxes", "scores", "landmarks"), expected, got, strict=True):
            assert o.shape == e.shape and torch.equal(o, e), (backbone, height, width, name)
        scores = got[1][0, :, 1]
        assert scores.std() > 0.01 and ((scores > 0.01) & (scores < 0.99)).all()  # varied, not saturated


def test_unknown_backbone_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown RetinaFace backbone 'mobile1.0'"):
        build_retinaface("mobile1.0")


# ----------------------------------------------------------------------------------------------- NMS


def torchvision_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    import torchvision

    return torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()


def random_boxes(rng: np.random.Generator, n: int, tied: bool, degenerate: bool) -> tuple[np.ndarray, ...]:
    """``n`` overlapping float32 boxes and scores; ``tied``: scores from three values, most of them 1.0;
    ``degenerate``: some boxes of zero width or height, and some repeated exactly."""
    corner = rng.uniform(0, 60, (n, 2))
    size = rng.uniform(0, 30, (n, 2))
    if degenerate:
        size[rng.random(n) < 0.2, 0] = 0
        size[rng.random(n) < 0.2, 1] = 0
    boxes = np.hstack([corner, corner + size]).astype(np.float32)
    if degenerate and n > 4:
        boxes[n // 2 : n // 2 + 3] = boxes[0]
    if tied:
        scores = rng.choice(np.array([1.0, 0.99, 0.5], np.float32), n, p=[0.6, 0.2, 0.2])
    else:
        scores = rng.random(n).astype(np.float32)
    return boxes, scores


@pytest.mark.parametrize("threshold", [0.4, 0.5])
@pytest.mark.parametrize(("tied", "degenerate"), [(False, False), (True, False), (False, True), (True, True)])
def test_nms_equals_torchvision(threshold: float, tied: bool, degenerate: bool) -> None:
    rng = np.random.default_rng([int(threshold * 10), tied, degenerate])
    for n in (0, 1, 2, 7, 40, 150):
        boxes, scores = random_boxes(rng, n, tied, degenerate)
        got, expected = nms(boxes, scores, threshold), torchvision_nms(boxes, scores, threshold)
        assert got.dtype == np.int64 and got.tolist() == expected.tolist(), n


def test_nms_tied_scores_keep_input_order() -> None:
    """Ties are visited in input order (a stable sort): here the order of the tied boxes decides what is
    kept, so an unstable sort would give another answer."""
    rng = np.random.default_rng(11)
    order_mattered = 0
    for _ in range(20):
        boxes, _ = random_boxes(rng, 30, tied=False, degenerate=False)
        scores = np.ones(30, np.float32)
        scores[rng.random(30) < 0.2] = 0.9
        got, expected = nms(boxes, scores, 0.4), torchvision_nms(boxes, scores, 0.4)
        assert got.tolist() == expected.tolist()
        flipped = torchvision_nms(boxes[::-1].copy(), scores[::-1].copy(), 0.4)
        order_mattered += sorted(expected.tolist()) != sorted((29 - flipped).tolist())
    assert order_mattered > 0
    # Box 0 overlaps boxes 1 and 2, which do not overlap each other; all tied at 1.0.
    chain = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [10, 0, 20, 10]], np.float32)
    assert (
        nms(chain, np.ones(3, np.float32), 0.3).tolist()
        == torchvision_nms(chain, np.ones(3, np.float32), 0.3).tolist()
        == [0]
    )


def test_nms_compares_the_float32_iou_with_a_float64_threshold() -> None:
    """IoU 40/100 is float32(0.4) = 0.4000000059..., above the double 0.4: suppressed (a float32
    comparison would keep it). IoU 50/100 = 0.5 exactly is not above 0.5: kept."""
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 4], [20, 20, 30, 30], [20, 20, 30, 25]], np.float32)
    scores = np.array([1.0, 0.9, 0.8, 0.7], np.float32)
    assert nms(boxes, scores, 0.4).tolist() == torchvision_nms(boxes, scores, 0.4).tolist() == [0, 2]
    assert nms(boxes, scores, 0.5).tolist() == torchvision_nms(boxes, scores, 0.5).tolist() == [0, 1, 2, 3]


def test_nms_empty_boxes_suppress_nothing() -> None:
    """Two zero-area boxes have IoU 0/0 = NaN, which is not above any threshold: both kept, as there."""
    boxes = np.array([[5, 5, 5, 5], [5, 5, 5, 5], [5, 5, 5, 5], [1, 1, 1, 9]], np.float32)
    scores = np.array([1.0, 1.0, 0.5, 0.4], np.float32)
    assert nms(boxes, scores, 0.4).tolist() == torchvision_nms(boxes, scores, 0.4).tolist() == [0, 1, 2, 3]


# --------------------------------------------------------------------------------------- import cost


def test_detecting_faces_imports_neither_torchvision_nor_facexlib() -> None:
    code = (
        "import sys, numpy as np, gfp.cli, gfp.pipeline; from gfp.faces import detect_faces; "
        "from gfp.registry import build_detector; "
        "detect_faces(build_detector('retinaface_mobile0.25'), np.zeros((64, 64, 3), np.uint8)); "
        "print('torchvision' in sys.modules, 'facexlib' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.split() == ["False", "False"], result.stdout + result.stderr
