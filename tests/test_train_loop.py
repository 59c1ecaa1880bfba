"""The training loop end to end on CPU with tiny networks: learning, exact resume, 2-process DDP,
export → gfp loading, publish (dry run and a stand-in Hub client), and the command-line entry points."""

from __future__ import annotations

import contextlib
import copy
import multiprocessing
import os
import re
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from conftest import free_port

from gfp.loading import load_generator
from train.config import DEFAULTS, ConfigError, load_config
from train.data import DataError
from train.export import model_card
from train.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "train" / "configs" / "tiny_cpu.yml"
FAST = [  # the loop's full recipe, minus the two slowest frozen nets (covered in their own tests)
    "data.out_size=32",
    "model.identity.arch=none",
    "model.generator.narrow=0.0625",
    "model.generator.num_style_feat=32",
    "model.discriminator.narrow=0.0625",
    "loss.vgg_layers={conv1_2: 0.1, conv2_2: 0.1}",
    "train.val_every=0",
    "train.log_every=0",
    "train.ckpt_every=0",
]


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """Eight smooth synthetic 64 px images with a face-like layout (dark eyes and mouth on skin tone)."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("faces")
    for i in range(8):
        img = np.zeros((64, 64, 3), np.uint8)
        img[:] = rng.integers(90, 200, 3)
        for x, y in ((24, 30), (40, 30)):
            cv2.circle(img, (x, y), 3, tuple(int(v) for v in rng.integers(0, 60, 3)), -1)
        cv2.ellipse(img, (32, 46), (8, 3), 0, 0, 360, tuple(int(v) for v in rng.integers(60, 120, 3)), -1)
        cv2.imwrite(str(folder / f"{i:05d}.png"), cv2.GaussianBlur(img, (0, 0), 1.0))
    return folder


def _config(faces: Path, out: Path, *extra: str) -> dict:
    return load_config(TINY, [f"data.train={faces}", f"output_dir={out}", *FAST, *extra])


def _reconstruction_l1(trainer: Trainer) -> float:
    """L1 of the generator (fixed noise) on four fixed degraded faces."""
    items = [trainer.train_set[i] for i in range(4)]
    lq, gt = torch.stack([it["lq"] for it in items]), torch.stack([it["gt"] for it in items])
    with torch.no_grad():
        out, _ = trainer.net_g.eval()(lq, return_rgb=False)
    trainer.net_g.train()
    return float((out - gt).abs().mean())


def test_twenty_iterations_lower_the_reconstruction_loss(faces, tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(_config(faces, tmp_path / "run"))
    assert trainer.vgg is not None and len(trainer.nets_d) == 4  # perceptual + whole-face + 3 component Ds
    before = _reconstruction_l1(trainer)
    logs = trainer.fit(20)
    after = _reconstruction_l1(trainer)
    assert trainer.step == 20
    assert after < 0.9 * before, (before, after)
    assert {"l_g_pix", "l_p_32", "l_g_percep", "l_g_style", "l_g_gan", "l_g_comp_style_loss", "l_d"} <= set(
        logs
    )
    assert (tmp_path / "run" / "config.yml").is_file()


def test_resume_continues_exactly(faces, tmp_path):
    extra = (
        "loss.d_reg_every=2",
        "loss.pyramid_until=3",
        "train.ckpt_every=2",
    )  # R1 and pyramid switch inside
    torch.manual_seed(5)
    straight = Trainer(_config(faces, tmp_path / "a", *extra))
    straight.fit(4)
    torch.manual_seed(5)
    first = Trainer(_config(faces, tmp_path / "b", *extra))
    first.fit(2)
    ckpt = tmp_path / "b" / "checkpoints" / "step_00000002.pt"
    assert ckpt.is_file()
    torch.manual_seed(123)  # a different process state: everything must come from the checkpoint
    resumed = Trainer(_config(faces, tmp_path / "b", *extra))
    resumed.resume(ckpt)
    assert resumed.step == 2
    resumed.fit(4)
    a, b = straight.state_dict(), resumed.state_dict()
    for key in ("net_g", "net_g_ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), (key, name)
    for net, sd in a["nets_d"].items():
        for name, tensor in sd.items():
            assert torch.equal(tensor, b["nets_d"][net][name]), (net, name)
    assert a["optimizers"]["g"]["state"][0]["exp_avg_sq"].equal(
        b["optimizers"]["g"]["state"][0]["exp_avg_sq"]
    )


def test_resume_with_a_lower_learning_rate_trains_at_it(faces, tmp_path):
    """A diverged run is told to resume with a lower optim.lr_g / optim.lr_d: the saved optimiser state
    would bring back the old rates, so the ones asked for must replace them (and unchanged ones stay)."""
    torch.manual_seed(0)
    first = Trainer(_config(faces, tmp_path / "run", "train.ckpt_every=2"))
    first.fit(2)
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000002.pt"
    resumed = Trainer(_config(faces, tmp_path / "run", "optim.lr_g=1e-4", "optim.lr_d=2e-4"))
    resumed.resume(ckpt)
    rates = {k: o.param_groups[0]["lr"] for k, o in resumed.optimizers.items()}
    assert (rates["g"], rates["d"]) == (1e-4, 2e-4)
    assert rates["left_eye"] == first.cfg["optim"]["lr_component"]
    resumed.fit(3)
    assert resumed.optimizers["g"].param_groups[0]["lr"] == 1e-4


@pytest.mark.parametrize("has_bf16", [True, False])
def test_cpu_autocast_is_bf16_where_asked_and_the_cpu_has_it(faces, tmp_path, monkeypatch, caplog, has_bf16):
    from train import train as train_mod

    monkeypatch.setattr(train_mod, "cpu_has_native_bf16", lambda: has_bf16)  # emulated bf16 still autocasts
    torch.manual_seed(0)
    with caplog.at_level("WARNING", logger="train"):
        trainer = Trainer(_config(faces, tmp_path / "on", "train.amp_cpu=true"))
    assert trainer.amp is has_bf16
    assert ("no bf16 instructions" in caplog.text) is not has_bf16
    dtypes = set()  # what the generator's layers compute in
    hooks = [
        m.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
        for m in trainer.net_g.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    with trainer._autocast():
        trainer.net_g(trainer.train_set[0]["lq"][None], return_rgb=False)
    for hook in hooks:
        hook.remove()
    assert dtypes == {torch.bfloat16 if has_bf16 else torch.float32}
    torch.manual_seed(0)
    reference = Trainer(_config(faces, tmp_path / "fp32"))
    assert not reference.amp  # off unless train.amp_cpu asks
    torch.manual_seed(1)  # the same noise for both steps
    step = trainer.fit(2)
    torch.manual_seed(1)
    ref = reference.fit(2)
    for key in ("l_g_pix", "l_d"):  # the same step in lower precision: close, and equal only in float32
        assert step[key] == pytest.approx(ref[key], rel=0.05), key
        assert (step[key] == ref[key]) is not has_bf16, key


def _ddp_worker(rank: int, world: int, port: int, cfg: dict, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        trainer = Trainer(cfg, rank, world, torch.device("cpu"))
        torch.manual_seed(1000 + rank)  # different noise per rank, as train.train.run does
        initial = {k: v.clone() for k, v in trainer.state_dict()["net_g"].items()}
        logs = trainer.fit(3)
        state = trainer.state_dict()
        torch.save({"initial": initial, "net_g": state["net_g"], "d": state["nets_d"]["d"], "logs": logs},
                   Path(out) / f"rank{rank}.pt")  # fmt: skip
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_ranks_agree(faces, tmp_path):
    cfg = _config(faces, tmp_path / "ddp", "train.ckpt_every=3", "data.batch_size=2")
    mp.spawn(_ddp_worker, args=(2, free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for name in r0["net_g"]:
        assert torch.equal(r0["net_g"][name], r1["net_g"][name]), name
    for name in r0["d"]:
        assert torch.equal(r0["d"][name], r1["d"][name]), name
    assert any(not torch.equal(r0["initial"][k], r0["net_g"][k]) for k in r0["net_g"])  # it did train
    assert r0["logs"] == pytest.approx(r1["logs"])  # logged losses are averaged over ranks
    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "step_00000003.pt", weights_only=True)
    assert len(ckpt["rng"]) == 2 and not torch.equal(ckpt["rng"][0]["cpu"], ckpt["rng"][1]["cpu"])


def _ddp_data_error_worker(rank: int, world: int, port: int, cfg: dict, out: str, where: str) -> None:
    from datetime import timedelta

    torch.set_num_threads(1)
    # a rank left alone in a collective fails the test in a minute, not half an hour
    url, limit = f"tcp://127.0.0.1:{port}", timedelta(seconds=60)
    dist.init_process_group("gloo", init_method=url, rank=rank, world_size=world, timeout=limit)
    try:
        trainer = Trainer(cfg, rank, world, torch.device("cpu"))
        if rank == (1 if where == "training" else 0):  # this rank alone reads a face that fails after step 2
            data = trainer.train_set if where == "training" else trainer.val_set
            read = type(data).__getitem__

            def failing(self, index):
                if trainer.step >= 2:
                    raise DataError(f"unreadable image: /faces/broken_{where}.png")
                return read(self, index)

            type(data).__getitem__ = failing
        if rank == 0:  # a slow disk: a rank that does not wait for the checkpoint leaves before it exists
            save = trainer.save_checkpoint
            trainer.save_checkpoint = lambda: time.sleep(1.0) or save()
        try:
            trainer.fit(6)
            message = "finished"
        except DataError as err:
            message = str(err)
        saved = any((Path(cfg["output_dir"]) / "checkpoints").glob("step_*.pt"))
        (Path(out) / f"rank{rank}.txt").write_text(f"{message}, checkpoint written: {saved}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(("where", "every"), [("training", 100), ("validation", 100), ("training", 2)])
def test_a_bad_image_on_one_rank_stops_every_rank_after_a_checkpoint(faces, tmp_path, where, every):
    """Distributed, an image that fails on one rank (its sampler's share, or rank 0's validation) left the
    others waiting in a collective, and no checkpoint was written: every rank now stops at the same step,
    naming the image, after a checkpoint of the steps done. Right after a regular checkpoint (every=2) no
    rank writes another: all know the step is saved, so none waits alone in the checkpoint's collectives."""
    run = tmp_path / "ddp"
    cfg = _config(faces, run, f"train.ckpt_every={every}", "train.val_every=2", "data.batch_size=2")
    mp.spawn(_ddp_data_error_worker, args=(2, free_port(), cfg, str(tmp_path), where), nprocs=2, join=True)
    for rank in (0, 1):
        # torchrun stops the other ranks as soon as one exits: none may leave before the checkpoint is written
        assert (tmp_path / f"rank{rank}.txt").read_text() == (
            f"unreadable image: /faces/broken_{where}.png, checkpoint written: True"
        )
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000002.pt"]


