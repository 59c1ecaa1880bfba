"""`python -m train evaluate`, the training data made the way inference sees faces, config value types,
the learning-rate schedule, and export from a run folder."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from gfp.faces import resize_aligned
from train.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "train" / "configs" / "tiny_cpu.yml"


# -------------------------------------------------------------------------------------------- config
def test_numbers_written_either_way_are_numbers() -> None:
    cfg = load_config(TINY, ["optim.lr_g=1e-3", "train.total_iter=1e2", "degradation.blur_sigma=[0.1, 3e0]"])
    assert cfg["optim"]["lr_g"] == 0.001 and isinstance(cfg["optim"]["lr_g"], float)
    assert cfg["train"]["total_iter"] == 100 and isinstance(cfg["train"]["total_iter"], int)
    assert cfg["degradation"]["blur_sigma"] == [0.1, 3.0]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr_g=fast", "'optim.lr_g' must be a number"),
        ("train.total_iter=2.5", "'train.total_iter' must be a whole number"),
        ("train.amp=1", "'train.amp' must be true or false"),
        ("model.generator.chanel_multiplier=2", "model.generator.chanel_multiplier"),
        ("optim.schedule=linear", "optim.schedule"),
        ("data.batch_size=", "config key 'data.batch_size' needs a value, got None"),
        ("train.total_iter=null", "config key 'train.total_iter' needs a value"),
        ("output_dir=", "config key 'output_dir' needs a value"),
        ("data.batch_size=[", "override 'data.batch_size=[': the value is not YAML"),
        ("data.batch_size=1e400", "'data.batch_size' must be a whole number, got inf"),
        ("data.batch_size=0", "'data.batch_size' must be 1 or more, got 0"),
        (
            "data.num_workers=-1",
            "'data.num_workers' must be 0 (load in the training process) or more, got -1",
        ),
        ("train.time_budget_min=-1", "'train.time_budget_min' must be a positive number of minutes, or null"),
        # values that failed with a traceback (Adam's checks, a division by zero, NaN probabilities)
        ("optim.lr_g=-1", "'optim.lr_g' must be above 0, got -1.0"),
        ("loss.vgg_layers.conv1_2=abc", "'loss.vgg_layers.conv1_2' must be a number, got 'abc'"),
        ("loss.vgg_layers={conv1_2: -1}", "loss.vgg_layers weights must be 0 or more: conv1_2"),
        ("loss.d_reg_every=0", "'loss.d_reg_every' must be 1 or more, got 0"),
        ("degradation.blur_kernel_size=-3", "'degradation.blur_kernel_size' must be 1 or more, got -3"),
        ("model.discriminator.narrow=0", "'model.discriminator.narrow' must be above 0, got 0.0"),
        ("degradation.kernel_prob=[0, 0]", "degradation.kernel_prob must be 0 or more and not all 0"),
        # and nonsense that trained (or did nothing) without a word
        ("train.total_iter=0", "'train.total_iter' must be 1 or more, got 0"),
        ("train.total_iter=-5", "'train.total_iter' must be 1 or more, got -5"),
        ("train.log_every=-1", "'train.log_every' must be 0 (off) or a number of steps, got -1"),
        ("train.ema_decay=2", "'train.ema_decay' must be in [0, 1), got 2.0"),
        ("train.ema_decay=1", "'train.ema_decay' must be in [0, 1), got 1.0"),
        ("loss.gan_weight=-1", "'loss.gan_weight' must be 0 or more, got -1.0"),
        ("train.keep_checkpoints=-1", "'train.keep_checkpoints' must be 0 (keep all) or more, got -1"),
        ("data.degrade_size=32", "data.degrade_size must be data.out_size (64) or more, or null, got 32"),
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(TINY, [override])


def test_values_at_the_edge_of_their_range_are_taken() -> None:
    edges = ["train.ema_decay=0", "loss.gan_weight=0", "train.keep_checkpoints=0", "data.degrade_size=64"]
    edges += [
        "degradation.kernel_prob=[0, 1]",
        "loss.vgg_layers={conv1_2: 0}",
        "degradation.blur_kernel_size=1",
        "optim.warmup_iter=-1",  # basicsr's (and the official GFPGAN configs') "no warm-up"
    ]
    cfg = load_config(TINY, edges)
    assert cfg["loss"]["vgg_layers"] == {"conv1_2": 0.0} and cfg["data"]["degrade_size"] == 64


def test_a_config_that_is_not_yaml_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "bad.yml").write_text("a: [\n")
    (tmp_path / "binary.yml").write_bytes(b"\xff\xfe\x00junk")
    for name in ("bad.yml", "binary.yml"):
        with pytest.raises(ConfigError, match=f"{name} is not a YAML file"):
            load_config(tmp_path / name)


def test_lr_schedule_warms_up_then_follows_a_cosine(tmp_path: Path) -> None:
    from train.train import Trainer

    faces = tmp_path / "faces"
    faces.mkdir()
    for i in range(3):
        cv2.imwrite(str(faces / f"{i}.png"), np.full((32, 32, 3), 40 * i + 60, np.uint8))
    cfg = load_config(
        TINY,
        [
            f"data.train={faces}",
            f"output_dir={tmp_path / 'run'}",
            "data.out_size=32",
            "data.val_holdout=0",
            "model.identity.arch=none",
            "loss.perceptual_weight=0",
            "loss.style_weight=0",
            "optim.schedule=cosine",
            "optim.warmup_iter=10",
            "optim.min_lr_ratio=0.1",
            "train.total_iter=110",
        ],
    )
    trainer = Trainer(cfg)
    assert trainer._lr_factor(0) == pytest.approx(0.1)  # first of ten warm-up steps
    assert trainer._lr_factor(9) == pytest.approx(1.0)
    assert trainer._lr_factor(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down the cosine
    assert trainer._lr_factor(110) == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------- data
def test_resize_aligned_averages_when_shrinking() -> None:
    """A one-pixel checkerboard shrunk 4x is flat grey (bilinear would alias it into stripes)."""
    board = (np.indices((512, 512)).sum(0) % 2 * 255).astype(np.uint8)
    small = resize_aligned(np.dstack([board] * 3), 128)
    assert small.shape == (128, 128, 3) and abs(float(small.mean()) - 127.5) < 1 and small.std() < 1
    assert resize_aligned(small, 128) is small  # already the model's size: untouched


def test_training_pairs_are_degraded_at_degrade_size_then_shrunk(tmp_path: Path) -> None:
    """GT at out_size = the HQ face area-resized from degrade_size; LQ is 8-bit-valued like a read file."""
    from train.data import FaceDegradationDataset

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (256, 256, 3)).astype(np.uint8), (0, 0), 2)
    cv2.imwrite(str(tmp_path / "face.png"), img)
    cfg = load_config(
        TINY,
        [f"data.train={tmp_path}", "data.out_size=32", "data.degrade_size=128", "data.cache_images=true"],
    )
    ds = FaceDegradationDataset(tmp_path, cfg["data"], cfg["degradation"], train=False)
    item = ds[0]
    assert item["lq"].shape == item["gt"].shape == (3, 32, 32)
    hq128 = cv2.resize(img.astype(np.float32) / 255, (128, 128), interpolation=cv2.INTER_AREA)
    want = cv2.resize(hq128, (32, 32), interpolation=cv2.INTER_AREA)[:, :, ::-1].transpose(2, 0, 1)
    torch.testing.assert_close(item["gt"], torch.from_numpy(want.copy()) * 2 - 1, atol=1e-5, rtol=0)
    lq255 = (item["lq"] + 1) * 127.5
    assert torch.allclose(lq255, lq255.round(), atol=1e-3)
    assert 0 in ds.cache and ds.cache[0].shape == (128, 128, 3)
    torch.testing.assert_close(ds[0]["lq"], item["lq"])  # same seed, cached image: same pair


# ------------------------------------------------------------------------------------------ evaluate
def _faces(folder: Path, n: int = 3, size: int = 64) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        img = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3)).astype(np.uint8), (0, 0), 1.5)
        cv2.imwrite(str(folder / f"face{i}.png"), img)
        out.append(img)
    return out


def test_evaluate_scores_restored_and_lq_against_hq(tmp_path: Path, capsys) -> None:
    from basicsr.metrics import calculate_psnr

    from train.evaluate import main

    hq = _faces(tmp_path / "hq")
    restored = tmp_path / "restored"
    restored.mkdir()
    noise = np.random.default_rng(2)
    for i, img in enumerate(hq):  # named as the CLI names faces: STEM_00.png
        noisy = np.clip(img.astype(int) + noise.integers(-3, 4, img.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(restored / f"face{i}_00.png"), noisy)
    args = ["--hq", str(tmp_path / "hq"), "--lq", str(tmp_path / "lq"), "--degrade", "--seed", "3"]
    args += ["--restored", str(restored), "--size", "64", "--json", str(tmp_path / "r.json"), "--verbose"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "restored − lq" in table and "face2 lq" in table
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n"] == 3 and set(report["mean"]) == {"restored", "lq"}
    assert {"psnr_y", "ssim_y", "psnr", "ssim"} <= set(report["mean"]["restored"])
    assert "niqe" in report["skipped"]  # 64 px is below NIQE's block size
    assert sorted(p.name for p in (tmp_path / "lq").iterdir()) == ["face0.png", "face1.png", "face2.png"]
    # the numbers are basicsr's, computed here independently
    gt0 = cv2.imread(str(tmp_path / "hq" / "face0.png"))
    out0 = cv2.imread(str(restored / "face0_00.png"))
    row = next(r for r in report["images"] if r["name"] == "face0")
    assert row["restored"]["psnr"] == pytest.approx(calculate_psnr(out0, gt0, 0))
    assert row["restored"]["psnr_y"] == pytest.approx(calculate_psnr(out0, gt0, 0, test_y_channel=True))
    assert report["mean"]["restored"]["psnr_y"] > report["mean"]["lq"]["psnr_y"]
    # the same seed degrades the same way: LQ files compare between runs
    first = cv2.imread(str(tmp_path / "lq" / "face1.png"))
    assert main([*args[:5], "--seed", "3", "--restored", str(restored), "--size", "64"]) == 0
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "lq" / "face1.png")), first)


def test_evaluate_degrades_with_the_paper_model_unless_asked_for_colour_augmentations(
    tmp_path: Path, capsys
) -> None:
    """Colour shift, gray and jitter are training augmentations: --degrade leaves them out by default."""
    from train.evaluate import main

    hq = _faces(tmp_path / "hq", n=3, size=64)
    config = tmp_path / "always_jitter.yml"  # every augmentation certain, so leaving one in shows
    config.write_text(
        "degradation: {color_jitter_prob: 1.0, color_jitter_pt_prob: 1.0, brightness: [0.5, 0.6], "
        "contrast: null, saturation: null, hue: null, gray_prob: 1.0, blur_sigma: [0.1, 0.2], "
        "downsample_range: [1.0, 1.0], noise_range: [0, 1], jpeg_range: [95, 100]}\n"
    )
    common = ["--hq", str(tmp_path / "hq"), "--degrade", "--degradation-config", str(config)]
    common += ["--restored", str(tmp_path / "hq"), "--size", "64"]
    assert main([*common, "--lq", str(tmp_path / "paper")]) == 0
    assert "the paper's degradation model" in capsys.readouterr().out
    assert main([*common, "--lq", str(tmp_path / "aug"), "--color-augmentations"]) == 0
    assert "training colour augmentations" in capsys.readouterr().out
    for i, gt in enumerate(hq):
        paper = cv2.imread(str(tmp_path / "paper" / f"face{i}.png")).astype(float)
        aug = cv2.imread(str(tmp_path / "aug" / f"face{i}.png")).astype(float)
        assert abs(paper.mean() - gt.mean()) < 3  # brightness kept: no jitter
        assert np.abs(paper - paper.mean(2, keepdims=True)).mean() > 5  # colour kept: not gray
        assert aug.mean() < 0.7 * gt.mean()  # brightness 0.5-0.6 applied
        assert np.abs(aug - aug.mean(2, keepdims=True)).max() < 3  # gray


def test_evaluate_restores_with_a_model(tmp_path: Path) -> None:
    from gfp.archs import GeneratorConfig, build_generator
    from gfp.loading import save_pretrained
    from train.evaluate import main

    _faces(tmp_path / "hq", n=2, size=192)
    config = GeneratorConfig(
        arch="clean", out_size=32, channel_multiplier=1, narrow=0.0625, num_style_feat=32
    )
    torch.manual_seed(0)
    save_pretrained(build_generator(config), config, tmp_path / "model")
    args = ["--hq", str(tmp_path / "hq"), "--lq", str(tmp_path / "lq"), "--degrade"]
    args += ["--model", str(tmp_path / "model"), "--out", str(tmp_path / "out"), "--size", "192"]
    args += ["--json", str(tmp_path / "r.json")]
    assert main(args) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n"] == 2 and all(math.isfinite(v) for v in report["mean"]["restored"].values())
    assert "niqe" in report["mean"]["restored"] and "niqe" in report["mean"]["lq"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["face0.png", "face1.png"]
    assert cv2.imread(str(tmp_path / "out" / "face0.png")).shape == (192, 192, 3)


def test_evaluate_bad_folders_are_one_line_errors(tmp_path: Path, capsys) -> None:
    from train.evaluate import main

    _faces(tmp_path / "hq", n=1)
    (tmp_path / "other").mkdir()
    cv2.imwrite(str(tmp_path / "other" / "unrelated.png"), np.zeros((8, 8, 3), np.uint8))
    base = ["--hq", str(tmp_path / "hq")]
    assert main([*base, "--lq", str(tmp_path / "nope"), "--restored", str(tmp_path / "other")]) == 2
    assert "LQ folder not found" in capsys.readouterr().err
    assert main([*base, "--lq", str(tmp_path / "other"), "--restored", str(tmp_path / "other")]) == 2
    assert "no face of" in capsys.readouterr().err
    assert main(["--hq", str(tmp_path / "missing"), "--lq", str(tmp_path), "--restored", str(tmp_path)]) == 2
    assert "image folder not found" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")  # --json under a file: said before any scoring, not after
    json_under_file = ["--json", str(tmp_path / "a-file" / "r.json")]
    assert (
        main([*base, "--lq", str(tmp_path / "nope"), "--restored", str(tmp_path / "other"), *json_under_file])
        == 2
    )
    assert "a-file is a file, not a folder" in capsys.readouterr().err


def test_evaluate_checks_every_face_before_any_work(tmp_path: Path, capsys, monkeypatch) -> None:
    """A face that is not square was found only when its turn to be scored came, after the others (hours on
    a large set), or after degrading and restoring: every face's header is looked at first."""
    import train.evaluate as evaluation

    def scored(*args, **kwargs):
        raise AssertionError("a face was scored before every face was checked")

    monkeypatch.setattr(evaluation, "score", scored)
    _faces(tmp_path / "hq")
    restored = tmp_path / "restored"
    restored.mkdir()
    for p in (tmp_path / "hq").iterdir():
        (restored / p.name).write_bytes(p.read_bytes())
    cv2.imwrite(str(restored / "face2.png"), np.zeros((48, 64, 3), np.uint8))
    args = ["--hq", str(tmp_path / "hq"), "--lq", str(tmp_path / "hq"), "--restored", str(restored)]
    assert evaluation.main(args) == 2
    assert "face2.png is 64x48, not a square aligned face" in capsys.readouterr().err
    cv2.imwrite(str(tmp_path / "hq" / "face2.png"), np.zeros((48, 64, 3), np.uint8))
    args = ["--hq", str(tmp_path / "hq"), "--lq", str(tmp_path / "lq"), "--degrade"]
    args += ["--restored", str(restored)]
    assert evaluation.main(args) == 2 and not (tmp_path / "lq").exists()  # said before degrading
    assert "face2.png is 64x48, not a square aligned face" in capsys.readouterr().err


