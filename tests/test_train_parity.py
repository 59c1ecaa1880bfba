"""Our trainer and dataset against the official GFPGAN training code (the installed gfpgan/basicsr).

1. One training step: our ``Trainer.train_step`` and the official ``GFPGANModel.optimize_parameters``, built
   from the same recipe (small networks, random weights copied into both), on the same batch: every logged
   loss and every parameter of the generator, the discriminators and the EMA generator after the step.
2. The training pairs: our dataset and the official ``FFHQDegradationDataset`` on a real face.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from torch import Tensor, nn

import gfp  # noqa: F401  (torchvision shim before basicsr/gfpgan)
from train.config import load_config
from train.data import template_components
from train.train import Trainer

SIZE = 32
PARTS = ("left_eye", "right_eye", "mouth")
# Our recipe made small: sizes, widths and random frozen networks only. Every loss weight, the schedule,
# the R1 interval and the EMA decay stay our defaults, which must equal the official recipe below.
SMALL = [
    f"data.out_size={SIZE}",
    "data.batch_size=2",
    "data.num_workers=0",
    "model.generator={arch: clean, channel_multiplier: 1, narrow: 0.125, num_style_feat: 64, num_mlp: 8}",
    "model.discriminator={channel_multiplier: 1, narrow: 0.125}",
    "model.identity.weights=null",
    "model.vgg_weights=null",
]
# The first iteration, then (resumed, as from a checkpoint) the official schedule's first milestone: 600k is
# an R1 step (every 16th) and past the pyramid loss's removal (50k); 600001 takes the halved learning rate.
ITERATIONS = (1, 600_000, 600_001)
TOLERANCE = 1e-5  # relative: losses, and each parameter tensor against its largest value


def _official_options() -> dict:
    """options/train_gfpgan_v1.yml of the official repository as basicsr parses it, with the networks made
    small (the clean generator, narrow) and no pretrained files."""
    g = dict(type="GFPGANv1Clean", out_size=SIZE, num_style_feat=64, channel_multiplier=1)
    g |= dict(decoder_load_path=None, fix_decoder=True, num_mlp=8, input_is_latent=True, different_w=True)
    g |= dict(narrow=0.125, sft_half=True)
    layers = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1, "conv4_4": 1, "conv5_4": 1}
    return {
        "is_train": True,
        "dist": False,
        "num_gpu": 0,
        "network_g": g,
        "network_d": dict(type="StyleGAN2Discriminator", out_size=SIZE, channel_multiplier=1, narrow=0.125),
        **{f"network_d_{p}": {"type": "FacialComponentDiscriminator"} for p in PARTS},
        "network_identity": dict(type="ResNetArcFace", block="IRBlock", layers=[2, 2, 2, 2], use_se=False),
        "path": {"pretrain_network_g": None, "pretrain_network_d": None, "pretrain_network_identity": None},
        "train": {
            "optim_g": {"type": "Adam", "lr": 2e-3},
            "optim_d": {"type": "Adam", "lr": 2e-3},
            "optim_component": {"type": "Adam", "lr": 2e-3},
            "scheduler": {"type": "MultiStepLR", "milestones": [600000, 700000], "gamma": 0.5},
            "total_iter": 800000,
            "warmup_iter": -1,
            "pixel_opt": {"type": "L1Loss", "loss_weight": 0.1, "reduction": "mean"},
            "L1_opt": {"type": "L1Loss", "loss_weight": 1, "reduction": "mean"},
            "pyramid_loss_weight": 1,
            "remove_pyramid_loss": 50000,
            "perceptual_opt": dict(
                type="PerceptualLoss",
                layer_weights=layers,
                vgg_type="vgg19",
                use_input_norm=True,
                perceptual_weight=1.0,
                style_weight=50,
                range_norm=True,
                criterion="l1",
            ),  # fmt: skip
            "gan_opt": {"type": "GANLoss", "gan_type": "wgan_softplus", "loss_weight": 0.1},
            "r1_reg_weight": 10,
            "gan_component_opt": dict(
                type="GANLoss", gan_type="vanilla", real_label_val=1.0, fake_label_val=0.0, loss_weight=1.0
            ),
            "comp_style_weight": 200,
            "identity_weight": 10,
            "net_d_iters": 1,
            "net_d_init_iters": 0,
            "net_d_reg_every": 16,
        },
    }


def _faces(folder: Path) -> Path:
    """Two smooth random images: the trainer needs a data folder; the batch comes from its dataset."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(2):
        img = cv2.resize(rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8), (SIZE, SIZE))
        cv2.imwrite(str(folder / f"{i:05d}.png"), img)
    return folder


