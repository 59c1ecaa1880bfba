"""train.config and train.data: config errors, degradation ranges, seeding, sampler, components, lmdb."""

from __future__ import annotations

import copy
import io
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from train.config import DEFAULTS, ConfigError, load_config, parse_override
from train.data import (
    DataError,
    DegradationParams,
    FaceDegradationDataset,
    ResumableSampler,
    component_boxes,
    crop_faces,
    degrade,
    load_component_file,
    sample_degradation,
    split_indices,
    template_components,
    write_lmdb,
)


@pytest.fixture()
def faces(tmp_path: Path) -> Path:
    """Six smooth synthetic 64 px 'faces' (random low-frequency colour fields)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(6):
        small = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
        cv2.imwrite(str(folder / f"{i:05d}.png"), cv2.resize(small, (64, 64), interpolation=cv2.INTER_CUBIC))
    return folder


def _cfg(**data):
    cfg = load_config(None, ["data.out_size=64", "data.num_workers=0"])
    cfg["data"].update(data)
    return cfg


# ------------------------------------------------------------------------------------------------ config
def test_defaults_are_the_official_recipe():
    d = DEFAULTS["degradation"]
    assert (
        d["blur_kernel_size"] == 41 and d["blur_sigma"] == [0.1, 10.0] and d["downsample_range"] == [0.8, 8.0]
    )
    assert d["noise_range"] == [0.0, 20.0] and d["jpeg_range"] == [60, 100] and d["gray_prob"] == 0.01
    # options/train_gfpgan_v1.yml (and _simple) of the official repository leave gt_gray unset (only a
    # comment suggests True when training without colorization): a gray LQ keeps its colour GT
    assert d["gt_gray"] is False
    assert DEFAULTS["loss"]["vgg_layers"] == {
        "conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0,
    }  # fmt: skip
    assert DEFAULTS["train"]["ema_decay"] == pytest.approx(0.5 ** (32 / 10000))


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("data:\n  batchsize: 3\n")
    with pytest.raises(ConfigError, match="data.batchsize"):
        load_config(bad)
    with pytest.raises(ConfigError, match="jpeg_range"):
        load_config(None, ["degradation.jpeg_range=[90, 60]"])
    with pytest.raises(ConfigError, match="out_size"):
        load_config(None, ["data.out_size=100"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("data.out_size")
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}
    cfg = load_config(None, ["data.out_size=128", "model.generator={arch: clean, narrow: 0.5}"])
    assert cfg["model"]["generator"]["out_size"] == 128 and cfg["model"]["generator"]["narrow"] == 0.5


def test_shipped_configs_load():
    root = Path(__file__).resolve().parents[1] / "train" / "configs"
    names = sorted(p.name for p in root.glob("*.yml"))
    assert "gfpgan_v1.yml" in names and "gfpgan_v1.4_finetune.yml" in names
    for path in root.glob("*.yml"):
        load_config(path)


# ------------------------------------------------------------------------------------------- degradation
def test_sampled_degradations_stay_in_configured_ranges():
    cfg = copy.deepcopy(DEFAULTS["degradation"])
    rng = np.random.default_rng(123)
    draws = [sample_degradation(cfg, rng) for _ in range(2000)]
    for p in draws:
        assert 0.1 <= p.sigma_x <= 10 and 0.1 <= p.sigma_y <= 10
        assert -math.pi <= p.rotation <= math.pi
        if p.kernel_type == "iso":
            assert p.sigma_y == p.sigma_x and p.rotation == 0.0
        assert 0.8 <= p.scale <= 8 and 0 <= p.noise_sigma <= 20 and 60 <= p.jpeg_quality <= 100
        if p.color_shift is not None:
            assert np.all(np.abs(p.color_shift) <= 20 / 255 + 1e-7)
        bounds = {
            "brightness": (0.5, 1.5),
            "contrast": (0.5, 1.5),
            "saturation": (0, 1.5),
            "hue": (-0.1, 0.1),
        }
        for op, factor in p.pt_jitter:
            assert bounds[op][0] <= factor <= bounds[op][1]
    share = lambda pred: sum(map(pred, draws)) / len(draws)  # noqa: E731
    assert 0.4 < share(lambda p: p.kernel_type == "iso") < 0.6
    assert 0.25 < share(lambda p: p.color_shift is not None) < 0.35
    assert 0.25 < share(lambda p: bool(p.pt_jitter)) < 0.35
    assert 0.002 < share(lambda p: p.gray) < 0.025
    # the whole range is used, not a corner of it
    assert min(p.scale for p in draws) < 1.0 and max(p.scale for p in draws) > 7.5


def _params(**kw) -> DegradationParams:
    base = dict(
        kernel_type="iso", sigma_x=0.1, sigma_y=0.1, rotation=0.0, scale=1.0, noise_sigma=None,
        jpeg_quality=None, color_shift=None, gray=False, pt_jitter=[],
    )  # fmt: skip
    base.update(kw)
    return DegradationParams(**base)


def test_degrade_applies_each_step_with_its_parameter():
    cfg = copy.deepcopy(DEFAULTS["degradation"])
    rng = np.random.default_rng(0)
    img = np.full((64, 64, 3), 0.5, np.float32)
    clean = degrade(img, _params(), cfg, rng)
    np.testing.assert_allclose(clean, img, atol=1e-6)  # σ=0.1 blur of a flat image, scale 1: unchanged
    noisy = degrade(img, _params(noise_sigma=10.0), cfg, rng)
    assert abs(float((noisy - img).std()) - 10 / 255) < 0.1 * 10 / 255
    shifted = degrade(img, _params(color_shift=np.array([0.05, -0.05, 0.0], np.float32)), cfg, rng)
    np.testing.assert_allclose(shifted.reshape(-1, 3).mean(0), [0.55, 0.45, 0.5], atol=1e-4)
    stripes = np.zeros((64, 64, 3), np.float32)
    stripes[:, ::2] = 1.0
    blurred = degrade(stripes, _params(sigma_x=3.0, sigma_y=3.0), cfg, rng)
    small = degrade(stripes, _params(scale=4.0), cfg, rng)
    assert blurred.std() < 0.05 and small.std() < 0.2  # both destroy the 1-px stripes
    gray = degrade(
        np.random.default_rng(1).random((16, 16, 3), dtype=np.float32), _params(gray=True), cfg, rng
    )
    np.testing.assert_allclose(gray[..., 0], gray[..., 2])
    texture = np.random.default_rng(2).random((64, 64, 3), dtype=np.float32)
    err = [np.abs(degrade(texture, _params(jpeg_quality=q), cfg, rng) - texture).mean() for q in (95, 10)]
    assert err[1] > err[0]
    # the torchvision colour jitter is part of the degradation itself (evaluate --degrade calls only this)
    bgr = np.array([0.2, 0.4, 0.6], np.float32) * np.ones((8, 8, 1), np.float32)
    darker = degrade(bgr, _params(pt_jitter=[("brightness", 0.5)]), cfg, rng)
    np.testing.assert_allclose(darker[0, 0], [0.1, 0.2, 0.3], atol=1e-6)
    flat = degrade(bgr, _params(pt_jitter=[("contrast", 0.0)]), cfg, rng)
    luma = 0.2989 * 0.6 + 0.587 * 0.4 + 0.114 * 0.2  # torchvision's grey of the RGB pixel (0.6, 0.4, 0.2)
    np.testing.assert_allclose(flat[0, 0], [luma] * 3, atol=1e-6)
    desaturated = degrade(bgr, _params(pt_jitter=[("saturation", 0.0)]), cfg, rng)
    np.testing.assert_allclose(desaturated[0, 0], [luma] * 3, atol=1e-6)


def test_dataset_items_are_seeded_and_in_range(faces):
    cfg = _cfg()
    ds = FaceDegradationDataset(faces, cfg["data"], cfg["degradation"])
    a, b = ds[(2, (0, 0, 0, 5))], ds[(2, (0, 0, 0, 5))]
    torch.testing.assert_close(a["lq"], b["lq"])
    c = ds[(2, (0, 0, 0, 6))]
    assert not torch.equal(a["lq"], c["lq"])
    torch.testing.assert_close(ds[1]["lq"], ds[1]["lq"])  # validation indexing: fixed seed per image
    for item in (a, c):
        assert item["lq"].shape == item["gt"].shape == (3, 64, 64)
        assert item["lq"].min() >= -1 and item["lq"].max() <= 1
        assert item["loc_mouth"].shape == (4,)


def test_component_boxes_follow_horizontal_flip():
    parts = template_components()
    plain = component_boxes(parts, 512, False, 1.0)
    flipped = component_boxes(parts, 512, True, 1.0)
    # the left-eye box of the flipped face is the mirror image of the right-eye box
    x1, y1, x2, y2 = plain["right_eye"].tolist()
    torch.testing.assert_close(flipped["left_eye"], torch.tensor([512 - x2 + 1, y1, 512 - x1 + 1, y2]))
    assert plain["left_eye"][0] < plain["right_eye"][0] and flipped["left_eye"][0] < flipped["right_eye"][0]
    enlarged = component_boxes(parts, 128, False, 1.4)
    width = lambda b: float(b[2] - b[0])  # noqa: E731
    assert width(enlarged["left_eye"]) == pytest.approx(width(plain["left_eye"]) / 4 * 1.4, abs=0.3)
    assert width(enlarged["mouth"]) == pytest.approx(width(plain["mouth"]) / 4)


# ----------------------------------------------------------------------------------- official landmarks
def _landmarks() -> dict:
    return {
        "00000000": {
            "left_eye": np.array([190.0, 240.0, 20.0]),
            "right_eye": np.array([320.0, 241.0, 21.0]),
            "mouth": np.array([256.0, 370.0, 40.0]),
        }
    }


def test_components_file_loads_without_unsafe_unpickling(tmp_path):
    path = tmp_path / "landmarks.pth"
    torch.save(_landmarks(), path)
    loaded = load_component_file(path)
    np.testing.assert_array_equal(loaded["00000000"]["mouth"], [256.0, 370.0, 40.0])


def test_components_file_written_by_numpy_1_loads(tmp_path):
    """The official file predates numpy 2: its pickle names ``numpy.core.multiarray._reconstruct``."""
    buf = io.BytesIO()
    torch.save(_landmarks(), buf, _use_new_zipfile_serialization=False)
    legacy = buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in legacy
    path = tmp_path / "legacy.pth"
    path.write_bytes(legacy)
    assert load_component_file(path)["00000000"]["left_eye"][2] == 20.0


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_components_file_with_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"00000000": _Evil()}, path)
    with pytest.raises(DataError, match="evil.pth holds objects other than arrays and numbers: refused"):
        load_component_file(path)
    assert "pwned" not in capsys.readouterr().out  # its code never ran


def test_dataset_uses_components_file_by_image_number(faces, tmp_path):
    path = tmp_path / "landmarks.pth"
    torch.save(_landmarks(), path)
    cfg = _cfg(components={"source": "file", "file": str(path), "eye_enlarge_ratio": 1.0}, use_hflip=False)
    ds = FaceDegradationDataset(faces, cfg["data"], cfg["degradation"], indices=[0])
    # 00000.png → key 00000000; mouth centre 256,370 half 40 at 512 → /8 at 64 px
    torch.testing.assert_close(ds[0]["loc_mouth"], torch.tensor([217.0, 331.0, 296.0, 410.0]) / 8)
    ds_missing = FaceDegradationDataset(faces, cfg["data"], cfg["degradation"], indices=[1])
    with pytest.raises(ValueError, match="no facial components"):
        ds_missing[0]


def test_validation_faces_need_no_components(faces, tmp_path, monkeypatch):
    """A data.val face missing from the components file (whose keys are the training faces') stopped the
    run at its first validation, for boxes validation never reads; the file was also read twice."""
    import train.data

    path = tmp_path / "landmarks.pth"
    torch.save(_landmarks(), path)
    reads = []
    monkeypatch.setattr(train.data, "load_component_file", lambda p: reads.append(p) or _landmarks())
    cfg = _cfg(components={"source": "file", "file": str(path), "eye_enlarge_ratio": 1.0})
    item = FaceDegradationDataset(faces, cfg["data"], cfg["degradation"], indices=[1], train=False)[0]
    assert item["gt"].shape == (3, 64, 64) and not any(key.startswith("loc_") for key in item)
    assert reads == []


# ---------------------------------------------------------------------------------------- lmdb, sampler
def test_lmdb_gives_the_same_items_as_the_folder(faces, tmp_path):
    files = sorted(faces.glob("*.png"))
    db = write_lmdb(files, tmp_path / "faces.lmdb")
    cfg = _cfg()
    from_folder = FaceDegradationDataset(faces, cfg["data"], cfg["degradation"])
    from_lmdb = FaceDegradationDataset(db, cfg["data"], cfg["degradation"])
    assert len(from_lmdb) == len(files)
    item = (3, (1, 2, 3))
    torch.testing.assert_close(from_lmdb[item]["gt"], from_folder[item]["gt"])
    torch.testing.assert_close(from_lmdb[item]["lq"], from_folder[item]["lq"])
    assert from_lmdb[item]["path"] == "00003"


def test_lmdb_takes_any_file_name(tmp_path):
    face = tmp_path / "visage_été.png"  # basicsr's keys are ASCII; a user's files need not be
    cv2.imwrite(str(face), np.full((32, 32, 3), 120, np.uint8))
    db = write_lmdb([face], tmp_path / "faces.lmdb")
    cfg = _cfg()
    cfg["data"]["out_size"] = 32
    assert FaceDegradationDataset(db, cfg["data"], cfg["degradation"])[(0, (1, 2, 3))]["path"] == "visage_été"


def test_sampler_resumes_mid_stream_and_splits_ranks():
    take = lambda s, n: [next(it) for it in [iter(s)] for _ in range(n)]  # noqa: E731
    full = take(ResumableSampler(10, seed=3), 25)
    assert take(ResumableSampler(10, seed=3, start=13), 12) == full[13:]
    assert sorted(i for i, _ in full[:10]) == list(range(10))  # an epoch is a permutation
    r0 = [i for i, _ in take(ResumableSampler(10, seed=3, rank=0, world_size=2), 5)]
    r1 = [i for i, _ in take(ResumableSampler(10, seed=3, rank=1, world_size=2), 5)]
    assert sorted(r0 + r1) == list(range(10))
    seeds = {s for _, s in take(ResumableSampler(10, seed=3, rank=1, world_size=2), 20)}
    assert len(seeds) == 20  # every draw gets its own degradation seed
    # more ranks than faces (a handful of faces on an 8-GPU node): the faces wrap around as often as it
    # takes, every rank gets its share (rank 2 of 3 over 1 face raised IndexError)
    for length, world in ((1, 3), (3, 8), (2, 5)):
        drawn = [[i for i, _ in take(ResumableSampler(length, 0, rank, world), 4)] for rank in range(world)]
        assert all(len(d) == 4 and set(d) <= set(range(length)) for d in drawn), (length, world)


def test_split_indices_holds_out_the_tail():
    assert split_indices(5, 2) == ([0, 1, 2], [3, 4])
    with pytest.raises(ValueError, match="val_holdout"):
        split_indices(3, 3)


@pytest.mark.shared
def test_components_from_retinaface_landmarks_on_real_faces(shared_data, tmp_path):
    """For datasets without the official landmarks file: boxes from detected 5-point landmarks."""
    from train.__main__ import main

    faces = tmp_path / "faces"
    faces.mkdir()
    for src in sorted((shared_data / "faces" / "hq").glob("*.jpg"))[:3]:
        img = cv2.imread(str(src))
        cv2.imwrite(str(faces / f"{src.stem}.png"), cv2.resize(img, (256, 256), interpolation=cv2.INTER_AREA))
    out = tmp_path / "components.pth"
    code = main(
        ["components", str(faces), str(out), "--detector", "retinaface_mobile0.25"]
        + ["--weights-dir", str(shared_data / "weights")]
    )
    assert code == 0
    loaded = load_component_file(out)
    assert sorted(loaded) == sorted(p.stem for p in faces.iterdir())
    template = template_components()
    for parts in loaded.values():
        # CelebA-HQ faces are aligned close to the FFHQ template: detected centres land near it (512 px).
        for part in ("left_eye", "right_eye", "mouth"):
            assert np.linalg.norm(parts[part][:2] - template[part][:2]) < 40, part
            assert 0.5 < parts[part][2] / template[part][2] < 2.0
        assert parts["left_eye"][0] < parts["right_eye"][0] and parts["mouth"][1] > parts["left_eye"][1]


def test_extra_faces_are_trained_on_and_never_held_out(faces, tmp_path, monkeypatch):
    import train.data
    from train.data import FaceDegradationDataset

    extra = tmp_path / "extra"
    extra.mkdir()
    for i in range(2):
        cv2.imwrite(str(extra / f"photo_{i:02d}.png"), np.full((64, 64, 3), 40 * (i + 1), np.uint8))
    cfg = _cfg(val_holdout=2)
    source = FaceDegradationDataset(faces, cfg["data"], cfg["degradation"], extra=[extra]).source
    assert len(source) == 6 and len(source.extra) == 2  # the hold-out counts the main folder only
    assert source.stem(6) == "photo_00" and source.read(7)[0, 0, 0] == pytest.approx(80 / 255)

    from train.train import Trainer

    trainer = Trainer.__new__(Trainer)  # only the data part of the trainer
    trainer.rank = 0
    trainer.cfg = load_config(None, ["data.out_size=64", "data.val_holdout=2", "data.num_workers=0"])
    trainer.cfg["data"].update(train=str(faces), extra_train=[str(extra)])
    listed = []
    real_list = train.data.list_images
    monkeypatch.setattr(train.data, "list_images", lambda folder: listed.append(folder) or real_list(folder))
    trainer._build_data()
    assert trainer.train_set.indices == [0, 1, 2, 3, 6, 7]
    assert trainer.val_set.indices == [4, 5]
    # each folder listed once for the check, the training set and the held-out set (it was three times: on
    # shared storage, a stat per file of 70,000 faces each time)
    assert sorted(map(str, listed)) == sorted([str(faces), str(extra)])
    assert trainer.val_set.source is trainer.train_set.source


@pytest.mark.shared
def test_crop_cuts_aligned_faces_from_whole_photos(shared_data, tmp_path):
    from train.__main__ import main

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("deepface_img2.jpg", "deepface_selfie-many-people.jpg"):  # one large face; five small
        (photos / name).symlink_to(shared_data / "photos" / name)
    args = ["crop", str(photos), str(tmp_path / "out"), "--detector", "retinaface_mobile0.25"]
    assert main([*args, "--weights-dir", str(shared_data / "weights")]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["deepface_img2_00.png"]  # the selfie's faces cover under 384 photo pixels
    face = cv2.imread(str(tmp_path / "out" / written[0]))
    assert face.shape == (512, 512, 3)
    # aligned: the detector finds the face where the FFHQ template puts it
    from gfp.faces import FFHQ_TEMPLATE_512, detect_faces
    from gfp.loading import load_state_dict
    from gfp.registry import build_detector

    net = build_detector("retinaface_mobile0.25")
    net.load_state_dict(load_state_dict(shared_data / "weights" / "detection_mobilenet0.25_Final.pth"))
    found = detect_faces(net.eval(), face)
    assert len(found) >= 1 and np.abs(found.landmarks[0] - FFHQ_TEMPLATE_512).max() < 20
    weights = ["--weights-dir", str(shared_data / "weights")]
    assert main([*args[:2], str(tmp_path / "none"), *args[3:], *weights, "--min-size", "5000"]) == 1


def test_crop_refuses_to_write_faces_into_the_photo_folder(tmp_path):
    """A face PHOTO_00.png would replace a photo of that name there (and be taken for a photo next time):
    refused before the detector loads, nothing written."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.jpg", "a_00.png"):
        cv2.imwrite(str(photos / name), np.full((64, 64, 3), 120, np.uint8))
    kept = {p.name: p.read_bytes() for p in photos.iterdir()}
    with pytest.raises(DataError, match="is the photo folder"):
        crop_faces(photos, photos, weights_dir=str(tmp_path / "no-weights"))
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == kept


def test_crop_refuses_photos_that_share_a_name(tmp_path):
    """a.jpg and a.png would both write a_00.png: refused before the detector loads, nothing written."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.jpg", "a.png"):
        cv2.imwrite(str(photos / name), np.full((64, 64, 3), 120, np.uint8))
    with pytest.raises(DataError, match="a.jpg and a.png would both be written as a_NN.png"):
        crop_faces(photos, tmp_path / "out", weights_dir=str(tmp_path / "no-weights"))
    assert not (tmp_path / "out").exists()