def test_evaluate_says_when_faces_are_identical_to_their_hq(tmp_path: Path, capsys) -> None:
    """PSNR of identical images is inf: the report said `least gain: face0 -inf dB` (or +nan dB)."""
    from train.evaluate import main

    hq = tmp_path / "hq"
    _faces(hq)
    restored = tmp_path / "restored"
    restored.mkdir()
    for i, p in enumerate(sorted(hq.iterdir())):
        img = cv2.imread(str(p)).astype(int)
        cv2.imwrite(str(restored / p.name), np.clip(img + (i + 1), 0, 255).astype(np.uint8))
    assert main(["--hq", str(hq), "--lq", str(hq), "--restored", str(restored), "--size", "64"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out and "-inf" not in out and "least gain" not in out, out
    assert "3 LQ face(s) identical to their HQ face, e.g. face0 (PSNR inf: nothing to restore" in out
    assert re.search(r"\| lq \(input\) \| inf \| 1.0000 \| inf \|", out) and "| restored − lq | n/a |" in out
    report = tmp_path / "report.json"
    args = ["--hq", str(hq), "--lq", str(restored), "--restored", str(hq), "--size", "64"]
    args += ["--json", str(report)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "least gain: none to measure, every restored face is identical to its HQ face" in out, out
    assert "3 restored face(s) identical to their HQ face" in out
    # JSON has no inf: Python wrote Infinity, which other readers (jq, JavaScript) refuse
    text = report.read_text()
    assert "Infinity" not in text and "NaN" not in text and json.loads(text)


def test_identity_metric_uses_mobilefacenet_when_arcface_is_missing(shared_data: Path, offline) -> None:
    from train.evaluate import Identity

    identity = Identity(None, shared_data)
    assert identity.name == "mobilefacenet"
    # from a weights folder too, as --weights-dir promises (it was found only in the shared data folder)
    assert Identity(str(shared_data / "weights"), None).name == "mobilefacenet"
    skipped = Identity(None, None)
    assert skipped.net is None and "mobilefacenet_casia_arcface.ckpt" in skipped.skipped
    assert "Looked in:" not in skipped.skipped
    face = cv2.imread(str(sorted((shared_data / "faces" / "hq").iterdir())[0]))
    face = cv2.resize(face, (512, 512), interpolation=cv2.INTER_AREA)
    same = torch.nn.functional.cosine_similarity(identity.embed(face), identity.embed(face[:, ::-1]), dim=0)
    other = cv2.resize(
        cv2.imread(str(sorted((shared_data / "faces" / "hq").iterdir())[1])), (512, 512), cv2.INTER_AREA
    )
    assert float(same) > float(
        torch.nn.functional.cosine_similarity(identity.embed(face), identity.embed(other), dim=0)
    )


# -------------------------------------------------------------------------------------------- export
def test_export_takes_the_newest_checkpoint_of_a_run_folder_and_stores_half(tmp_path: Path) -> None:
    from gfp.archs import GeneratorConfig, build_generator
    from gfp.loading import load_generator
    from train.export import export

    config = GeneratorConfig(
        arch="clean", out_size=32, channel_multiplier=1, narrow=0.0625, num_style_feat=32
    )
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    nets = []
    for step in (5, 10):
        torch.manual_seed(step)
        net = build_generator(config)
        nets.append(net)
        cfg = {"name": "t", "model": {"generator": config.to_dict(), "pretrained": None, "prior": None}}
        torch.save(
            {"step": step, "config": cfg, "net_g_ema": net.state_dict()}, ckpts / f"step_{step:08d}.pt"
        )
    folder = export(tmp_path / "run", tmp_path / "out", card="card", half=True)
    from safetensors.torch import load_file

    stored = load_file(folder / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float16}
    loaded, _ = load_generator(folder)
    want = {k: v.half().float() for k, v in nets[1].state_dict().items()}  # the newest, rounded to fp16
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=0)
    # given the checkpoint as read, export does not read it again: a running training may have pruned it
    import train.export

    state = train.export.read_checkpoint(ckpts / "step_00000010.pt")
    (ckpts / "step_00000010.pt").unlink()
    again = export(ckpts / "step_00000005.pt", tmp_path / "out2", card="card", state=state)
    torch.testing.assert_close(load_generator(again)[0].state_dict(), nets[1].state_dict(), rtol=0, atol=0)


def test_a_cut_newest_checkpoint_names_the_newest_readable_one(tmp_path: Path, capsys) -> None:
    """A run killed while writing (or a full disk, a copy cut short) spoils its newest checkpoint: export
    says so in one line and names the newest one beside it that reads, and does not take it silently."""
    from gfp.archs import GeneratorConfig, build_generator
    from train.__main__ import main

    config = GeneratorConfig(
        arch="clean", out_size=32, channel_multiplier=1, narrow=0.0625, num_style_feat=32
    )
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    cfg = load_config(None, ["data.out_size=32"])
    cfg["model"]["generator"] = config.to_dict()
    state = {"config": cfg, "net_g_ema": build_generator(config).state_dict()}
    for step in (5, 10, 15):
        torch.save({"step": step, **state}, ckpts / f"step_{step:08d}.pt")
    data = (ckpts / "step_00000015.pt").read_bytes()
    (ckpts / "step_00000015.pt").write_bytes(data[: len(data) // 2])
    (ckpts / "step_00000010.pt").write_bytes(b"")
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "miniz" not in err, err
    assert err.startswith(f"error: {ckpts / 'step_00000015.pt'} is not a readable training checkpoint: ")
    assert "cut short or damaged" in err
    assert err.endswith(f"the newest checkpoint beside it that reads is {ckpts / 'step_00000005.pt'}: "
                        "give that file instead (an earlier step)\n"), err  # fmt: skip
    assert not (tmp_path / "out").exists()
    assert main(["export", str(ckpts / "step_00000005.pt"), str(tmp_path / "out")]) == 0


def test_augmentation_moves_face_and_component_boxes_together(tmp_path: Path) -> None:
    """A bright dot at the template's left eye stays inside the left-eye box whatever warp is drawn."""
    from train.data import FaceDegradationDataset, template_components

    eye_x, eye_y, _ = template_components()["left_eye"]
    img = np.zeros((128, 128, 3), np.uint8)
    cv2.circle(img, (round(eye_x / 4), round(eye_y / 4)), 2, (255, 255, 255), -1)
    cv2.imwrite(str(tmp_path / "face.png"), img)
    aug = "data.augment={rotation: 20, scale: [0.7, 1.3], shift: 0.1, color: 0.0, gray_prob: 0.0}"
    cfg = load_config(TINY, [f"data.train={tmp_path}", "data.out_size=128", "data.use_hflip=false", aug])
    ds = FaceDegradationDataset(tmp_path, cfg["data"], cfg["degradation"], train=True)
    centres = set()
    for k in range(6):
        item = ds[(0, (0, 0, 0, k))]
        y, x = np.unravel_index(int(item["gt"].sum(0).argmax()), (128, 128))
        x1, y1, x2, y2 = item["loc_left_eye"].tolist()
        assert x1 <= x <= x2 and y1 <= y <= y2, (x, y, item["loc_left_eye"])
        centres.add((int(x), int(y)))
    assert len(centres) > 3  # the warp really moved the face
    plain = FaceDegradationDataset(tmp_path, cfg["data"], cfg["degradation"], train=False)
    assert plain.augment is None  # validation faces are never augmented


def test_colour_augmentation_is_saturation_contrast_brightness_and_white_balance() -> None:
    """data.augment's colour change, spelled out a step at a time (saturation around each pixel's grey,
    contrast around the face's mean, brightness, a gain per channel), equals what ``augment`` computes."""
    from train.data import augment

    img = np.random.default_rng(1).random((32, 32, 3), dtype=np.float32) * 0.6 + 0.2
    cfg = {"rotation": 0.0, "scale": [1, 1], "shift": 0.0, "color": 0.2, "gray_prob": 0.0}
    outputs = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        rng.uniform(-1, 1), rng.uniform(1, 1), rng.uniform(-1, 1, 2)  # the warp's draws (no warp here)
        saturation, contrast, brightness = 1 + 0.2 * rng.uniform(-1, 1, 3)
        gain = 1 + 0.1 * rng.uniform(-1, 1, 3)
        gray = (img @ np.array([0.114, 0.587, 0.299]))[..., None]  # BGR
        saturated = gray + (img - gray) * saturation
        mean = saturated.mean()
        want = np.clip(((saturated - mean) * contrast + mean * brightness) * gain, 0, 1)
        got, _ = augment(img, {}, cfg, np.random.default_rng(seed))
        np.testing.assert_allclose(got, want, atol=1e-5)
        outputs.append(got)
    assert np.abs(outputs[0] - outputs[1]).max() > 0.01  # the draws really changed the colours


@pytest.mark.parametrize("module", ["train.train", "train.export", "train.publish", "train.evaluate"])
def test_each_command_module_runs_as_a_script(module: str, monkeypatch, capsys) -> None:
    """``python -m train.<command>`` is documented as the same as ``python -m train <command>``."""
    import runpy
    import warnings

    monkeypatch.setattr("sys.argv", [module, "--help"])
    with warnings.catch_warnings(), pytest.raises(SystemExit) as done:
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is already imported
        runpy.run_module(module, run_name="__main__")
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")


def test_the_command_list_is_help_and_an_unknown_command_is_named(capsys) -> None:
    from train.__main__ import main

    assert main(["--help"]) == 0 and capsys.readouterr().out.startswith("usage: python -m train {prepare,")
    assert main(["bogus"]) == 2 and "unknown command 'bogus'" in capsys.readouterr().err


def test_faces_are_matched_by_name_not_by_a_shared_beginning(tmp_path: Path) -> None:
    from train.evaluate import match

    files = [tmp_path / n for n in ("face_2.png", "face_00.png", "other_01_x.png")]
    assert match("face", files) == tmp_path / "face_00.png"  # the CLI's face file, not face_2
    assert match("face", files[:1]) is None  # face_2 is another face
    assert match("other", files) == tmp_path / "other_01_x.png"  # with a --suffix
    assert match("face_2", files) == tmp_path / "face_2.png"


def test_source_faces_are_never_overwritten(tmp_path: Path, capsys) -> None:
    from train.data import DataError, prepare_folder
    from train.evaluate import main

    faces = tmp_path / "faces"
    faces.mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(faces / name), np.full((64, 64, 3), 120, np.uint8))
    kept = {p.name: p.read_bytes() for p in faces.iterdir()}
    assert main(["--hq", str(faces), "--lq", str(faces), "--degrade", "--restored", str(faces)]) == 2
    assert "the HQ faces would be lost" in capsys.readouterr().err
    stale = tmp_path / "lq"
    stale.mkdir()
    cv2.imwrite(str(stale / "a.jpg"), np.zeros((64, 64, 3), np.uint8))  # left from an earlier run
    assert (
        main(["--hq", str(faces), "--lq", str(stale), "--degrade", "--restored", str(faces), "--size", "32"])
        == 2
    )
    assert "LQ faces a.jpg and a.png share a name" in capsys.readouterr().err
    for flag, folder in (("--lq", stale), ("--hq", faces)):  # restored faces written over LQ or HQ ones
        kept_lq = {p.name: p.read_bytes() for p in stale.iterdir()}
        link = tmp_path / "link"  # the same folder by another name
        link.unlink(missing_ok=True)
        link.symlink_to(folder)
        args = ["--hq", str(faces), "--lq", str(stale), "--model", "v1.4", "--out", str(link)]
        assert main(args) == 2
        assert f"--out is {flag}: the restored faces would replace" in capsys.readouterr().err
        assert {p.name: p.read_bytes() for p in stale.iterdir()} == kept_lq
    with pytest.raises(DataError, match="is the source folder"):
        prepare_folder(faces, faces, 32)
    assert {p.name: p.read_bytes() for p in faces.iterdir()} == kept
    cv2.imwrite(str(faces / "a.jpg"), np.full((64, 64, 3), 90, np.uint8))
    with pytest.raises(DataError, match="a.jpg and a.png would both be written as a.png|a.png and a.jpg"):
        prepare_folder(faces, tmp_path / "out", 32)
    (faces / "a.jpg").unlink()
    cv2.imwrite(str(faces / "c.png"), np.full((48, 64, 3), 90, np.uint8))  # a photo, not an aligned face
    with pytest.raises(DataError, match="c.png is 64x48, not a square aligned face"):
        prepare_folder(faces, tmp_path / "out", 32)


def test_prepare_checks_every_face_before_writing_any(tmp_path: Path, capsys) -> None:
    """A fake .png or a photo late in the folder was found after the faces before it were written: the
    output folder was left part-done. Every header is looked at first, and nothing is written."""
    from train.__main__ import main

    faces = tmp_path / "faces"
    faces.mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(faces / name), np.full((64, 64, 3), 120, np.uint8))
    (faces / "y.png").write_text("not an image")
    cv2.imwrite(str(faces / "z.png"), np.full((48, 64, 3), 90, np.uint8))
    assert main(["prepare", str(faces), str(tmp_path / "out"), "--size", "32"]) == 2
    assert re.search(r"unreadable image\(s\).*y.png$", capsys.readouterr().err.strip())
    (faces / "y.png").unlink()
    assert main(["prepare", str(faces), str(tmp_path / "out"), "--size", "32", "--lmdb"]) == 2
    assert "z.png is 64x48, not a square aligned face" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.lmdb").exists()


def test_prepare_refuses_an_existing_lmdb(tmp_path: Path, capsys) -> None:
    """Packing into an existing lmdb kept its old entries beside the new ones (meta_info.txt listed the new
    ones only): it is refused, and the lmdb is left as it was."""
    import lmdb

    from train.__main__ import main

    many, few = tmp_path / "many", tmp_path / "few"
    for folder, count in ((many, 4), (few, 2)):
        folder.mkdir()
        for i in range(count):
            cv2.imwrite(str(folder / f"{folder.name}{i}.png"), np.full((64, 64, 3), i, np.uint8))
    db = tmp_path / "faces.lmdb"
    assert main(["prepare", str(many), str(db), "--size", "32", "--lmdb"]) == 0
    capsys.readouterr()
    assert main(["prepare", str(few), str(db), "--size", "32", "--lmdb"]) == 2
    assert "faces.lmdb already exists: remove it or give another name" in capsys.readouterr().err
    env = lmdb.open(str(db), readonly=True, lock=False)
    assert env.stat()["entries"] == 4 and len((db / "meta_info.txt").read_text().splitlines()) == 4
    env.close()


def test_prepare_writes_only_what_it_was_asked_for(tmp_path: Path, capsys) -> None:
    """``prepare --lmdb`` also wrote a PNG folder beside the lmdb, into which a later run wrote its faces
    beside the earlier ones, over any of the same name: it writes the lmdb only (a prepared folder can be
    packed into one), and a folder that holds images already is refused as an output, left as it was. A
    face that fails to decode leaves no part-done output (which would block a rerun)."""
    import lmdb

    from train.__main__ import main

    first, second = tmp_path / "first", tmp_path / "second"
    for folder, count in ((first, 3), (second, 2)):
        folder.mkdir()
        for i in range(count):
            cv2.imwrite(str(folder / f"{i}.png"), np.full((64, 64, 3), 40 * i + count, np.uint8))
    out = tmp_path / "out"
    assert main(["prepare", str(first), f"{out}.lmdb", "--size", "32", "--lmdb"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "out.lmdb", "second"]
    assert main(["prepare", str(first), str(out), "--size", "32"]) == 0
    assert main(["prepare", str(out), str(tmp_path / "packed.lmdb"), "--size", "32", "--lmdb"]) == 0
    capsys.readouterr()
    for db in ("out.lmdb", "packed.lmdb"):  # the faces the folder holds
        with lmdb.open(str(tmp_path / db), readonly=True, lock=False) as env, env.begin() as txn:
            for png in sorted(out.iterdir()):
                entry = cv2.imdecode(np.frombuffer(txn.get(png.stem.encode()), np.uint8), cv2.IMREAD_COLOR)
                np.testing.assert_array_equal(entry, cv2.imread(str(png)))
    kept = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["prepare", str(second), str(out), "--size", "32"]) == 2
    assert "out already holds images: give an empty or new folder" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == kept
    png = bytearray((second / "1.png").read_bytes())  # a sound header and end, pixels that fail to decode
    png[png.index(b"IDAT") + 20 : png.index(b"IDAT") + 40] = bytes(20)
    (second / "1.png").write_bytes(png)
    before = sorted(tmp_path.iterdir())
    for args in ([str(tmp_path / "new")], [str(tmp_path / "new.lmdb"), "--lmdb"]):  # nothing left behind
        assert main(["prepare", str(second), *args, "--size", "32"]) == 2
        assert "unreadable image: " in capsys.readouterr().err
        assert sorted(tmp_path.iterdir()) == before


def test_command_mistakes_are_one_line_errors(tmp_path: Path, capsys) -> None:
    """A components file that is none, an export or a crop into a path that is a file, a crop size of 0."""
    from train.__main__ import main
    from train.data import DataError, load_component_file

    torch.save({"face": 1}, tmp_path / "other.pth")
    with pytest.raises(DataError, match="other.pth is not a components file"):
        load_component_file(tmp_path / "other.pth")
    (tmp_path / "a-file").write_bytes(b"")
    faces = tmp_path / "faces"
    faces.mkdir()
    cv2.imwrite(str(faces / "a.png"), np.full((64, 64, 3), 120, np.uint8))
    assert main(["prepare", str(faces), str(tmp_path / "a-file" / "out"), "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "a-file" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as done:
        main(["crop", str(tmp_path), str(tmp_path / "out"), "--size", "0"])
    assert done.value.code == 2 and "--size must be at least 16" in capsys.readouterr().err
    # files that are no checkpoint fail the unpickler in arbitrary ways (KeyError, IndexError): one line
    for name, data in (("text.pt", b"hi\n"), ("yaml.pt", b"step: 1\n")):
        (tmp_path / name).write_bytes(data)
        assert main(["export", str(tmp_path / name), str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert f"{name} is not a readable training checkpoint" in err and "Traceback" not in err, err


def test_a_validation_log_line_cut_short_is_passed_over(tmp_path: Path) -> None:
    """A killed run or a full disk can leave half a line in val_log.jsonl: export and publish read the
    records around it (a JSONDecodeError traceback made the run unexportable)."""
    from train.export import validation_metrics

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "val_log.jsonl").write_text(
        '{"step": 10, "psnr": 20.5}\n{"step": 20, "psnr": 21.5}\n{"step": 25, "ss'
    )
    metrics = validation_metrics(tmp_path / "checkpoints" / "step_00000025.pt", 25)
    assert metrics == {"step": 20.0, "psnr": 21.5}
    from train.config import load_config
    from train.export import model_card

    card = model_card(load_config(None, []), 25, metrics)  # the step the metrics are of, not the checkpoint's
    assert "## Validation (EMA generator, step 20)" in card and "| 21.5000 |" in card
    cfg = load_config(None, ["model.identity.arch=none", "loss.gan_from=0"])  # trained without identity
    assert "no identity loss" in model_card(cfg, 25, metrics) and "identity 10" not in model_card(
        cfg, 25, metrics
    )


def test_the_card_shows_the_degraded_inputs_score_beside_the_models(tmp_path: Path) -> None:
    """A model worse than the input it restores must show it: the card's table has the degraded input's
    score from the same validation record, and says when the model is below it."""
    from train.config import load_config
    from train.export import model_card, validation_metrics

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "val_log.jsonl").write_text(
        '{"step": 10, "psnr": 6.26, "ssim": 0.4, "psnr_lq": 18.35, "ssim_lq": 0.3, "s_val": 1.5}\n'
    )
    metrics = validation_metrics(tmp_path / "checkpoints" / "step_00000010.pt", 10)
    assert metrics == {"step": 10.0, "psnr": 6.26, "ssim": 0.4, "psnr_lq": 18.35, "ssim_lq": 0.3}
    card = model_card(load_config(None, []), 10, metrics | {"id_cos": 0.5})
    assert "| metric | this model | degraded input |" in card
    assert "| PSNR | 6.2600 | 18.3500 |" in card and "| SSIM | 0.4000 | 0.3000 |" in card
    assert "| Identity cosine similarity | 0.5000 | (not logged) |" in card
    assert "**Below its input** on PSNR:" in card
    meta = yaml.safe_load(card.split("---")[1])  # the Hub's model-index: the model's own results only
    assert {m["type"] for m in meta["model-index"][0]["results"][0]["metrics"]} == {"psnr", "ssim", "id_cos"}
    better = model_card(load_config(None, []), 10, metrics | {"psnr": 19.0})
    assert "| PSNR | 19.0000 | 18.3500 |" in better and "Below its input" not in better


def test_every_claim_of_the_card_is_true(tmp_path: Path) -> None:
    """The card named a validation step when nothing was logged, said the faces were degraded as in the
    official recipe whatever the degradation section, and did not say that --half weights are float16."""
    from train.config import load_config
    from train.export import main, model_card

    cfg = load_config(None, [])
    card = model_card(cfg, 30, {})
    assert "Validation (EMA generator" not in card and "None logged up to step 30" in card
    assert "degraded on the fly as in the official GFPGAN recipe" in card and "float16" not in card
    assert "## Validation (EMA generator, step 20)" in model_card(cfg, 30, {"step": 20.0, "psnr": 21.0})
    changed = load_config(None, ["degradation.blur_sigma=[0.1, 3.0]", "degradation.gray_prob=0"])
    card = model_card(changed, 30, {})
    assert "as in the official GFPGAN recipe" not in card
    assert "settings changed: blur_sigma [0.1, 3.0] (official [0.1, 10.0]), gray_prob 0" in card
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    from gfp.archs import GeneratorConfig, build_generator

    gen = {"arch": "clean", "out_size": 32, "channel_multiplier": 1, "narrow": 0.0625, "num_style_feat": 32}
    net = build_generator(GeneratorConfig.from_dict(gen))
    cfg["model"]["generator"] = gen
    torch.save({"step": 5, "config": cfg, "net_g_ema": net.state_dict()}, run / "checkpoints" / "step_5.pt")
    assert main([str(run), str(tmp_path / "half"), "--half"]) == 0
    assert "its weights stored as float16" in (tmp_path / "half" / "README.md").read_text()
    assert main([str(run), str(tmp_path / "full")]) == 0
    assert "float16" not in (tmp_path / "full" / "README.md").read_text()


def test_the_card_says_how_to_use_the_model_with_what_the_commands_take() -> None:
    from train.config import load_config
    from train.export import model_card

    cfg = load_config(None, [])
    card = model_card(cfg, 10, {}, repo_name="someone/my-faces")
    assert "-v someone/my-faces" in card and "--model someone/my-faces" in card
    card = model_card(cfg, 10, {}, repo_name="my-faces")  # a bare name is no repo id -v or --model take
    assert "-v my-faces" not in card and "-v <this repo id or folder>" in card
    assert "# my-faces" in card


def test_official_pth_export_of_a_layout_its_weights_do_not_show_is_refused(tmp_path: Path, capsys) -> None:
    """A .pth carries no config: a generator with input_is_latent false would load from it as the default
    layout and restore faces wrongly, so --official-pth refuses it before writing anything."""
    import copy
    import dataclasses

    from _zoo_helpers import tiny_config, tiny_generator

    from train.config import DEFAULTS
    from train.export import main as export_main

    config = dataclasses.replace(tiny_config(), input_is_latent=False)
    weights = tiny_generator(config).state_dict()
    cfg = copy.deepcopy(DEFAULTS)
    cfg["name"], cfg["model"]["generator"] = "tiny", config.to_dict()
    state = {
        "step": 1,
        "config": cfg,
        "net_g": weights,
        "net_g_ema": weights,
    }
    torch.save(state, tmp_path / "step_00000001.pt")
    out = tmp_path / "export"
    assert export_main([str(tmp_path / "step_00000001.pt"), str(out), "--official-pth"]) == 2
    assert "input_is_latent False (read as True)" in capsys.readouterr().err
    assert not out.exists()