def _official_model(monkeypatch: pytest.MonkeyPatch):
    """GFPGANModel from the official options, with only what cannot run here replaced."""
    import basicsr.archs.vgg_arch as vgg_arch
    from gfpgan.models.gfpgan_model import GFPGANModel
    from torchvision.models.vgg import cfgs, make_layers

    # Its VGG19 is torchvision's with ImageNet weights (a download): the same layers, weights copied later.
    vgg19 = lambda pretrained: SimpleNamespace(features=make_layers(cfgs["E"]))  # noqa: E731
    monkeypatch.setattr(vgg_arch, "vgg", SimpleNamespace(vgg19=vgg19))
    # basicsr passes beta1 as the int 0 (0**ratio), which today's torch refuses: the same betas as floats.
    adam = lambda self, kind, params, lr, betas: torch.optim.Adam(params, lr, betas=tuple(map(float, betas)))  # noqa: E731
    monkeypatch.setattr(GFPGANModel, "get_optimizer", adam)
    model = GFPGANModel(_official_options())
    # Below 512 px the official crops are int(size / 512) = 0 px (it trains at 512 only): it takes ours
    # (80 and 120 px scaled to the face, at least 10), its crops' values unscaled, as at 512.
    model.opt["network_g"]["out_size"] = 512
    eye, mouth = max(10, round(80 * SIZE / 512)), max(10, round(120 * SIZE / 512))
    monkeypatch.setattr(model, "get_roi_regions", lambda **_: GFPGANModel.get_roi_regions(model, eye, mouth))
    return model


def _trained_pairs(ours: Trainer, official) -> dict[str, list[tuple[nn.Module, nn.Module]]]:
    """Our and the official networks that a step changes, by kind."""
    return {
        "net_g": [(ours.net_g, official.net_g)],
        "nets_d": [(ours.nets_d["d"], official.net_d)]
        + [(ours.nets_d[p], getattr(official, f"net_d_{p}")) for p in PARTS],
        "net_g_ema": [(ours.net_g_ema, official.net_g_ema)],
    }


def _same_start(ours: Trainer, official) -> None:
    """Our random weights in the official networks too (VGG19's by position: its layers have other names);
    every network in float64."""
    with torch.no_grad():  # official inits leave noise strengths and biases at 0: make every path count
        for t in ours.net_g.state_dict().values():
            t.add_(torch.randn_like(t) * 0.05)
        for m in ours.identity.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ours.net_g_ema.load_state_dict(ours.net_g.state_dict())
    pairs = [pair for pairs in _trained_pairs(ours, official).values() for pair in pairs]
    for mine, theirs in [*pairs, (ours.identity.net, official.network_identity)]:
        theirs.load_state_dict(mine.state_dict())
        mine.double()
        theirs.double()
    vgg = official.cri_perceptual.vgg.vgg_net
    vgg.load_state_dict(dict(zip(vgg.state_dict(), ours.vgg.features.state_dict().values(), strict=True)))
    ours.vgg.double()
    official.cri_perceptual.double()  # with its normalisation constants