def test_cli_train_export_load_and_publish(faces, tmp_path, monkeypatch, capsys):
    from train.__main__ import main as cli
    from train.export import read_checkpoint

    run = tmp_path / "run"
    args = [f"data.train={faces}", f"output_dir={run}", *FAST, "train.total_iter=2", "train.ckpt_every=2"]
    args += ["train.val_every=2", "data.val_holdout=2"]
    assert cli(["train", "--config", str(TINY), *args]) == 0
    ckpt = run / "checkpoints" / "step_00000002.pt"
    assert (run / "val_log.jsonl").is_file() and list((run / "tb").iterdir())

    export_dir = tmp_path / "export"
    assert cli(["export", str(ckpt), str(export_dir), "--dataset", "my/faces", "--official-pth"]) == 0
    state = read_checkpoint(ckpt)
    generator, config = load_generator(export_dir)
    assert config.to_dict() == {
        **config.to_dict(),
        **{k: v for k, v in state["config"]["model"]["generator"].items()},
    }
    from gfp.archs import build_generator

    ema = build_generator(config)
    ema.load_state_dict(state["net_g_ema"])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(generator(x)[0], ema.eval()(x)[0], rtol=0, atol=0)
    official, _ = load_generator(export_dir / "generator_official.pth")  # official layout too
    torch.testing.assert_close(official(x)[0], generator(x)[0], rtol=0, atol=0)

    card = (export_dir / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert (
        meta["license"] == "apache-2.0"
        and meta["datasets"] == ["my/faces"]
        and "face-restoration" in meta["tags"]
    )
    metrics = {m["type"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"psnr", "ssim"}

    # dry run from the checkpoint: writes and checks the folder, contacts nobody
    dry_dir = tmp_path / "dry"
    assert (
        cli(["publish", str(ckpt), "--repo-id", "me/gfpgan-tiny", "--dry-run", "--out-dir", str(dry_dir)])
        == 0
    )
    assert {"config.json", "model.safetensors", "README.md", "training_config.yml"} <= {
        p.name for p in dry_dir.iterdir()
    }
    assert "me/gfpgan-tiny" in (dry_dir / "README.md").read_text()
    d2 = tmp_path / "d2"
    assert cli(["publish", str(run), "--repo-id", "me/x", "--dry-run", "--out-dir", str(d2)]) == 0
    assert (tmp_path / "d2" / "model.safetensors").is_file()  # a run folder: its newest checkpoint
    lone = tmp_path / "elsewhere" / "ckpt.pt"  # a checkpoint copied out of its run: exported beside it
    lone.parent.mkdir()
    lone.write_bytes(ckpt.read_bytes())
    assert cli(["publish", str(lone), "--repo-id", "me/x", "--dry-run"]) == 0
    assert (lone.parent / "ckpt_export" / "model.safetensors").is_file()
    card = (lone.parent / "ckpt_export" / "README.md").read_text()
    assert "None logged up to step 2" in card  # no run: no log
    assert cli(["publish", str(dry_dir), "--repo-id", "not a valid id!!", "--dry-run"]) == 2
    assert "is not a Hub repo id" in capsys.readouterr().err

    # a raw re-export into the folder of an --official-pth export: the card says so, no stale .pth stays,
    # and the weights are as readable as any new file (safetensors writes them 0600)
    old_umask = os.umask(0o022)
    try:
        assert cli(["export", str(ckpt), str(export_dir), "--raw"]) == 0
    finally:
        os.umask(old_umask)
    assert not (export_dir / "generator_official.pth").exists()
    assert "as\nthe raw (not the EMA) generator" in (export_dir / "README.md").read_text()
    assert (export_dir / "model.safetensors").stat().st_mode & 0o777 == 0o644

    calls = []

    class FakeApi:  # stands in for huggingface_hub.HfApi: records what would go over the network
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, private, repo_type, exist_ok):
            calls.append(("create", repo_id, private, repo_type, exist_ok))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, repo_id, repo_type, commit_message, **patterns):
            calls.append(("upload", Path(folder_path), repo_id))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert cli(["publish", str(dry_dir), "--repo-id", "me/gfpgan-tiny", "--private", "--token", "t0k"]) == 0
    assert calls == [
        ("init", "t0k"),
        ("create", "me/gfpgan-tiny", True, "model", True),
        ("upload", dry_dir, "me/gfpgan-tiny"),
    ]
    (dry_dir / "config.json").unlink()
    assert cli(["publish", str(dry_dir), "--repo-id", "me/x", "--dry-run"]) == 2
    assert "missing config.json" in capsys.readouterr().err


