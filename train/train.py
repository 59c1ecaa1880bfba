"""GFPGAN training loop: ``python -m train.train --config CONFIG.yml [key.sub=value ...]``.

One command for CPU, one GPU, and many GPUs / nodes (launch with ``torchrun``; DistributedDataParallel,
per-rank shuffled sampling, rank 0 logs, validates and checkpoints). Checkpoints hold everything needed to
continue bit-for-bit: networks, EMA generator, optimisers, schedulers, AMP scaler, step and RNG states.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import shutil
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torchvision.ops import roi_align
from tqdm import tqdm

from gfp.archs import UnknownArchitectureError
from gfp.archs.gfpgan import fold_pixels, unfold_pixels
from gfp.atomic import atomic_path, remove_abandoned
from gfp.loading import WeightsError, misfit, select_device
from gfp.messages import first_line
from gfp.precision import cpu_has_native_bf16
from train import losses as L
from train.config import ConfigError, identity_start, load_config
from train.data import (
    DataError,
    FaceDegradationDataset,
    ImageSource,
    ResumableSampler,
    check_images,
    list_images,
    split_indices,
    subfolders_with_images,
)
from train.export import CHECKPOINT_GLOB, ExportError, log_record, read_checkpoint
from train.metrics import cosine_similarity, psnr, ssim
from train.networks import build_discriminators, build_identity, build_training_generator, build_vgg

log = logging.getLogger("train")
PARTS = ("left_eye", "right_eye", "mouth")
# Steps (counted from where fit() starts) between which a time budget first measures the speed: after
# start-up and the first loader batches, and short enough to fall inside a typical warm-up. After that the
# steps are sized again every BUDGET_RESIZE steps from the speed since BUDGET_PROBE[0], so a machine that
# slows down (or speeds up) still ends its schedule on time.
BUDGET_PROBE = (20, 150)
BUDGET_RESIZE = 100


class TrainingDivergedError(RuntimeError):
    """Losses went NaN/inf; raised before the broken weights are checkpointed."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk, as a rule); the earlier ones are kept."""


def _unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, DistributedDataParallel) else net


def _set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