def _skip_to(ours: Trainer, official, iteration: int) -> None:
    """Both runs resumed before ``iteration``, weights and optimiser states kept: our step counter, and our
    schedules stepped to it (learning rates included) as a checkpoint restores them. basicsr's schedulers
    step at the start of an iteration and change the rate only on a milestone (none before 600k)."""
    ours.step = iteration - 1
    for s in ours.schedulers.values():
        s.last_epoch = iteration - 2
        s.step()
    for s in official.schedulers:
        s.last_epoch = iteration - 2


def _rel(ours: Tensor, ref: Tensor) -> float:
    """max |ours − ref| / max |ref|: the difference relative to the tensor's scale."""
    diff, scale = (ours - ref).abs().max(), ref.abs().max()
    return float(diff / scale) if scale > 0 else float(diff)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: a float64 step is many small operations, which on one thread cost about 3 s of
    CPU per side; two threads on a busy two-core machine spent 20 times that waiting for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_steps_equal_official(official_fused_act_on_cpu, one_thread, tmp_path, monkeypatch):
    """Both sides run in float64. In float32 every loss agrees to 1e-7 after the first step, but Adam
    divides each gradient by its own size (+1e-8), so where a gradient is near 1e-8 float32 rounding
    decides how far its weight moves: a few dozen generator weights then differ by up to 3e-3 of their
    tensor's largest. In float64 that rounding is 1e-16 and any difference left is a real one. The
    generator's random noise is the same on both sides because both draw it in the same order and shapes
    from torch's generator, seeded alike before each side's step."""
    overrides = [f"data.train={_faces(tmp_path / 'faces')}", f"output_dir={tmp_path / 'run'}", *SMALL]
    torch.manual_seed(0)
    ours = Trainer(load_config(None, overrides))
    official = _official_model(monkeypatch)
    _same_start(ours, official)
    items = [ours.train_set[(i, (0, 0, 0, i))] for i in range(2)]
    batch = {
        k: torch.stack([it[k] for it in items]).double() for k in ("lq", "gt", *[f"loc_{p}" for p in PARTS])
    }

    worst = {"losses": 0.0, "net_g": 0.0, "nets_d": 0.0, "net_g_ema": 0.0}
    done = 0
    for it in ITERATIONS:
        if it != done + 1:
            _skip_to(ours, official, it)
        done = it
        torch.manual_seed(it)
        logs = ours.train_step({k: v.clone() for k, v in batch.items()})
        official.update_learning_rate(it, warmup_iter=-1)  # as basicsr's training loop calls it
        official.feed_data({k: v.clone() for k, v in batch.items()})
        torch.manual_seed(it)
        official.optimize_parameters(it)
        ref = official.log_dict
        assert set(logs) - {"l_g_total"} == set(ref), it  # the same terms, R1 on the same iterations
        for name, value in ref.items():
            error = abs(logs[name] - value) / max(abs(value), 1e-30)
            assert error < TOLERANCE, (it, name, logs[name], value)
            worst["losses"] = max(worst["losses"], error)
        for kind, pairs in _trained_pairs(ours, official).items():
            for mine, theirs in pairs:
                reference = dict(theirs.named_parameters())
                for name, p in mine.named_parameters():
                    error = _rel(p.detach(), reference[name].detach())
                    assert error < TOLERANCE, (it, kind, name, error)
                    worst[kind] = max(worst[kind], error)
    print(f"largest relative differences: {worst}")


# ---------------------------------------------------------------------------------------- training pairs
OFFICIAL_DATA = dict(  # options/train_gfpgan_v1.yml, datasets.train
    use_hflip=True, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], out_size=512,
    blur_kernel_size=41, kernel_list=["iso", "aniso"], kernel_prob=[0.5, 0.5], blur_sigma=[0.1, 10],
    downsample_range=[0.8, 8], noise_range=[0, 20], jpeg_range=[60, 100],
    color_jitter_prob=0.3, color_jitter_shift=20, color_jitter_pt_prob=0.3, gray_prob=0.01,
    crop_components=True, eye_enlarge_ratio=1.4,
)  # fmt: skip
# The official "no colorization" variant (commented in the same file), which also turns the GT gray.
GRAY = {"color_jitter_prob": None, "color_jitter_pt_prob": None, "gray_prob": 1.0, "gt_gray": True}