def test_publish_uploads_what_it_listed_and_drops_a_stale_official_pth(tmp_path, monkeypatch, capsys):
    """The upload is the files the check and the dry run list: not a killed export's hidden temporary file
    nor a sub-folder (upload_folder takes a whole tree), and an earlier export's generator_official.pth,
    of other weights, is deleted from the repo when this export has none."""
    import fnmatch

    import huggingface_hub
    from _zoo_helpers import save_tiny_generator

    from train.__main__ import main as cli

    folder = save_tiny_generator(tmp_path / "export")
    (folder / "README.md").write_text("# tiny\n")
    (folder / ".model.safetensors.1a2b3c4d.part").write_bytes(b"half a file")
    (folder / "old").mkdir()
    (folder / "old" / "model.safetensors").write_bytes(b"an older model")
    remote = {"README.md", "config.json", "model.safetensors", "generator_official.pth", ".gitattributes"}

    class HubRepo:  # applies upload_folder's patterns as huggingface_hub does (fnmatch on relative paths)
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private, repo_type, exist_ok):
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, repo_id, repo_type, commit_message, **patterns):
            allow, delete = patterns.get("allow_patterns"), patterns.get("delete_patterns") or []
            local = [
                p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()
            ]
            sent = {f for f in local if allow is None or any(fnmatch.fnmatch(f, a) for a in allow)}
            remote.difference_update(f for f in set(remote) if any(fnmatch.fnmatch(f, d) for d in delete))
            remote.update(sent)

    monkeypatch.setattr(huggingface_hub, "HfApi", HubRepo)
    assert cli(["publish", str(folder), "--repo-id", "me/tiny", "--dry-run"]) == 0
    listed = "README.md, config.json, model.safetensors"
    assert f"would upload {listed} from" in capsys.readouterr().out
    assert cli(["publish", str(folder), "--repo-id", "me/tiny"]) == 0
    assert remote == {".gitattributes", *listed.split(", ")}


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    from train.__main__ import main as cli

    assert cli(["train", "--config", str(tmp_path / "nope.yml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert cli(["train", "--config", str(TINY), f"data.train={tmp_path}"]) == 2
    assert "no images" in capsys.readouterr().err
    assert cli(["export", str(tmp_path / "missing.pt"), str(tmp_path / "o")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_fine_tune_start_and_frozen_prior_load_from_official_layout_files(faces, tmp_path):
    """``model.pretrained`` takes an official-layout .pth; ``model.prior`` fills (and freezes) the decoder."""
    from gfp.archs import GeneratorConfig, build_generator

    base = _config(faces, tmp_path / "x")
    torch.manual_seed(11)
    donor = build_generator(GeneratorConfig.from_dict(base["model"]["generator"]))
    torch.save({"params": {}, "params_ema": donor.state_dict()}, tmp_path / "official.pth")
    torch.save({"params_ema": donor.stylegan_decoder.state_dict()}, tmp_path / "prior.pth")

    tuned = Trainer(_config(faces, tmp_path / "ft", f"model.pretrained={tmp_path / 'official.pth'}"))
    for name, tensor in donor.state_dict().items():
        assert torch.equal(tuned.net_g.state_dict()[name], tensor), name
        assert torch.equal(tuned.net_g_ema.state_dict()[name], tensor), name

    prior = Trainer(
        _config(faces, tmp_path / "pr", f"model.prior={tmp_path / 'prior.pth'}", "model.fix_decoder=true")
    )
    decoder = prior.net_g.stylegan_decoder
    for name, tensor in donor.stylegan_decoder.state_dict().items():
        assert torch.equal(decoder.state_dict()[name], tensor), name
    assert not any(p.requires_grad for p in decoder.parameters())
    trainable = {id(p) for group in prior.optimizers["g"].param_groups for p in group["params"]}
    assert trainable and not any(id(p) in trainable for p in decoder.parameters())
    assert not torch.equal(
        prior.net_g.conv_body_first.weight, donor.conv_body_first.weight
    )  # U-Net stays fresh


def _donor(tmp_path: Path) -> tuple[Path, dict]:
    """A tiny clean generator saved in the official layout, and its config."""
    from _zoo_helpers import tiny_config, tiny_generator

    config = tiny_config(out_size=64)
    torch.save({"params_ema": tiny_generator(config, seed=4).state_dict()}, tmp_path / "donor.pth")
    return tmp_path / "donor.pth", config.to_dict()


def test_pretrained_layout_is_recognised_without_restating_it(tmp_path):
    from train.networks import build_training_generator

    path, donor = _donor(tmp_path)
    cfg = load_config(None, ["data.out_size=64", f"model.pretrained={path}"])
    assert cfg["model"]["generator"]["arch"] == "v1"  # the default recipe's layout, not the donor's
    net = build_training_generator(cfg)
    assert cfg["model"]["generator"] == donor  # written back: checkpoints and export see the real layout
    saved = torch.load(path, weights_only=True)["params_ema"]
    assert all(torch.equal(net.state_dict()[k], v) for k, v in saved.items())


@pytest.mark.parametrize(
    ("override", "asked", "found"),
    [
        ("model.generator.channel_multiplier=2", "channel_multiplier=2", "channel_multiplier=1"),
        ("data.out_size=128", "out_size=128", "out_size=64"),
    ],
)
def test_pretrained_that_contradicts_the_config_is_a_clear_error(tmp_path, override, asked, found):
    from train.config import ConfigError
    from train.networks import build_training_generator

    path, _ = _donor(tmp_path)
    cfg = load_config(None, ["data.out_size=64", f"model.pretrained={path}", override])
    with pytest.raises(ConfigError, match=f"is a generator with {found}, but the config asks for {asked}"):
        build_training_generator(cfg)


def test_generator_config_typo_is_an_error_naming_the_key(tmp_path):
    from train.config import ConfigError
    from train.networks import build_training_generator

    cfg = load_config(None, ["data.out_size=32"])
    cfg["model"]["generator"]["chanel_multiplier"] = 2
    with pytest.raises(ConfigError, match="unknown generator config key 'chanel_multiplier'; allowed: arch"):
        build_training_generator(cfg)


def test_identity_loss_can_start_before_the_adversarial_phase(faces, tmp_path):
    extra = ("model.identity.arch=mobilefacenet", "loss.gan_from=100", "loss.identity_from=1")
    trainer = Trainer(_config(faces, tmp_path / "run", *extra))
    first = trainer.fit(1)
    second = trainer.fit(2)
    assert "l_identity" not in first and second["l_identity"] > 0
    assert "l_g_gan" not in second  # still the reconstruction phase: only identity joined it
    plain = Trainer(_config(faces, tmp_path / "plain", *extra[:2]))
    assert "l_identity" not in plain.fit(2)  # by default identity waits for gan_from


def test_identity_from_below_one_is_a_fraction_of_the_schedule(faces, tmp_path):
    extra = ("model.identity.arch=mobilefacenet", "loss.gan_from=100", "loss.identity_from=0.5")
    trainer = Trainer(_config(faces, tmp_path / "run", *extra, "train.total_iter=4"))
    assert "l_identity" not in trainer.fit(2)  # on after step 0.5 × 4
    assert trainer.fit(3)["l_identity"] > 0
    trainer.cfg["train"]["total_iter"] = 8  # as a time budget re-sizes the schedule
    assert "l_identity" not in trainer.fit(4)


def test_identity_from_must_be_a_step_or_a_fraction(faces, tmp_path):
    for bad in ("2.5", "-1"):
        with pytest.raises(ConfigError, match="loss.identity_from must be a step or a fraction"):
            _config(faces, tmp_path / "run", f"loss.identity_from={bad}")


def test_degrade_size_is_typed_like_every_other_number(faces, tmp_path):
    assert _config(faces, tmp_path / "run", "data.degrade_size='64'")["data"]["degrade_size"] == 64
    with pytest.raises(ConfigError, match="'data.degrade_size' must be a number, got 'big'"):
        _config(faces, tmp_path / "run", "data.degrade_size=big")


def test_generator_betas_pixel_loss_and_threads_reach_the_trainer(faces, tmp_path, monkeypatch):
    from train import losses
    from train.train import run

    kinds = []
    pixel_loss = losses.pixel_loss
    monkeypatch.setattr(losses, "pixel_loss", lambda *a: kinds.append(a[3]) or pixel_loss(*a))
    threads = torch.get_num_threads()
    extra = ("optim.betas_g=[0.9, 0.99]", "loss.pixel_type=l2", "train.threads=1", "train.total_iter=1")
    try:
        trainer = run(_config(faces, tmp_path / "run", *extra), rank=0, world_size=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert trainer.optimizers["g"].param_groups[0]["betas"] == (0.9, 0.99)
    assert kinds == ["l2"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.betas_g=[0.9]", "optim.betas_g must be two numbers"),
        ("optim.betas_g=[1.0, 0.99]", "optim.betas_g must be two numbers"),
        ("loss.pixel_type=l3", "loss.pixel_type must be 'l1' or 'l2'"),
        (
            "train.threads=-1",
            "'train.threads' must be 0 \\(torch's default\\) or a number of threads, got -1",
        ),
    ],
)
def test_bad_optimiser_loss_and_thread_settings_are_named(faces, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        _config(faces, tmp_path / "run", override)


class _Clock:
    """A stand-in for time.perf_counter that advances a fixed amount per call (and can jump)."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_time_budget_sizes_the_schedule_to_end_on_time(faces, tmp_path, monkeypatch):
    """train.time_budget_min: the speed of the first steps sizes total_iter, so the cosine ends in budget."""
    import train.train as tt

    clock = _Clock(0.01)
    monkeypatch.setattr(tt.time, "perf_counter", clock)
    monkeypatch.setattr(tt, "BUDGET_PROBE", (5, 20))
    extra = ["loss.gan_from=100000", "train.total_iter=100000", "train.ckpt_every=100000"]
    extra += ["optim.schedule=cosine", "optim.warmup_iter=10", "optim.min_lr_ratio=0.1"]
    extra += ["train.time_budget_min=0.1"]  # 6 s of the fake clock
    trainer = Trainer(_config(faces, tmp_path / "run", *extra))
    trainer.fit()
    sized = trainer.cfg["train"]["total_iter"]
    assert tt.BUDGET_PROBE[1] < sized < 100000 and trainer.step == sized and trainer.sized
    assert clock.now <= 6.0 * 1.05  # the budget held: the steps after the probe took the probe's time
    lr = trainer.optimizers["g"].param_groups[0]["lr"]
    assert lr == pytest.approx(0.1 * trainer.cfg["optim"]["lr_g"], rel=1e-3)  # the schedule's end
    state = torch.load(tt.latest_checkpoint(tmp_path / "run"), weights_only=True)
    assert state["sized_total_iter"] == sized  # a resumed run keeps this schedule
    resumed = Trainer(_config(faces, tmp_path / "run", *extra))
    resumed.load_state_dict(state)
    assert resumed.cfg["train"]["total_iter"] == sized and resumed.sized
    extended = [*extra[:-1], "train.time_budget_min=null", f"train.total_iter={sized + 50}"]
    longer = Trainer(_config(faces, tmp_path / "run", *extended))  # the budget dropped: a longer run
    longer.load_state_dict(state)
    assert longer.cfg["train"]["total_iter"] == sized + 50 and not longer.sized


def test_a_budget_too_short_for_the_second_probe_is_sized_all_the_same(faces, tmp_path, monkeypatch):
    """A budget that ends before BUDGET_PROBE[1] steps (150: a minute on a CPU) never sized the schedule:
    it stopped in the warm-up with total_iter untouched. It is sized once a tenth of it is measured."""
    import train.train as tt

    clock = _Clock(0.01)
    monkeypatch.setattr(tt.time, "perf_counter", clock)
    monkeypatch.setattr(tt, "BUDGET_PROBE", (5, 10**6))  # the second probe is never reached
    extra = ["loss.gan_from=100000", "train.total_iter=100000", "train.ckpt_every=100000"]
    extra += ["optim.schedule=cosine", "optim.warmup_iter=10", "optim.min_lr_ratio=0.1"]
    extra += ["train.time_budget_min=0.1"]
    trainer = Trainer(_config(faces, tmp_path / "run", *extra))
    trainer.fit()
    assert trainer.sized and trainer.step == trainer.cfg["train"]["total_iter"] < 100000
    lr = trainer.optimizers["g"].param_groups[0]["lr"]
    assert lr == pytest.approx(0.1 * trainer.cfg["optim"]["lr_g"], rel=1e-3)  # the schedule ended


def test_time_budget_sizes_again_when_the_machine_slows_down(faces, tmp_path, monkeypatch):
    """Each BUDGET_RESIZE steps the speed since the probe sizes the schedule again: a slowdown after the
    probe shortens it, and the run still ends on time at the end of its schedule."""
    import train.train as tt

    clock = _Clock(0.01)
    monkeypatch.setattr(tt.time, "perf_counter", clock)
    monkeypatch.setattr(tt, "BUDGET_PROBE", (5, 20))
    monkeypatch.setattr(tt, "BUDGET_RESIZE", 5)
    extra = ["loss.gan_from=100000", "train.total_iter=100000", "train.ckpt_every=100000"]
    extra += ["train.time_budget_min=0.1"]
    trainer = Trainer(_config(faces, tmp_path / "run", *extra))
    real_step, sizes = trainer.train_step, []

    def slower(batch):  # each step after the probe takes 0.05 s more than the probe's steps did
        if trainer.step > tt.BUDGET_PROBE[1]:
            clock.now += 0.05
        sizes.append(trainer.cfg["train"]["total_iter"])
        return real_step(batch)

    monkeypatch.setattr(trainer, "train_step", slower)
    trainer.fit()
    first = sizes[tt.BUDGET_PROBE[1] + 1]
    assert trainer.step == trainer.cfg["train"]["total_iter"] < first < 100000  # sized down after the probe
    assert clock.now <= 6.0 * 1.1


def test_time_budget_stops_the_loop_when_spent(faces, tmp_path, monkeypatch):
    """Steps slower than the last sizing foresaw still stop at the budget, with a checkpoint (sizing only
    once here, so that the slowdown is not caught by the next sizing)."""
    import train.train as tt

    clock = _Clock(0.01)
    monkeypatch.setattr(tt.time, "perf_counter", clock)
    monkeypatch.setattr(tt, "BUDGET_PROBE", (5, 20))
    monkeypatch.setattr(tt, "BUDGET_RESIZE", 10**9)
    extra = ["loss.gan_from=100000", "train.total_iter=100000", "train.ckpt_every=100000"]
    extra += ["train.time_budget_min=0.1"]
    trainer = Trainer(_config(faces, tmp_path / "run", *extra))
    real_step = trainer.train_step

    def slower(batch):  # each step after the probe takes 0.2 s more than the probe's steps did
        if trainer.step > tt.BUDGET_PROBE[1]:
            clock.now += 0.2
        return real_step(batch)

    monkeypatch.setattr(trainer, "train_step", slower)
    trainer.fit()
    assert tt.BUDGET_PROBE[1] < trainer.step < trainer.cfg["train"]["total_iter"]
    assert tt.latest_checkpoint(tmp_path / "run").name == f"step_{trainer.step:08d}.pt"


@pytest.mark.parametrize(("detail", "loss_size"), [("false", 16), ("true", 32)])
def test_pixel_loss_sees_what_a_work_size_model_can_change(faces, tmp_path, monkeypatch, detail, loss_size):
    """Layers at work_size change only what survives area averaging to it, so the pixel loss compares at
    that size; with the detail path they change every pixel, and the loss sees them all (folded into
    channels, so it counts the pixels of one face, not its side)."""
    from train import losses
    from train.train import run

    sizes = []
    pixel_loss = losses.pixel_loss
    monkeypatch.setattr(
        losses, "pixel_loss", lambda *a: sizes.append(round((a[0][0].numel() / 3) ** 0.5)) or pixel_loss(*a)
    )
    extra = (
        "model.generator.input_residual=true",
        "model.generator.work_size=16",
        f"model.generator.detail={detail}",
        "train.total_iter=1",
    )
    trainer = run(_config(faces, tmp_path / "run", *extra), rank=0, world_size=1)
    assert sizes == [loss_size]
    assert hasattr(trainer.net_g, "detail_in") == (detail == "true")


def test_model_card_names_every_training_folder():
    cfg = copy.deepcopy(DEFAULTS)
    cfg["data"] |= {"train": "faces/hq", "extra_train": ["runs/photo-faces"]}
    data_line = next(line for line in model_card(cfg, 10, {}).splitlines() if line.startswith("- data:"))
    assert "`faces/hq`" in data_line and "`runs/photo-faces`" in data_line, data_line


def test_an_export_publishes_no_local_paths(faces, tmp_path):
    """The card and training_config.yml go to the Hub: absolute and home paths (folders, user names) are
    cut to their last part and named in a comment; relative paths and model names stay as they were."""
    from gfp.archs import GeneratorConfig, build_generator
    from train.export import export

    run = tmp_path / "home" / "alice" / "runs" / "tiny"
    cfg = _config(
        faces, run, "data.extra_train=[more/faces, ~/photos/crops]", "model.prior=/srv/alice/sg2.pth"
    )
    net = build_generator(GeneratorConfig.from_dict(cfg["model"]["generator"]))
    ckpt = run / "checkpoints" / "step_00000010.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"step": 10, "config": cfg, "net_g_ema": net.state_dict()}, ckpt)
    out = export(run, tmp_path / "export")
    card = (out / "README.md").read_text()
    text = (out / "training_config.yml").read_text()
    for leak in (str(tmp_path), "alice", "~"):
        assert leak not in card + text, leak
    data_line = next(line for line in card.splitlines() if line.startswith("- data:"))
    assert data_line.startswith(f"- data: `{faces.name}`, `more/faces`, `crops`"), data_line
    assert "StyleGAN2 prior: sg2.pth" in card
    public = yaml.safe_load(text)
    assert public["data"]["train"] == faces.name and public["output_dir"] == "tiny"
    assert public["data"]["extra_train"] == ["more/faces", "crops"]
    assert public["model"]["identity"] == cfg["model"]["identity"]  # names, not paths: kept
    assert text.startswith("# Local paths cut to their last part")
    assert "folders: output_dir, data.train, data.extra_train, model.prior\n" in text
    assert load_config(out / "training_config.yml")["data"]["train"] == faces.name  # still a config


def test_publish_refuses_a_folder_that_names_local_paths(tmp_path, monkeypatch, capsys):
    """A folder exported before export cut local paths (or edited since) is checked too: publish refuses
    it, naming the keys and the card's home folder, before anything is uploaded."""
    from _zoo_helpers import save_tiny_generator

    from train.__main__ import main as cli

    folder = save_tiny_generator(tmp_path / "export")
    (folder / "README.md").write_text("# tiny\n")
    (folder / "training_config.yml").write_text(yaml.safe_dump({"data": {"train": "faces"}}))
    assert cli(["publish", str(folder), "--repo-id", "me/tiny", "--dry-run"]) == 0
    capsys.readouterr()
    home = tmp_path / "home" / "alice"
    monkeypatch.setenv("HOME", str(home))
    (folder / "README.md").write_text(f"# tiny\n- data: `{home}/faces`\n")
    (folder / "training_config.yml").write_text(yaml.safe_dump({"data": {"train": "/data/faces"}}))
    assert cli(["publish", str(folder), "--repo-id", "me/tiny", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not ready to publish: training_config.yml has absolute paths " in err
    assert "(data.train); README.md names the home folder " + str(home) in err
    assert "export it again" in err and "would upload" not in err


def test_a_run_is_kept_and_ctrl_c_checkpoints_its_last_step(
    faces, tmp_path, monkeypatch, capsys, caplog, request
):
    """A run always ends with a checkpoint (even with ckpt_every=0); a new run over it is refused, not
    mixed in; a Ctrl-C stops after the current step with its checkpoint, and --resume auto continues."""
    import os
    import signal

    from train.__main__ import main as cli

    run = tmp_path / "run"
    base = ["train", "--config", str(TINY), f"data.train={faces}", f"output_dir={run}", *FAST]
    assert cli([*base, "train.total_iter=2"]) == 0
    ckpts = run / "checkpoints"
    assert [p.name for p in ckpts.iterdir()] == ["step_00000002.pt"]
    kept = (ckpts / "step_00000002.pt").read_bytes()
    assert cli([*base, "train.total_iter=4"]) == 2
    assert "already holds a run (newest checkpoint step_00000002.pt)" in capsys.readouterr().err
    assert [p.name for p in ckpts.iterdir()] == ["step_00000002.pt"]
    assert (ckpts / "step_00000002.pt").read_bytes() == kept

    real = Trainer.train_step

    def step_then_ctrl_c(self, batch):
        logs = real(self, batch)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as a user's Ctrl-C: handled between steps
        return logs

    monkeypatch.setattr(Trainer, "train_step", step_then_ctrl_c)
    # as in a terminal: a test run started in the background by a shell has SIGINT ignored, and a run keeps
    # ignoring what it was started ignoring
    at_start = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, at_start))
    previous = signal.getsignal(signal.SIGINT)
    assert cli([*base, "--resume", "auto", "train.total_iter=10"]) == 130  # overrides after --resume too
    assert signal.getsignal(signal.SIGINT) is previous  # the handler is put back
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_00000002.pt", "step_00000003.pt"]
    assert "interrupted" in capsys.readouterr().err
    assert "settings other than the checkpoint's (train.total_iter: 2 → 10)" in caplog.text
    monkeypatch.setattr(Trainer, "train_step", real)
    assert cli([*base, "train.total_iter=4", "--resume", "auto"]) == 0
    assert (ckpts / "step_00000004.pt").is_file()


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_checkpoint_the_step_like_ctrl_c(faces, tmp_path, monkeypatch, capsys, name):
    """A scheduler's, docker's or systemd's SIGTERM (or a closed terminal's SIGHUP) stops after the current
    step with its checkpoint and exit 130; sent twice (torchrun forwards it), it still does."""
    import os
    import signal

    from train.__main__ import main as cli

    sig = getattr(signal, name)
    real = Trainer.train_step

    def step_then_signal(self, batch):
        logs = real(self, batch)
        if self.step == 2:
            os.kill(os.getpid(), sig)
            os.kill(os.getpid(), sig)
        return logs

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    previous = signal.getsignal(sig)
    run = tmp_path / "run"
    args = ["train", "--config", str(TINY), f"data.train={faces}", f"output_dir={run}", *FAST]
    assert cli([*args, "train.total_iter=10"]) == 130
    assert signal.getsignal(sig) is previous
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000002.pt"]
    assert "interrupted" in capsys.readouterr().err


def test_a_sighup_the_process_was_started_ignoring_stays_ignored(faces, tmp_path, monkeypatch):
    """`nohup python -m train ...` ignores SIGHUP: logging out must not stop the run."""
    import signal

    from train.__main__ import main as cli

    real = Trainer.train_step

    def step_then_hangup(self, batch):
        logs = real(self, batch)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGHUP)
        return logs

    monkeypatch.setattr(Trainer, "train_step", step_then_hangup)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        run = tmp_path / "run"
        args = ["train", "--config", str(TINY), f"data.train={faces}", f"output_dir={run}", *FAST]
        assert cli([*args, "train.total_iter=4"]) == 0
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000004.pt"]
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_closed_terminal_stops_the_run_with_its_checkpoint(faces, tmp_path):
    """The hangup of a closed terminal: the run's next log line would fail with EIO (writing to the gone
    terminal) and kill it before its checkpoint; it stops after the step, checkpointed, exit 130."""
    import pty
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    args = [sys.executable, "-m", "train", "train", "--config", str(TINY), f"data.train={faces}"]
    args += [f"output_dir={run}", *FAST, "train.log_every=1", "train.total_iter=100000"]
    master, terminal = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(args, stdin=terminal, stdout=terminal, stderr=terminal, cwd=ROOT, env=env)
    os.close(terminal)
    seen, deadline = b"", time.monotonic() + 120
    while not re.search(rb"step \d+: l_", seen) and time.monotonic() < deadline:
        try:
            seen += os.read(master, 4096)  # until a log line is written: the loop is running
        except OSError:
            break
    proc.send_signal(signal.SIGHUP)  # the hangup, as the terminal goes away
    os.close(master)
    assert proc.wait(timeout=120) == 130, seen[-2000:]
    assert any((run / "checkpoints").glob("step_*.pt"))


def _training_process(faces: Path, run: Path, *overrides: str, patch: str = "") -> tuple[list[str], dict]:
    """The command line and environment of a training process on the tiny config, as a user starts one;
    ``patch``: Python run first, with ``train.train`` as ``t`` (a slow read, a failing step)."""
    import sys

    script = f"import sys, train.train as t\n{patch}sys.exit(t.main(sys.argv[1:]))\n"
    args = [sys.executable, "-c", script, "--config", str(TINY), f"data.train={faces}", f"output_dir={run}"]
    return [*args, *FAST, *overrides], {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.parametrize(("presses", "stuck"), [(1, False), (2, True)])
def test_ctrl_c_while_a_batch_is_loading_stops_cleanly(faces, tmp_path, presses, stuck):
    """A terminal's Ctrl-C reaches the whole process group, loader workers too, which had the training
    process's handler: each worker said "stopping after this step" as well, and a second press ended the
    workers as the loop waited for their batch (at times "DataLoader worker exited unexpectedly", a
    traceback). The workers leave stopping to the training process: one press checkpoints, two stop at
    once, also with a worker stuck in a read (it ignores the signals, so it is killed: the exit waited for
    it); the message is said once, and both end with "interrupted" and exit 130."""
    import signal
    import subprocess

    patch = (
        "import time, train.data as d\n"
        "real, reads = d.FaceDegradationDataset.__getitem__, []\n"
        "def slow(self, item):\n"
        "    reads.append(item)  # slow storage, or (stuck) a read that never ends after two batches\n"
        f"    time.sleep(3600 if {stuck} and len(reads) > 4 else 1.5)\n"
        "    return real(self, item)\n"
        "d.FaceDegradationDataset.__getitem__ = slow\n"
    )
    run = tmp_path / "run"
    overrides = ["data.num_workers=1", "train.log_every=1", "train.total_iter=1000"]
    args, env = _training_process(faces, run, *overrides, patch=patch)
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        seen = b""
        while b"step 2:" not in seen:  # (each step waits 3 s for its batch: the loop is running)
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
        time.sleep(0.5)  # the loop is waiting for the next batch
        for _ in range(presses):
            os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends it: to every process of the group
            time.sleep(0.3)
        rest = proc.communicate(timeout=60)[0]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a run that hung, and its workers, go with the test
    output = (seen + rest).decode(errors="replace")
    assert proc.returncode == 130, output[-3000:]
    assert "Traceback" not in output and output.rstrip().endswith("interrupted"), output[-3000:]
    assert output.count("Ctrl-C: stopping after this step") == 1, output[-3000:]  # not once per worker
    assert any((run / "checkpoints").glob("step_*.pt")) == (presses == 1)


def test_an_unexpected_error_with_loader_workers_ends_the_process(faces, tmp_path):
    """An error other than a data error (a bug, memory) left the loop's frame, and so the loader's
    workers, alive with its traceback until the exit, where waiting for the workers (which ignore
    SIGTERM) hung the process for ever after printing the traceback."""
    import subprocess

    patch = "def fail(self, batch): raise RuntimeError('no memory')\nt.Trainer.train_step = fail\n"
    args, env = _training_process(faces, tmp_path / "run", "data.num_workers=1", patch=patch)
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "RuntimeError: no memory" in done.stderr, done.stderr[-2000:]


def test_resume_drops_the_log_records_of_steps_trained_again(faces, tmp_path):
    """Resumed from a checkpoint older than the last logged step, the steps after it are trained again: their
    earlier log records are dropped, so train_log.jsonl holds each step once, in order."""
    import json

    from train.__main__ import main as cli

    run = tmp_path / "run"
    fast = [a for a in FAST if not a.startswith(("train.log_every", "train.ckpt_every"))]
    base = ["train", "--config", str(TINY), f"data.train={faces}", f"output_dir={run}", *fast]
    base += ["train.log_every=1", "train.ckpt_every=2", "train.keep_checkpoints=5"]
    assert cli([*base, "train.total_iter=3"]) == 0
    log_file = run / "train_log.jsonl"
    assert [json.loads(line)["step"] for line in log_file.read_text().splitlines()] == [1, 2, 3]
    older = run / "checkpoints" / "step_00000002.pt"
    assert cli([*base, "--resume", str(older), "train.total_iter=4"]) == 0
    assert [json.loads(line)["step"] for line in log_file.read_text().splitlines()] == [1, 2, 3, 4]


def test_a_checkpoint_that_cannot_be_written_is_a_one_line_error_and_leaves_no_part(
    faces, tmp_path, monkeypatch, capsys
):
    """A full disk fails torch.save part-way ("unexpected pos"): the run says so in one line, naming the
    checkpoint kept, and deletes its half-written file, which would hold the space. A part file left by a
    run killed while saving (kill -9) goes at the next save."""
    from train.__main__ import main as cli

    run = tmp_path / "run"
    args = ["train", "--config", str(TINY), f"data.train={faces}", f"output_dir={run}", *FAST]
    assert cli([*args, "train.total_iter=1", "train.ckpt_every=1"]) == 0
    folder = run / "checkpoints"
    killed = folder / ".step_00000001.pt.0dead000.part"  # a save killed outright (kill -9), long ago
    killed.write_bytes(b"\0" * 64)
    os.utime(killed, (0, 0))
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        Path(f).write_bytes(b"\0" * 64)  # part of the file went out before the disk filled
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 18134208 vs 18134096")

    monkeypatch.setattr(torch, "save", full_disk)
    assert cli([*args, "--resume", "auto", "train.total_iter=2", "train.ckpt_every=1"]) == 2
    err = capsys.readouterr().err
    assert "cannot write the checkpoint" in err and "the newest one kept is step_00000001.pt" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in folder.iterdir()) == ["step_00000001.pt"]
    monkeypatch.setattr(torch, "save", real_save)
    assert cli([*args, "--resume", "auto", "train.total_iter=2", "train.ckpt_every=1"]) == 0


def test_a_fresh_run_drops_the_logs_of_a_run_that_left_no_checkpoint(faces, tmp_path, caplog):
    """A run that died before its first checkpoint left logs: a new run into its folder starts fresh logs
    (it was appending: steps 5, 10, 1, 2), so export cannot show the dead run's metrics."""
    import json

    from train.__main__ import main as cli

    run = tmp_path / "run"
    run.mkdir()
    (run / "train_log.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (5, 10)))
    (run / "val_log.jsonl").write_text(json.dumps({"step": 5, "psnr": 99.0}) + "\n")
    fast = [a for a in FAST if not a.startswith("train.log_every")]
    args = ["train", "--config", str(TINY), f"data.train={faces}", f"output_dir={run}", *fast]
    with caplog.at_level("INFO"):
        assert cli([*args, "train.log_every=1", "train.total_iter=2"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert (run / "val_log.jsonl").read_text() == ""
    assert "dropped 2 records of an earlier run that left no checkpoint" in caplog.text


def test_training_mistakes_are_one_line_errors(faces, tmp_path, capsys, caplog):
    """A checkpoint that is no checkpoint, one of another model, a device that is not there, an
    output_dir that is a file, an unreadable image, faces that are not square: one
    ``error:`` line, exit 2. Faces stored at another size than the training size are noted."""
    from train.__main__ import main as cli

    run = tmp_path / "run"
    base = ["train", "--config", str(TINY), f"data.train={faces}", *FAST, "train.total_iter=1"]
    with caplog.at_level("INFO"):
        assert cli([*base, f"output_dir={run}"]) == 0
    assert "faces are stored at 64x64 and resized to 32 px at every read" in caplog.text
    capsys.readouterr()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    (tmp_path / "a-file").write_bytes(b"")
    broken = tmp_path / "broken"
    broken.mkdir()
    for src in faces.iterdir():
        (broken / src.name).symlink_to(src)
    (broken / "._x.png").write_bytes(b"junk")  # a macOS resource file beside the faces
    wide = tmp_path / "wide"
    wide.mkdir()
    for src in faces.iterdir():  # photos rather than aligned faces: squeezing them would distort them
        cv2.imwrite(str(wide / src.name), cv2.imread(str(src))[:48])
    cases = [
        ([f"output_dir={tmp_path / 'r1'}", "--resume", str(junk)], "cannot resume: .*junk.pt is not a"),
        (
            [f"output_dir={tmp_path / 'r2'}", "model.generator.narrow=0.125", "--resume",
             str(run / "checkpoints" / "step_00000001.pt")],
            "cannot resume from .*: its networks do not fit this config's model "
            r"\(model.generator.narrow: 0.0625 → 0.125\); a checkpoint continues only the model it was",
        ),
        ([f"output_dir={tmp_path / 'r3'}", "device=gpu"], "device: "),
        ([f"output_dir={tmp_path / 'a-file'}"], "is a file, not a folder"),
        ([f"output_dir={tmp_path / 'r4'}", f"data.train={broken}"], r"unreadable image\(s\).*: .*_x.png$"),
        ([f"output_dir={tmp_path / 'r5'}", f"data.train={wide}"], r"64x48 and \d+ more, not square aligned"),
    ]  # fmt: skip
    for extra, message in cases:
        assert cli([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and re.search(message, lines[0]), err[-2000:]
        assert "Traceback" not in err, err[-2000:]


def test_the_data_is_checked_before_any_network_is_built(faces, tmp_path, monkeypatch):
    """A config without data.train tried to download ArcFace first, and a missing or empty folder was said
    only after every network was built: the data is checked before any network or weight."""
    import train.train as training
    from train.data import write_lmdb

    def built(*args, **kwargs):
        raise AssertionError("a network was built before the data was checked")

    for name in ("build_training_generator", "build_discriminators", "build_identity", "build_vgg"):
        monkeypatch.setattr(training, name, built)
    with pytest.raises(ConfigError, match="data.train is not set"):
        Trainer(load_config(None, [f"output_dir={tmp_path / 'run'}"]))  # the official recipe, ArcFace too
    (tmp_path / "empty").mkdir()
    oblong = tmp_path / "oblong"
    oblong.mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(oblong / name), np.zeros((64, 64 if name == "a.png" else 48, 3), np.uint8))
    db = write_lmdb([*sorted(faces.iterdir()), oblong / "b.png"], tmp_path / "oblong.lmdb")  # another tool's
    for folder, message in (
        (tmp_path / "empty", "no images"),
        (tmp_path / "nope", "image folder not found"),
        (oblong, "b.png is 48x64, not a square aligned face"),  # was found at its first read
        (db, "oblong.lmdb:b is 48x64, not a square aligned face"),  # so was an lmdb's entry, mid-run
    ):
        with pytest.raises(DataError, match=message):
            Trainer(_config(folder, tmp_path / "run"))


def test_unreadable_images_are_named_before_training(faces, tmp_path, capsys):
    """A text file named .png and a PNG cut short, in the training or the validation folder: one line that
    names them, before any step; a PNG with bytes after its end is an image."""
    from train.__main__ import main as cli

    train, val = tmp_path / "train", tmp_path / "val"
    for folder in (train, val):
        folder.mkdir()
        for src in faces.iterdir():
            (folder / src.name).write_bytes(src.read_bytes())
    (train / "00000.png").write_bytes((faces / "00000.png").read_bytes() + b"trailing")
    (train / "text.png").write_text("not an image")
    (val / "cut.png").write_bytes((faces / "00001.png").read_bytes()[:-40])
    base = ["train", "--config", str(TINY), *FAST, "train.total_iter=1"]
    assert cli([*base, f"data.train={train}", f"output_dir={tmp_path / 'a'}"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"^error: unreadable image\(s\), remove or replace them: \S*text.png$", err, re.M), err
    assert cli([*base, f"data.train={faces}", f"data.val={val}", f"output_dir={tmp_path / 'b'}"]) == 2
    assert re.search(r"unreadable image\(s\).*: \S*cut.png$", capsys.readouterr().err, re.M)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_lmdbs_unreadable_or_missing_entries_are_named_before_training(faces, tmp_path, capsys):
    """An lmdb was not checked up front: an entry cut short, or a key its meta_info.txt lists that the
    database lacks, failed when first sampled, maybe hours in. A PNG larger than the bytes first looked at
    is judged by its end too: with bytes after its end it is an image, cut short it is not."""
    import lmdb

    from train.__main__ import main as cli
    from train.data import write_lmdb

    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), np.uint8)  # a PNG of about 200 KB
    large = [tmp_path / "large.png", tmp_path / "cut.png"]
    for path in large:
        cv2.imwrite(str(path), noise)
    db = write_lmdb([*sorted(faces.iterdir()), *large], tmp_path / "faces.lmdb")
    with lmdb.open(str(db)) as env, env.begin(write=True) as txn:
        txn.put(b"00001", (faces / "00001.png").read_bytes()[:-40])
        txn.put(b"large", large[0].read_bytes() + b"trailing")
        txn.put(b"cut", large[1].read_bytes()[:-40])
        txn.delete(b"00002")
    args = ["train", "--config", str(TINY), *FAST, "train.total_iter=1", f"data.train={db}"]
    assert cli([*args, f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    named = r"\S*faces.lmdb:00001, \S*faces.lmdb:00002, \S*faces.lmdb:cut"
    assert re.search(rf"^error: unreadable image\(s\), remove or replace them: {named}$", err, re.M), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_a_run_trains_and_validates_from_an_lmdb(faces, tmp_path, workers):
    """Each dataset opened its own lmdb environment, which lmdb refuses twice in one process: training
    from an lmdb failed at the first validation on its held-out faces (no loader worker) or at the first
    batch (a worker forked after the run had read the first face)."""
    from train.data import write_lmdb

    db = write_lmdb(sorted(faces.iterdir()), tmp_path / "faces.lmdb")
    run = tmp_path / "run"
    trainer = Trainer(
        load_config(TINY, [f"data.train={db}", f"output_dir={run}", *FAST, f"data.num_workers={workers}"])
    )
    trainer.fit(1)
    assert trainer.step == 1
    assert {"psnr", "ssim"} <= set(trainer.validate())


def test_validating_on_the_folder_an_lmdb_was_made_from_is_warned(faces, tmp_path, caplog):
    """A folder that shares faces with the training folder is refused, but an lmdb has no paths to compare:
    given the folder it was made from as data.val, the run validated on trained faces without a word."""
    from train.data import write_lmdb

    db = write_lmdb(sorted(faces.iterdir()), tmp_path / "faces.lmdb")
    other = tmp_path / "other"
    other.mkdir()
    (other / "unseen.png").write_bytes((faces / "00000.png").read_bytes())
    for val, warned in ((faces, True), (other, False)):
        caplog.clear()
        with caplog.at_level("WARNING"):
            Trainer(load_config(TINY, [f"data.train={db}", f"data.val={val}", "data.val_holdout=0", *FAST]))
        assert ("named like faces trained on from faces.lmdb" in caplog.text) is warned, caplog.text


@pytest.mark.parametrize(("broken", "workers"), [("training", 1), ("validation", 0)])
def test_an_image_that_fails_mid_run_keeps_the_steps_done(
    faces, tmp_path, monkeypatch, capsys, broken, workers
):
    """An image that passed the check but cannot be decoded when sampled (or validated): the steps done
    are checkpointed before the one-line error, so --resume auto loses none of them."""
    from train.__main__ import main as cli

    train = tmp_path / "train"
    train.mkdir()
    for src in faces.iterdir():
        (train / src.name).write_bytes(src.read_bytes())
    held_out = sorted(train.iterdir())[-2:]  # tiny_cpu holds out the last two
    real = Trainer.train_step

    def step_then_break(self, batch):
        logs = real(self, batch)
        if self.step == 2:
            for path in sorted(train.iterdir()) if broken == "training" else held_out:
                path.write_bytes(path.read_bytes()[:100] + bytes(400) + path.read_bytes()[500:])
        return logs

    monkeypatch.setattr(Trainer, "train_step", step_then_break)
    run = tmp_path / "run"
    args = ["train", "--config", str(TINY), f"data.train={train}", f"output_dir={run}", *FAST]
    args += ["train.total_iter=10", f"data.num_workers={workers}", "train.val_every=3"]
    assert cli(args) == 2
    # the loader's workers are gone: one kept alive (by a reference cycle through the error) ignores
    # SIGTERM and hangs the interpreter's exit
    assert multiprocessing.active_children() == []
    err = capsys.readouterr().err
    assert "unreadable image: " in err and "Traceback" not in err, err[-2000:]
    steps = [int(p.stem.split("_")[1]) for p in (run / "checkpoints").iterdir()]
    assert len(steps) == 1 and steps[0] >= (3 if broken == "validation" else 2), steps


def test_the_run_counts_its_faces_and_says_subfolders_are_not_searched(faces, tmp_path, caplog):
    """2 faces in a folder and 6 in a subfolder trained on 2 without a word; a folder with only subfolders
    was 'no images' without saying why."""
    from train.data import DataError, list_images

    top = tmp_path / "top"
    (top / "more").mkdir(parents=True)
    for i, src in enumerate(sorted(faces.iterdir())):
        (top / src.name if i < 3 else top / "more" / src.name).write_bytes(src.read_bytes())
    with caplog.at_level("INFO"):
        trainer = Trainer(_config(faces, tmp_path / "run", f"data.train={top}", "data.val_holdout=1"))
    assert len(trainer.train_set) == 2
    assert f"training on 2 faces from {top}; validating on 1 faces" in caplog.text
    assert "its subfolders more hold images, which are not searched" in caplog.text
    nested = tmp_path / "nested" / "more"
    nested.mkdir(parents=True)
    (nested / "a.png").write_bytes((faces / "00000.png").read_bytes())
    with pytest.raises(DataError, match=r"no images .* \(subfolders are not searched: more hold images\)"):
        list_images(nested.parent)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images .* \(subfolders are not searched\)"):
        list_images(tmp_path / "empty")


def test_validation_faces_must_be_held_out(faces, tmp_path, caplog):
    """data.val = data.train validated on training faces under a card that says 'held-out'; data.val with
    data.val_holdout dropped training faces without a word."""
    with pytest.raises(ConfigError, match=r"data.val .* holds only training faces \(e.g. 00000.png\)"):
        Trainer(_config(faces, tmp_path / "run", f"data.val={faces}", "data.val_holdout=0"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "00007.png").symlink_to(faces / "00007.png")  # the same file through a link
    (mixed / "other.png").write_bytes((faces / "00000.png").read_bytes())
    with pytest.raises(ConfigError, match="shares 1 of its 2 faces with the training faces"):
        Trainer(_config(faces, tmp_path / "run", f"data.val={mixed}", "data.val_holdout=0"))
    with caplog.at_level("WARNING"):  # 00007 is held out now, so not trained on
        Trainer(_config(faces, tmp_path / "run", f"data.val={mixed}", "data.val_holdout=3"))
    warned = "data.val_holdout=3 holds the last 3 training faces out, but validation uses data.val"
    assert warned in caplog.text


def test_resting_discriminators_schedules_wait_without_a_warning(faces, tmp_path):
    """Before loss.gan_from the discriminators' optimisers do not step: their schedulers stepped anyway,
    and PyTorch warned 'lr_scheduler.step() before optimizer.step()' on every such run. Once they step,
    their learning rate follows the global step, as the generator's."""
    import warnings

    extra = ("loss.gan_from=3", "optim.warmup_iter=10")
    trainer = Trainer(_config(faces, tmp_path / "run", *extra))
    used: dict[str, dict[int, float]] = {"g": {}, "d": {}}  # each one's rate at its steps, / its base

    def recorder(key: str):  # noqa: ANN202
        base = trainer.cfg["optim"][f"lr_{key}"]
        return lambda optimizer, args, kwargs: used[key].update(
            {trainer.step: optimizer.param_groups[0]["lr"] / base}
        )

    for key in used:
        trainer.optimizers[key].register_step_pre_hook(recorder(key))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(5)
    # its first step (4) has that step's rate, the generator's, not the one it had when the run began
    assert list(used["d"]) == [4, 5] and used["d"] == pytest.approx({k: used["g"][k] for k in (4, 5)})
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)], [
        str(w.message) for w in caught
    ]
    for key, base in (("g", trainer.cfg["optim"]["lr_g"]), ("d", trainer.cfg["optim"]["lr_d"])):
        assert trainer.optimizers[key].param_groups[0]["lr"] == pytest.approx(base * 0.6), key  # step 5 of 10