class Trainer:
    """Holds the networks, optimisers and data of one process; ``fit()`` runs to ``train.total_iter``."""

    def __init__(
        self, cfg: dict[str, Any], rank: int = 0, world_size: int = 1, device: torch.device | None = None
    ) -> None:
        self.cfg = cfg
        self.rank, self.world = rank, world_size
        self.device = device or select_device(cfg["device"])
        self.step = 0
        self.saved_step = 0  # the step of the newest checkpoint (written or resumed from)
        self.sized = False  # whether train.total_iter was sized from train.time_budget_min
        self.out_dir = Path(cfg["output_dir"])
        # The data first: a missing folder or a bad image is said before any network is built or any
        # weights are fetched (a download, a VGG19 or ArcFace that cannot be had).
        self._build_data()
        torch.manual_seed(cfg["seed"])  # identical initial weights on every rank

        self.net_g = build_training_generator(cfg).to(self.device)
        self.net_g_ema = copy.deepcopy(self.net_g).eval().requires_grad_(False)
        self.nets_d = {k: v.to(self.device) for k, v in build_discriminators(cfg).items()}
        self.identity = build_identity(cfg)
        self.identity = self.identity.to(self.device) if self.identity is not None else None
        self.vgg = build_vgg(cfg)
        self.vgg = self.vgg.to(self.device) if self.vgg is not None else None
        self._frozen = {n for n, p in self.net_g.named_parameters() if not p.requires_grad}
        # How the pixel loss compares faces (_compared), from the generator's layout: a detail model changes
        # every full-size pixel, so its loss compares them all, folded by the shrink factor (fold); layers
        # at work_size without it change only what survives area averaging to that size (loss_size).
        detail = getattr(self.net_g, "detail", False)
        self.fold = self.net_g.shrink if detail else 1
        self.loss_size = self.net_g.out_size if self.net_g.shrink > 1 and not detail else None

        opt = cfg["optim"]
        reg_ratio = cfg["loss"]["d_reg_every"] / (cfg["loss"]["d_reg_every"] + 1)  # lazy R1 correction
        g_params = [p for p in self.net_g.parameters() if p.requires_grad]
        self.optimizers = {"g": torch.optim.Adam(g_params, lr=opt["lr_g"], betas=tuple(opt["betas_g"]))}
        # The official code scales D's betas by the lazy-R1 ratio but not its learning rate: it passes
        # lr × ratio as Adam's default, which the parameter group's own (unscaled) lr overrides.
        self.optimizers["d"] = torch.optim.Adam(
            self.nets_d["d"].parameters(), lr=opt["lr_d"], betas=(0.0, 0.99**reg_ratio)
        )
        for part in PARTS:
            if part in self.nets_d:
                self.optimizers[part] = torch.optim.Adam(
                    self.nets_d[part].parameters(), lr=opt["lr_component"], betas=(0.9, 0.99)
                )
        # Factors of the global step, not of the scheduler's own count: a discriminator's scheduler steps
        # only once its optimiser does (after loss.gan_from), and then takes up the schedule where it is.
        self.schedulers = {
            k: torch.optim.lr_scheduler.LambdaLR(o, lambda _: self._lr_factor(self.step))
            for k, o in self.optimizers.items()
        }

        self.amp, self.amp_dtype = self._decide_amp(cfg["train"])
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)

        if world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net_g = DistributedDataParallel(self.net_g, device_ids=ids)
            self.nets_d = {k: DistributedDataParallel(v, device_ids=ids) for k, v in self.nets_d.items()}

        self.writer = None
        self.timings: dict[str, float] = {}  # seconds per part of an iteration, since the last log line
        self._clock = time.perf_counter()

    def _decide_amp(self, tcfg: dict[str, Any]) -> tuple[bool, torch.dtype]:
        """Whether steps run under autocast, and in what: CUDA bf16 (fp16 with the loss scaler where bf16
        is missing) with ``train.amp``; CPU bf16 with ``train.amp_cpu``, only where the CPU computes bf16
        natively (emulated, it would be slower than float32)."""
        if self.device.type == "cuda":
            amp = bool(tcfg["amp"])
            return amp, torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
        if self.device.type != "cpu" or not tcfg["amp_cpu"]:
            return False, torch.float32
        if cpu_has_native_bf16():
            return True, torch.bfloat16
        log.warning("train.amp_cpu: this CPU has no bf16 instructions (AVX-512 BF16 or AMX); float32 steps")
        return False, torch.float32

    def _lr_factor(self, step: int) -> float:
        """Learning-rate factor at ``step``: linear warm-up, then step decay or cosine to ``min_lr_ratio``."""
        opt = self.cfg["optim"]
        warm = int(opt["warmup_iter"])
        factor = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
        if opt["schedule"] == "cosine":
            total = max(1, int(self.cfg["train"]["total_iter"]) - warm)
            t = min(1.0, max(0, step - warm) / total)
            low = float(opt["min_lr_ratio"])
            return factor * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * t)))
        return factor * float(opt["gamma"]) ** sum(step >= m for m in opt["milestones"])

    @property
    def adversarial(self) -> bool:
        """Whether this step uses the GAN, component and identity losses (off during ``loss.gan_from``)."""
        return self.step > int(self.cfg["loss"]["gan_from"])

    @property
    def _identity_on(self) -> bool:
        """Whether this step uses the identity loss (``loss.identity_from``, else with the GAN losses)."""
        start = identity_start(self.cfg)
        on = self.adversarial if start is None else self.step > start
        return on and self.identity is not None

    # ------------------------------------------------------------------------------------------- data
    def _build_data(self) -> None:
        data = self.cfg["data"]
        if not data["train"]:
            raise ConfigError("data.train is not set: give a folder of aligned faces (or a .lmdb)")
        root, extra = Path(data["train"]), list(data["extra_train"] or [])
        source = ImageSource(root, extra)  # listed once, shared by the training and held-out sets
        source.check()
        count = len(source)
        train_idx, held_idx = split_indices(count, int(data["val_holdout"]))
        train_idx += range(count, count + len(source.extra))  # extra faces are never held out
        self.train_set = FaceDegradationDataset(
            root, data, self.cfg["degradation"], train_idx, train=True, extra=extra, source=source
        )
        size = self.train_set.degrade_size
        width, height = self.train_set.stored_size() if self.rank == 0 else (size, size)
        if (width, height) != (size, size):
            log.info(
                "the training faces are stored at %dx%d and resized to %d px at every read; "
                "`python -m train prepare SRC DST --size %d` stores them at that size once",
                width, height, size, size,
            )  # fmt: skip
        self.val_set = None
        if data["val"]:
            val_files = list_images(data["val"])
            check_images(val_files)  # clear error now rather than at the first validation
            held = {source.keys[i] for i in held_idx}  # held out, so not trained on (a folder's: paths)
            _refuse_trained_on(val_files, [f for f in source.files() if f not in held], data["val"])
            if source.is_lmdb:
                _warn_named_like(val_files, [k for k in source.keys if k not in held], root, data["val"])
            if held_idx:
                log.warning(
                    "data.val_holdout=%d holds the last %d training faces out, but validation uses data.val: "
                    "they are neither trained on nor validated (data.val_holdout=0 trains on them)",
                    len(held_idx), len(held_idx),
                )  # fmt: skip
            self.val_set = FaceDegradationDataset(data["val"], data, self.cfg["degradation"], train=False)
        elif held_idx:
            self.val_set = FaceDegradationDataset(
                root, data, self.cfg["degradation"], held_idx, train=False, source=source
            )
        extra_note = f" (+{len(source.extra)} from data.extra_train)" if source.extra else ""
        log.info(
            "training on %d faces from %s%s; %s",
            len(train_idx) - len(source.extra), root, extra_note,
            f"validating on {len(self.val_set)} faces" if self.val_set is not None else "no validation faces",
        )  # fmt: skip
        folders = [] if source.is_lmdb else [root]
        for folder in [*folders, *extra, *([data["val"]] if data["val"] else [])]:
            nested = subfolders_with_images(folder)
            if nested:
                log.warning(
                    "%s: its subfolders %s hold images, which are not searched: only the images directly "
                    "inside it are used", folder, ", ".join(p.name for p in nested[:3]),
                )  # fmt: skip

    def _loader(self) -> DataLoader:
        sampler = ResumableSampler(
            len(self.train_set), self.cfg["seed"], self.rank, self.world, start=self.step * self.batch_size
        )
        workers = int(self.cfg["data"]["num_workers"])
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=False,
            worker_init_fn=_ignore_stop_signals,
            generator=torch.Generator().manual_seed(self.cfg["seed"]),  # keep the global RNG untouched
        )

    @property
    def batch_size(self) -> int:
        return int(self.cfg["data"]["batch_size"])

    # ------------------------------------------------------------------------------------------- step
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp else nullcontext()

    def _backward(self, loss: Tensor) -> None:
        self.scaler.scale(loss).backward()

    def _rois(self, batch: dict[str, Tensor], images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Left eye, right eye and mouth crops via roi_align (80/80/120 px at 512, scaled to out_size)."""
        size = self.cfg["data"]["out_size"]
        eye_px, mouth_px = max(10, round(80 * size / 512)), max(10, round(120 * size / 512))
        b = images[0].shape[0]
        idx = torch.arange(b, device=self.device, dtype=torch.float32)[:, None]
        boxes = {p: torch.cat([idx, batch[f"loc_{p}"].to(self.device)], 1) for p in PARTS}
        out = []
        for img in images:
            crops = {
                p: roi_align(img, boxes[p], output_size=eye_px if "eye" in p else mouth_px) for p in PARTS
            }
            out.append(crops)
        return out

    def _compared(self, output: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
        """The generator's output and ``gt`` as the pixel loss compares them. A ``detail`` model's output
        comes folded (``fold=True``): ``gt`` is folded alike, the same pixels in another order, so the same
        mean, and nothing is unfolded at full size. Layers at ``work_size`` without it can change only
        what survives area averaging to that size; the finer detail passes through them, and its error is
        not theirs to reduce, so both faces are averaged to it. Otherwise the faces as they are."""
        if self.fold > 1:
            return output, fold_pixels(gt, self.fold)
        if self.loss_size is not None:
            return F.adaptive_avg_pool2d(output, self.loss_size), F.adaptive_avg_pool2d(gt, self.loss_size)
        return output, gt

    def _lap(self, name: str) -> None:
        """Add the time since the previous lap to ``self.timings[name]`` (seconds, this process)."""
        if self.device.type == "cuda" and self.cfg["train"]["profile"]:
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self._clock
        self._clock = now

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One official GFPGAN iteration: G update, EMA, D update (+lazy R1), component D updates.

        During the reconstruction warm-up (``step <= loss.gan_from``) only the pixel and pyramid (and
        perceptual) losses train the generator and the discriminators rest.
        """
        self.step += 1
        self._clock = time.perf_counter()
        lw = self.cfg["loss"]
        lq = batch["lq"].to(self.device, non_blocking=True)
        gt = batch["gt"].to(self.device, non_blocking=True)
        adversarial = self.adversarial
        d_all = list(self.nets_d.values())
        use_comp = adversarial and all(p in self.nets_d for p in PARTS)
        logs: dict[str, Tensor] = {}

        # ---- generator
        _set_requires_grad(d_all, False)
        self.optimizers["g"].zero_grad(set_to_none=True)
        with self._autocast():
            output, out_rgbs = self.net_g(lq, return_rgb=True, randomize_noise=True, fold=self.fold > 1)
            total = L.pixel_loss(*self._compared(output, gt), lw["pixel_weight"], lw["pixel_type"])
            if self.fold > 1 and (self.vgg is not None or adversarial or self._identity_on):
                output = unfold_pixels(output, self.fold)  # the full-size face, for the losses that see it
            logs["l_g_pix"] = total
            pyr_w = lw["pyramid_weight"]
            if pyr_w > 0 and self.step > lw["pyramid_until"]:
                pyr_w = 1e-12  # the official "removal": a tiny weight keeps DDP's graph complete
            for rgb, l_pyr in zip(out_rgbs, L.pyramid_losses(out_rgbs, gt, pyr_w), strict=True):
                total = total + l_pyr
                logs[f"l_p_{rgb.shape[-1]}"] = l_pyr
            if self.vgg is not None:
                l_per, l_sty = L.perceptual_loss(
                    self.vgg(output),
                    self.vgg(gt),
                    lw["vgg_layers"],
                    lw["perceptual_weight"],
                    lw["style_weight"],
                )
                total = total + l_per + l_sty
                logs["l_g_percep"], logs["l_g_style"] = l_per, l_sty
            self._lap("g_forward")
            if adversarial:
                l_gan = L.gan_loss_g(self.nets_d["d"](output), lw["gan_weight"])
                total = total + l_gan
                logs["l_g_gan"] = l_gan
            if use_comp:
                fake_rois, real_rois = self._rois(batch, [output, gt])
                fake_feats, real_feats = [], []
                for part in PARTS:
                    pred, feats = self.nets_d[part](fake_rois[part], return_feats=True)
                    l_c = L.gan_loss_g(pred, lw["component_gan_weight"])
                    total = total + l_c
                    logs[f"l_g_gan_{part}"] = l_c
                    fake_feats.append(feats)
                    real_feats.append(self.nets_d[part](real_rois[part], return_feats=True)[1])
                if lw["component_style_weight"] > 0:
                    l_cs = L.component_style_loss(fake_feats, real_feats, lw["component_style_weight"])
                    total = total + l_cs
                    logs["l_g_comp_style_loss"] = l_cs
            self._lap("g_adversarial")
            if self._identity_on and lw["identity_weight"] > 0:
                l_id = L.identity_loss(self.identity(output), self.identity(gt), lw["identity_weight"])
                total = total + l_id
                logs["l_identity"] = l_id
            self._lap("g_identity")
        logs["l_g_total"] = total
        self._backward(total)
        clip = float(self.cfg["optim"]["clip_grad_norm"])
        if clip > 0:  # a bad batch cannot throw a from-scratch decoder off course
            self.scaler.unscale_(self.optimizers["g"])
            norm = torch.nn.utils.clip_grad_norm_(self.net_g.parameters(), clip)
            logs["grad_norm_g"] = norm
        self.scaler.step(self.optimizers["g"])
        self._lap("g_backward")
        self._update_ema()
        self._lap("ema")

        if adversarial:
            self._discriminator_step(
                batch, output, gt, logs, fake_rois if use_comp else None, real_rois if use_comp else None
            )
        self.scaler.update()
        stepped = {"g", *(["d"] if adversarial else []), *(PARTS if use_comp else [])}
        for key, scheduler in self.schedulers.items():
            if key in stepped:
                scheduler.step()
            else:  # resting (before loss.gan_from): its rate keeps up, so that its first step has that step's
                for group in scheduler.optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * self._lr_factor(self.step)
        reduced = self._reduce(logs)  # identical on every rank, so every rank stops together
        if not all(map(math.isfinite, reduced.values())):
            bad = sorted(k for k, v in reduced.items() if not math.isfinite(v))
            raise TrainingDivergedError(
                f"losses became non-finite at step {self.step} ({', '.join(bad)}): training diverged. Resume "
                "from the last checkpoint (--resume auto) with a lower optim.lr_g / optim.lr_d."
            )
        return reduced

    def _discriminator_step(
        self,
        batch: dict[str, Tensor],
        output: Tensor,
        gt: Tensor,
        logs: dict[str, Tensor],
        fake_rois: dict[str, Tensor] | None,
        real_rois: dict[str, Tensor] | None,
    ) -> None:
        """Whole-face D update with lazy R1, then the component Ds (when their crops were taken)."""
        lw = self.cfg["loss"]
        _set_requires_grad(list(self.nets_d.values()), True)
        for key, opt in self.optimizers.items():
            if key != "g":
                opt.zero_grad(set_to_none=True)
        fake = output.detach()
        with self._autocast():
            fake_pred, real_pred = self.nets_d["d"](fake), self.nets_d["d"](gt)
            l_d = L.gan_loss_d(real_pred, fake_pred)
        logs["l_d"], logs["real_score"], logs["fake_score"] = l_d, real_pred.mean(), fake_pred.mean()
        self._backward(l_d)
        if self.step % lw["d_reg_every"] == 0:
            gt_r = gt.detach().requires_grad_(True)
            pred = self.nets_d["d"](gt_r)  # R1 in full precision
            r1 = L.r1_penalty(pred, gt_r)
            # 0 * pred keeps the last layer's bias in the graph (DDP expects every parameter to get a grad)
            l_r1 = lw["r1_weight"] / 2 * r1 * lw["d_reg_every"] + 0 * pred[0, 0]
            logs["l_d_r1"] = l_r1
            self._backward(l_r1)
        self.scaler.step(self.optimizers["d"])
        self._lap("d_step")
        if fake_rois is not None and real_rois is not None:
            fake_rois = {p: v.detach() for p, v in fake_rois.items()}
            with self._autocast():
                for part in PARTS:
                    f_pred, _ = self.nets_d[part](fake_rois[part])
                    r_pred, _ = self.nets_d[part](real_rois[part])
                    # The official takes the real term from its vanilla (BCE) loss and the fake term from
                    # its softplus loss: both are softplus(∓x), as here.
                    l_dc = L.gan_loss_d(r_pred, f_pred)
                    logs[f"l_d_{part}"] = l_dc
                    self._backward(l_dc)
            for part in PARTS:
                self.scaler.step(self.optimizers[part])
            self._lap("d_components")

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = float(self.cfg["train"]["ema_decay"])
        if self.cfg["train"]["ema_warmup"]:  # a short average early on, so a short run's EMA is not its init
            decay = min(decay, (1 + self.step) / (10 + self.step))
        src = dict(_unwrap(self.net_g).named_parameters())
        for name, p_ema in self.net_g_ema.named_parameters():
            if name not in self._frozen:
                p_ema.lerp_(src[name].detach(), 1.0 - decay)
        for b_ema, b in zip(self.net_g_ema.buffers(), _unwrap(self.net_g).buffers(), strict=True):
            b_ema.copy_(b)

    def _reduce(self, logs: dict[str, Tensor]) -> dict[str, float]:
        """Average the scalar logs over ranks (for logging only)."""
        keys = sorted(logs)
        values = torch.stack([logs[k].detach().float().reshape(()) for k in keys])
        if self.world > 1:
            dist.all_reduce(values)
            values /= self.world
        return dict(zip(keys, values.tolist(), strict=True))

    # -------------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """EMA generator on held-out faces: PSNR, SSIM, identity cosine (and the same for the LQ input)."""
        if self.val_set is None:
            return {}
        sums: dict[str, float] = {}
        grid = []
        for i in range(len(self.val_set)):
            item = self.val_set[i]
            lq, gt = item["lq"][None].to(self.device), item["gt"][None].to(self.device)
            out, _ = self.net_g_ema(lq, return_rgb=False)
            out = out.float().clamp(-1, 1)
            values = {
                "psnr": psnr(out, gt),
                "ssim": ssim(out, gt),
                "psnr_lq": psnr(lq, gt),
                "ssim_lq": ssim(lq, gt),
            }
            if self.identity is not None:
                e_gt = self.identity(gt)
                values["id_cos"] = cosine_similarity(self.identity(out), e_gt)
                values["id_cos_lq"] = cosine_similarity(self.identity(lq), e_gt)
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + float(v.mean())
            if i < 4:
                grid += [lq[0], out[0], gt[0]]
        metrics = {k: v / len(self.val_set) for k, v in sums.items()}
        if self.writer is not None and grid:
            from torchvision.utils import make_grid

            image = make_grid(torch.stack(grid).cpu(), nrow=3, normalize=True, value_range=(-1, 1))
            self.writer.add_image("val/lq_output_gt", image, self.step)
        return metrics

    # ------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (plain tensors and containers: loads with weights_only)."""
        state = {
            "step": self.step,
            "sized_total_iter": self.cfg["train"]["total_iter"] if self.sized else None,
            "config": self.cfg,
            "net_g": _unwrap(self.net_g).state_dict(),
            "net_g_ema": self.net_g_ema.state_dict(),
            "nets_d": {k: _unwrap(v).state_dict() for k, v in self.nets_d.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "rng": self._rng_states(),
        }
        return state

    def _rng_states(self) -> list[dict[str, Tensor]]:
        """Every rank's torch RNG state (collective when distributed), so each rank resumes its own stream."""
        mine = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.world == 1:
            return [mine]
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, mine)
        return gathered

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = self.saved_step = int(state["step"])
        budgeted = self.cfg["train"]["time_budget_min"] is not None  # null now: the given total_iter rules
        if state.get("sized_total_iter") is not None and budgeted:  # keep the schedule the budget sized
            self.cfg["train"]["total_iter"] = int(state["sized_total_iter"])
            self.sized = True
        _unwrap(self.net_g).load_state_dict(state["net_g"])
        self.net_g_ema.load_state_dict(state["net_g_ema"])
        for k, v in self.nets_d.items():
            _unwrap(v).load_state_dict(state["nets_d"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        self._apply_changed_rates((state.get("config") or {}).get("optim") or {})
        self.scaler.load_state_dict(state["scaler"])
        states = state["rng"]
        if len(states) == self.world:
            torch.set_rng_state(states[self.rank]["cpu"].cpu())
            if "cuda" in states[self.rank] and self.device.type == "cuda":
                torch.cuda.set_rng_state(states[self.rank]["cuda"].cpu(), self.device)
        else:
            log.warning(
                "checkpoint was written by %d processes, now %d: noise RNG reseeded", len(states), self.world
            )
            torch.manual_seed(self.cfg["seed"] * 1000 + self.rank + self.step)

    def _apply_changed_rates(self, saved: dict[str, Any]) -> None:
        """Give each optimiser the base learning rate the config asks for where it differs from the
        checkpoint's (the saved state would bring back the old one): resuming with a lower rate is how a
        diverged run goes on. The schedule's factor at this step is kept."""
        opt = self.cfg["optim"]
        keys = {"g": "lr_g", "d": "lr_d", **{part: "lr_component" for part in PARTS}}
        for k, scheduler in self.schedulers.items():
            new = float(opt[keys[k]])
            if keys[k] not in saved or float(saved[keys[k]]) == new:
                continue  # unchanged: the saved state as it is, so a resumed run equals a straight one
            scheduler.base_lrs = [new] * len(scheduler.base_lrs)
            for group in scheduler.optimizer.param_groups:
                group["lr"] = new * group["lr"] / group["initial_lr"] if group["initial_lr"] else new
                group["initial_lr"] = new

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step_XXXXXXXX.pt`` atomically (rank 0; all ranks call) and prune old ones.

        Every rank records the step as saved, so all decide alike whether a stop needs a checkpoint (a rank
        that called alone would wait in the state's collectives for ever), and waits until it is written: a
        launcher (torchrun) stops every rank once one exits, maybe before rank 0 has written it."""
        state = self.state_dict()
        self.saved_step = self.step
        path = None
        if self.rank == 0:
            folder = self.out_dir / "checkpoints"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"step_{self.step:08d}.pt"
            remove_abandoned(path, ".part", CHECKPOINT_GLOB)  # of a run killed while saving (kill -9)
            try:  # a half file (a full disk, a second Ctrl-C) is deleted: it would hold the space
                with atomic_path(path, ".part", held=True) as tmp:
                    torch.save(state, tmp)
            except (OSError, RuntimeError) as err:
                # torch reports a full disk as "unexpected pos": say what is free, and what is kept
                free = shutil.disk_usage(folder).free / 2**20
                kept = latest_checkpoint(self.out_dir)
                raise CheckpointWriteError(
                    f"cannot write the checkpoint {path} ({first_line(err)}; {free:.0f} MiB free there): "
                    f"the newest one kept is {kept.name if kept else 'none'}; free some space and "
                    "--resume auto continues from it"
                ) from err
            keep = int(self.cfg["train"]["keep_checkpoints"])
            for old in sorted(folder.glob(CHECKPOINT_GLOB))[:-keep] if keep > 0 else []:
                old.unlink()
        if self.world > 1:
            dist.barrier()
        return path

    def resume(self, path: str | Path) -> None:
        """Continue from the checkpoint ``path``; ``ConfigError`` (one line) for a file that is no readable
        checkpoint or holds networks of another layout. Settings that differ from the checkpoint's are
        logged: the optimisers and the schedule continue as saved, at the base learning rates asked for."""
        try:
            state = read_checkpoint(path, map_location=self.device)
        except ExportError as err:
            raise ConfigError(f"cannot resume: {err}") from None
        changed = _changed_settings(state.get("config") or {}, self.cfg)
        if changed:
            log.warning("resuming with settings other than the checkpoint's (%s); the optimisers and the "
                        "learning-rate schedule continue as saved, from the base rates now asked for",
                        "; ".join(changed))  # fmt: skip
        try:
            self.load_state_dict(state)
        except RuntimeError as err:  # shapes or keys of another model layout
            # torch's first line only names the network: the settings that changed say what to undo
            layout = [c for c in changed if c.startswith(("model.", "data.out_size:"))]
            detail = "; ".join(layout) if layout else misfit(err)
            raise ConfigError(
                f"cannot resume from {path}: its networks do not fit this config's model ({detail}); a "
                "checkpoint continues only the model it was trained with: undo the change, or start a new "
                "run (another output_dir)"
            ) from None

    # ---------------------------------------------------------------------------------------------- fit
    def fit(self, total_iter: int | None = None) -> dict[str, float]:
        """Train until ``total_iter`` (default ``train.total_iter``); returns the last logged losses."""
        tcfg = self.cfg["train"]
        total_iter = int(total_iter if total_iter is not None else tcfg["total_iter"])
        main = self.rank == 0
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yml").write_text(_dump_yaml(self.cfg))
            from torch.utils.tensorboard import SummaryWriter

            # A resumed run trains again the steps after its checkpoint: their old records go. A fresh run
            # (step 0) drops them all: those of a run that died before its first checkpoint.
            self._drop_records_after(self.step)
            self.writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=self.step + 1)
        self.net_g.train()
        for net in self.nets_d.values():
            net.train()
        last: dict[str, float] = {}
        if self.step >= total_iter:
            return last
        bar = tqdm(total=total_iter, initial=self.step, desc="train", disable=not main, dynamic_ncols=True)
        try:
            with _interrupt_between_steps() as interrupted, _batches(self._loader()) as batches:
                return self._steps(total_iter, bar, interrupted, batches)
        except DataError:
            # An image that fails mid-run (the next batch's, or a validation face's): the steps since the
            # last checkpoint are kept. Every rank raises it at the same step (_shared_error), so all of them
            # join the checkpoint's collectives.
            if self.step > self.saved_step:
                self.save_checkpoint()
                log.info("data error after step %d: checkpoint saved; --resume auto continues", self.step)
            raise
        finally:
            bar.close()
            if self.writer is not None:
                self.writer.close()

    def _steps(
        self, total_iter: int, bar: tqdm, interrupted: Callable[[], bool], batches: Iterator[Any]
    ) -> dict[str, float]:
        """The loop of :meth:`fit`: step, log, validate and checkpoint until ``total_iter`` (or the budget);
        a Ctrl-C, SIGTERM or SIGHUP is taken between steps, after a checkpoint of the last one
        (``KeyboardInterrupt``)."""
        tcfg = self.cfg["train"]
        main = self.rank == 0
        last: dict[str, float] = {}
        started, t0 = self.step, time.time()
        budget = tcfg["time_budget_min"]
        deadline = None if budget is None else time.perf_counter() + 60.0 * float(budget)
        probe_start, limit = 0.0, total_iter
        short, sized_here = 6.0 * float(budget or 0), False  # a tenth of the budget, in seconds
        while True:
            waited = time.perf_counter()
            try:
                batch, failed = next(batches), None
            except DataError as err:  # an image that passed the check but fails now, on this rank alone
                batch, failed = None, str(err)  # its message, which _shared_error hands to every rank
            self.timings["data"] = self.timings.get("data", 0.0) + time.perf_counter() - waited
            # One exchange per step tells every rank whether any rank's data failed or was interrupted, so
            # all stop after the same step: a rank left waiting in a collective would hang the run.
            data_failed, stopping = self._anyone(failed is not None, interrupted())
            if data_failed:
                raise self._shared_error(failed)
            if stopping:
                if self.step > self.saved_step:
                    self.save_checkpoint()
                log.info("interrupted at step %d: checkpoint saved; --resume auto continues", self.step)
                raise KeyboardInterrupt
            logs = self.train_step(batch)
            bar.update(1)
            last = logs
            if deadline is not None:
                now = time.perf_counter()
                done = self.step - started
                if done == BUDGET_PROBE[0]:
                    probe_start = now
                elif (
                    done >= BUDGET_PROBE[1]
                    and (done - BUDGET_PROBE[1]) % BUDGET_RESIZE == 0
                    or (
                        # a budget too short to reach the second probe is sized once a tenth of it is measured
                        not sized_here
                        and done > BUDGET_PROBE[0]
                        and self._anyone(now - probe_start >= short)[0]
                    )
                ):
                    total_iter = self._size_to_budget(
                        limit, done - BUDGET_PROBE[0], probe_start, now, deadline
                    )
                    bar.total, sized_here = total_iter, True
                if self.step < total_iter and self._past(deadline, now):
                    log.info("time budget of %s min spent at step %d: stopping there", budget, self.step)
                    if not self.sized:  # (a resumed run keeps the schedule its budget sized before)
                        log.warning(
                            "the budget ran out before its speed was measured (%d steps, then a tenth of "
                            "the budget): the learning-rate schedule was not fitted to it (give a longer "
                            "budget, or train.total_iter)",
                            BUDGET_PROBE[0],
                        )
                    total_iter = self.step
            if main:
                self._log(logs, started, t0)
                if tcfg["image_every"] and self.step % tcfg["image_every"] == 0:
                    self._log_train_images(batch)
                    self._lap("images")
            if tcfg["val_every"] and (self.step % tcfg["val_every"] == 0 or self.step == total_iter):
                self._run_validation()
                self._lap("validation")
            every = tcfg["ckpt_every"] and self.step % tcfg["ckpt_every"] == 0
            if every or self.step >= total_iter:  # always at the end, whatever ckpt_every says
                self.save_checkpoint()
                self._lap("checkpoint")
            if self.step >= total_iter:
                break
        return last

    def _anyone(self, *flags: bool) -> tuple[bool, ...]:
        """Whether each flag is set on any rank: a signal or a bad image reaches one rank, or the ranks
        between different steps, and all must stop after the same one (one exchange of a few numbers per
        step, next to the step's own gradients)."""
        if self.world == 1:
            return flags
        values = torch.tensor([int(flag) for flag in flags], device=self.device)
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return tuple(bool(v) for v in values.tolist())

    def _shared_error(self, message: str | None) -> DataError:
        """The data error of the rank whose data failed (``message`` on that rank), raised by every rank: each
        says which image, not only the rank that read it (the one whose log the user reads may be another).
        Called by all ranks together once :meth:`_anyone` has told them that one failed."""
        if self.world > 1:
            messages: list[str | None] = [None] * self.world
            dist.all_gather_object(messages, message)
            message = next(m for m in messages if m is not None)
        return DataError(message)

    def _past(self, deadline: float, now: float) -> bool:
        """Whether the time budget is spent: rank 0's clock decides, every 50 steps when distributed (a
        budget of minutes needs no finer check; the ranks' own clocks would disagree on the step)."""
        if self.world == 1:
            return now >= deadline
        if self.step % 50:
            return False
        flag = torch.tensor(int(now >= deadline), device=self.device)
        dist.broadcast(flag, 0)
        return bool(flag)

    def _size_to_budget(self, limit: int, steps: int, probe_start: float, now: float, deadline: float) -> int:
        """The step the budget reaches at the speed of the ``steps`` since ``probe_start`` (never more
        than ``limit``); it becomes ``train.total_iter``, so the cosine schedule ends on time. Every rank
        takes rank 0's figure, so all stop together."""
        rate = steps / max(now - probe_start, 1e-9)
        steps = min(limit, self.step + int(rate * (deadline - now)))
        sized = torch.tensor(steps, dtype=torch.int64, device=self.device)
        if self.world > 1:
            dist.broadcast(sized, 0)
        (log.info if not self.sized else log.debug)(
            "%.2f it/s: %d steps fit the time budget", rate, int(sized)
        )
        self.cfg["train"]["total_iter"], self.sized = int(sized), True
        return int(sized)

    def _log(self, logs: dict[str, float], started: int, t0: float) -> None:
        every = self.cfg["train"]["log_every"]
        if not every or self.step % every:
            return
        for k, v in logs.items():
            self.writer.add_scalar(f"loss/{k}", v, self.step)
        self.writer.add_scalar("lr/g", self.optimizers["g"].param_groups[0]["lr"], self.step)
        rate = (self.step - started) / max(time.time() - t0, 1e-9)
        # Where the time went since the last log line, in seconds per iteration.
        seconds = {f"s_{k}": round(v / every, 4) for k, v in sorted(self.timings.items())}
        self.timings = {}
        record = {
            "step": self.step,
            "time_s": round(time.time() - t0, 1),
            "it_per_s": round(rate, 4),
            "total_iter": self.cfg["train"]["total_iter"],
            "lr_g": self.optimizers["g"].param_groups[0]["lr"],
            **seconds,
            **logs,
        }
        self._append_jsonl("train_log.jsonl", record)
        text = " ".join(
            f"{k}={v:.4g}" for k, v in logs.items() if k.startswith(("l_g_total", "l_g_pix", "l_d"))
        )
        tqdm.write(f"step {self.step}: {text}")

    def _log_train_images(self, batch: dict[str, Tensor]) -> None:
        from torchvision.utils import make_grid

        with torch.no_grad():
            out, _ = self.net_g_ema(batch["lq"][:4].to(self.device), return_rgb=False)
        rows = torch.cat([batch["lq"][:4], out.float().cpu(), batch["gt"][:4]])
        grid = make_grid(rows, nrow=min(4, batch["lq"].shape[0]), normalize=True, value_range=(-1, 1))
        self.writer.add_image("train/lq_ema_gt", grid, self.step)

    def _run_validation(self) -> None:
        failed = None
        if self.rank == 0 and self.val_set is not None:
            try:
                metrics = self.validate()
            except DataError as err:  # the other ranks wait below: they must hear of it, not hang
                failed = str(err)
            else:
                for k, v in metrics.items():
                    self.writer.add_scalar(f"val/{k}", v, self.step)
                self._append_jsonl("val_log.jsonl", {"step": self.step, **metrics})
                shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
                tqdm.write(f"validation @ {self.step}: {shown}")
        if self._anyone(failed is not None)[0]:  # the ranks wait here for rank 0's validation
            raise self._shared_error(failed)

    def _drop_records_after(self, step: int) -> None:
        """Remove the log records of steps after ``step`` (a run stopped past its last checkpoint, or one
        resumed from an older checkpoint, logged steps that are now trained again; at step 0, the logs of
        a run that died before its first checkpoint, which a new run would append to)."""
        for name in ("train_log.jsonl", "val_log.jsonl"):
            path = self.out_dir / name
            if not path.is_file():
                continue
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            # a line that is no record (cut short) is kept, as it was: only later steps go
            kept = [line for line in lines if (record := log_record(line)) is None or record["step"] <= step]
            if len(kept) < len(lines):
                with atomic_path(path) as tmp:
                    tmp.write_text("".join(kept), encoding="utf-8")
                why = (
                    f"after step {step} (trained again)"
                    if step
                    else "of an earlier run that left no checkpoint"
                )
                log.info("%s: dropped %d records %s; TensorBoard's too", name, len(lines) - len(kept), why)

    def _append_jsonl(self, name: str, record: dict[str, Any]) -> None:
        with open(self.out_dir / name, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def _refuse_trained_on(val_files: list[Path], train_files: list[str], val: str | Path) -> None:
    """Refuse validation faces that are also training faces (data.val = data.train, or files in both,
    through links too): their metrics would be no held-out score, and the model card calls them one."""
    trained = {Path(p).resolve() for p in train_files}
    shared = [p for p in val_files if p.resolve() in trained]
    if shared:
        what = (
            "holds only training faces"
            if len(shared) == len(val_files)
            else f"shares {len(shared)} of its {len(val_files)} faces with the training faces"
        )
        raise ConfigError(
            f"data.val {val} {what} (e.g. {shared[0].name}): validation must be on "
            "held-out faces (another folder, or data.val_holdout)"
        )


def _warn_named_like(val_files: list[Path], keys: list[str], lmdb: Path, val: str | Path) -> None:
    """Warn when validation faces are named like trained lmdb entries: an lmdb keeps no paths to compare,
    and the folder it was prepared from, given as data.val, would be validated on trained faces (a name
    alone does not prove it: other datasets number their faces alike, so this is no refusal)."""
    trained = set(keys)
    shared = [p for p in val_files if p.stem in trained]
    if shared:
        log.warning(
            "data.val %s has %d of its %d faces named like faces trained on from %s (e.g. %s): if %s was "
            "made from this folder, validation is on trained faces (give held-out faces or data.val_holdout)",
            val, len(shared), len(val_files), lmdb.name, shared[0].name, lmdb.name,
        )  # fmt: skip


def _dump_yaml(cfg: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(cfg, sort_keys=False)


def _changed_settings(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: saved → now`` for every setting that differs between two configs (nested keys dotted)."""
    changed = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_settings(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}: {a!r} → {b!r}")
    return changed


# Signals that stop training after the current step, with its checkpoint: Ctrl-C, and what a scheduler
# (SLURM), docker stop or systemd sends, or a closed terminal.
STOP_SIGNALS = tuple(
    sig for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if sig is not None
)


@contextmanager
def _interrupt_between_steps() -> Iterator[Callable[[], bool]]:
    """While training: Ctrl-C, SIGTERM and SIGHUP only set a flag (the loop checkpoints its last step and
    stops); a second Ctrl-C interrupts at once. A repeated SIGTERM or SIGHUP does not: torchrun forwards
    to its ranks the signal they may already have had, and a job manager that insists sends SIGKILL. Outside
    the main thread (no signal handler there) the callable says False."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    asked = threading.Event()

    def ask(signum: int, frame: object) -> None:
        if asked.is_set():
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        asked.set()
        if signum == signal.SIGINT:
            log.info("Ctrl-C: stopping after this step (press again to stop at once)")
        else:
            if signum == getattr(signal, "SIGHUP", None):
                _leave_the_terminal()
            log.info("%s: stopping after this step, with its checkpoint", signal.Signals(signum).name)

    # a signal the process was started ignoring stays ignored: nohup's SIGHUP must not stop the run
    taken = [sig for sig in STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN]
    previous = {sig: signal.signal(sig, ask) for sig in taken}
    try:
        yield asked.is_set
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _leave_the_terminal() -> None:
    """After a hangup, writing to the closed terminal fails (EIO), and the run would die on its next log
    line instead of checkpointing: output that went to a terminal goes nowhere from now on."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            if stat.S_ISCHR(os.fstat(fd).st_mode):  # a terminal (a hung-up one may no longer say isatty)
                os.dup2(devnull, fd)
    finally:
        os.close(devnull)


@contextmanager
def _batches(loader: DataLoader) -> Iterator[Iterator[Any]]:
    """The loader's batches (endless: the sampler wraps around epochs), its worker processes stopped however
    the loop ends: an error keeps the loop's frame, and so the iterator, alive with its traceback (an
    uncaught one until the exit), and the workers, which ignore SIGTERM, would then hang the exit."""
    batches = iter(loader)
    try:
        yield batches
    finally:
        stop = getattr(batches, "_shutdown_workers", None)  # (an iterator without workers has none)
        if stop is not None:
            stop()
            # A worker stuck in a read outlives its stop (it ignores SIGTERM, see _ignore_stop_signals) and
            # would hang the exit, which waits for every child process.
            for worker in getattr(batches, "_workers", ()):
                if worker.is_alive():
                    worker.kill()


def _ignore_stop_signals(worker_id: int) -> None:
    """In a data loader worker: a terminal's Ctrl-C and a SIGTERM or SIGHUP sent to the whole job are the
    training process's to act on (it stops its workers itself, and they end with it if it dies); a worker
    they ended would fail the batch the loop is waiting for, and with it the step that checkpoints."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest ``step_*.pt`` in ``output_dir/checkpoints`` (None when there is none)."""
    found = sorted((Path(output_dir) / "checkpoints").glob(CHECKPOINT_GLOB))
    return found[-1] if found else None


# --------------------------------------------------------------------------------------------------- CLI
def _distributed_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) when not launched by it."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def run(
    cfg: dict[str, Any], rank: int, world_size: int, resume: str | None = None, local_rank: int = 0
) -> Trainer:
    """Build a trainer for this process (initialising the process group when world_size > 1) and train."""
    try:
        device = select_device(cfg["device"])
    except ValueError as err:
        raise ConfigError(f"device: {first_line(err)}") from None
    out = Path(cfg["output_dir"])
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir {out} is a file, not a folder")
    if cfg["train"]["threads"] > 0:
        torch.set_num_threads(cfg["train"]["threads"])
    if world_size > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(
                "nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size
            )
    trainer = Trainer(cfg, rank, world_size, device)
    torch.manual_seed(cfg["seed"] * 1000 + rank)  # per-rank noise for the generator's random noise inputs
    if not resume:
        _check_fresh(cfg["output_dir"])
    else:
        path = latest_checkpoint(cfg["output_dir"]) if resume == "auto" else Path(resume)
        if path is None:
            log.info("no checkpoint in %s: starting from scratch", cfg["output_dir"])
        elif not path.is_file():
            raise ConfigError(f"checkpoint to resume from not found: {path}")
        else:
            trainer.resume(path)
            log.info("resumed from %s at step %d", path, trainer.step)
    trainer.fit()
    return trainer


def _check_fresh(output_dir: str | Path) -> None:
    """Refuse to start a new run over an earlier one: its checkpoints would be overwritten and pruned, and
    its log and config mixed with the new run's."""
    found = latest_checkpoint(output_dir)
    if found is not None:
        raise ConfigError(
            f"output_dir {output_dir} already holds a run (newest checkpoint {found.name}): continue it with "
            "--resume auto, or give another output_dir"
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.train", description="Train a GFPGAN generator.")
    p.add_argument("--config", required=True, help="YAML config (see train/configs/)")
    p.add_argument("--resume", default=None, help="checkpoint file, or 'auto' for the newest in output_dir")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. data.batch_size=4")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # overrides before or after --resume
    rank, world, local_rank = _distributed_env()
    # Rank 0 logs (a warning said by every rank would print once per process); the others only errors.
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.ERROR, format="%(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        run(cfg, rank, world, args.resume, local_rank)
    except (
        ConfigError,
        DataError,
        WeightsError,
        UnknownArchitectureError,
        TrainingDivergedError,
        CheckpointWriteError,
    ) as err:
        message = str(err).strip()
        if message.startswith("Caught ") and "Traceback" in message:  # re-raised from a loader worker
            message = message.splitlines()[-1].split(": ", 1)[-1]  # the worker's own error, not its trace
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