class _Recording:
    """A numpy Generator that notes every value it hands out, in order."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.calls = rng, []

    def __getattr__(self, name: str):
        method = getattr(self.rng, name)

        def call(*args, **kwargs):
            value = method(*args, **kwargs)
            self.calls.append((name, value))
            return value

        return call


class _Script:
    """Answers the official code's random calls with our draws, checking that it asks for the same range."""

    def __init__(self, answers: list) -> None:
        self.answers = answers

    def __call__(self, *asked):
        expected, value = self.answers.pop(0)
        assert asked == expected, (asked, expected)
        return value


def _official_uniform_answers(p, deg: dict) -> list:
    """Our drawn parameters as answers to the official's ``np.random.uniform`` calls, in its order, each with
    the arguments the official must pass (our ranges); probability draws get the outcome we drew."""
    outcome = lambda happened: ((), 0.0 if happened else 1.0)  # noqa: E731  (below any probability, or not)
    answers = [(tuple(deg["blur_sigma"]), p.sigma_x)]
    if p.kernel_type == "aniso":
        answers += [(tuple(deg["blur_sigma"]), p.sigma_y), ((-math.pi, math.pi), p.rotation)]
    answers += [(tuple(deg["downsample_range"]), p.scale), (tuple(deg["noise_range"]), p.noise_sigma)]
    answers += [outcome(False)]  # basicsr's gray-noise draw (its probability is 0)
    answers += [(tuple(deg["jpeg_range"]), p.jpeg_quality)]
    if deg["color_jitter_prob"] is not None:
        answers += [outcome(p.color_shift is not None)]
        if p.color_shift is not None:
            s = deg["color_jitter_shift"] / 255
            answers += [((-s, s, 3), p.color_shift)]
    if deg["gray_prob"]:
        answers += [outcome(p.gray)]
    if deg["color_jitter_pt_prob"] is not None:
        answers += [outcome(bool(p.pt_jitter))]
    return answers


@pytest.fixture(scope="module")
def real_face(shared_data, tmp_path_factory) -> Path:
    """One real face (CelebA-HQ) at 512 px, the size both datasets read unchanged, and its component
    centres in the official landmarks file's structure (lists of numpy floats, keyed by index)."""
    folder = tmp_path_factory.mktemp("face")
    (folder / "faces").mkdir()
    src = sorted((shared_data / "faces" / "hq").glob("*.jpg"))[0]
    img = cv2.resize(cv2.imread(str(src)), (512, 512), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(folder / "faces" / "00000000.png"), img)
    parts = template_components()
    torch.save({"00000000": {k: [np.float64(v) for v in parts[k]] for k in PARTS}}, folder / "landmarks.pth")
    return folder


@pytest.mark.shared
@pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
@pytest.mark.parametrize(
    ("position", "options", "drawn"),
    [
        (0, {}, dict(flipped=False, kernel="iso", shift=False, gray=False, jitter=False)),
        (9, {}, dict(flipped=True, kernel="aniso", shift=True, gray=False, jitter=True)),
        (2, {}, dict(flipped=False, kernel="aniso", shift=False, gray=False, jitter=True)),
        (8, GRAY, dict(flipped=True, kernel="iso", shift=False, gray=True, jitter=False)),
    ],
)
def test_training_pairs_equal_official(real_face, monkeypatch, position, options, drawn):
    """Our dataset and the official FFHQDegradationDataset give the same (gt, lq, boxes) bit for bit.

    The random draws cannot be shared: ours come from a numpy Generator seeded per sample (any number of
    workers, exact resume), the official's from Python's ``random``, numpy's and torch's global states,
    in another order (its noise array before its JPEG quality, ours after). So our sample's draws are
    recorded and handed to the official code in place of its own; each answer checks that the official
    asks for the range ours was drawn from. The official code otherwise runs unchanged, except that it
    gets a fresh landmarks dict per sample: it flips the stored coordinates in place (a later sample of the
    same face would start from mirrored ones), which we do not copy.
    """
    from basicsr.data import degradations, transforms
    from gfpgan.data.ffhq_degradation_dataset import FFHQDegradationDataset

    import train.data as data

    landmarks = real_face / "landmarks.pth"
    cfg = load_config(
        None, ["data.out_size=512", "data.components.source=file", f"data.components.file={landmarks}"]
    )
    deg = {**cfg["degradation"], **options}
    opt = {**OFFICIAL_DATA, **options, "io_backend": {"type": "disk"}}
    opt |= {"dataroot_gt": str(real_face / "faces"), "component_path": str(landmarks)}
    official_defaults = {
        "brightness": [0.5, 1.5],
        "contrast": [0.5, 1.5],
        "saturation": [0, 1.5],
        "hue": [-0.1, 0.1],
    }
    shared = [key for key in opt if key in deg]
    assert {key: deg[key] for key in shared} == {key: opt[key] for key in shared}  # the same options
    assert {key: deg[key] for key in official_defaults} == official_defaults
    assert (cfg["data"]["use_hflip"], cfg["data"]["components"]["eye_enlarge_ratio"]) == (True, 1.4)

    recorded = {}
    make_rng, sample = np.random.default_rng, data.sample_degradation
    with monkeypatch.context() as m:  # our sample, its draws noted
        m.setattr(
            np.random, "default_rng", lambda seed: recorded.setdefault("rng", _Recording(make_rng(seed)))
        )
        m.setattr(data, "sample_degradation", lambda c, r: recorded.setdefault("p", sample(c, r)))
        ours = data.FaceDegradationDataset(real_face / "faces", cfg["data"], deg)[(0, (0, 0, 0, position))]
    p, calls = recorded["p"], recorded["rng"].calls
    assert calls[0][0] == "uniform"  # the flip, drawn first
    (noise,) = [value for name, value in calls if name == "standard_normal"]
    assert drawn == dict(
        flipped=calls[0][1] < 0.5,
        kernel=p.kernel_type,
        shift=p.color_shift is not None,
        gray=p.gray,
        jitter=bool(p.pt_jitter),
    )  # the case still covers what it was chosen for

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # a numpy pickle, loaded as torch did then
    official = FFHQDegradationDataset(opt)
    ops = ["brightness", "contrast", "saturation", "hue"]
    scripts = {
        "flip": _Script([((), calls[0][1])]),
        "kernel": _Script([((deg["kernel_list"], deg["kernel_prob"]), [p.kernel_type])]),
        "uniform": _Script(_official_uniform_answers(p, deg)),
        "noise": _Script([(noise.shape, noise)]),
        "order": _Script(
            [((4,), torch.tensor([ops.index(op) for op, _ in p.pt_jitter]))] if p.pt_jitter else []
        ),
        "factor": _Script([(tuple(deg[op]), factor) for op, factor in p.pt_jitter]),
    }
    with monkeypatch.context() as m:
        m.setattr(transforms, "random", SimpleNamespace(random=scripts["flip"]))
        m.setattr(degradations, "random", SimpleNamespace(choices=scripts["kernel"]))
        m.setattr(np.random, "uniform", scripts["uniform"])
        m.setattr(np.random, "randn", scripts["noise"])
        m.setattr(torch, "randperm", scripts["order"])
        m.setattr(torch.Tensor, "uniform_", lambda t, low, high: t.fill_(scripts["factor"](low, high)))
        theirs = official[0]
    assert not any(s.answers for s in scripts.values())  # the official drew everything ours did
    for key in ("gt", "lq"):
        assert torch.equal(ours[key], theirs[key]), (key, float((ours[key] - theirs[key]).abs().max()))
    for part in PARTS:
        assert torch.equal(ours[f"loc_{part}"], theirs[f"loc_{part}"]), part
