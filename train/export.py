"""Export a training checkpoint's (EMA) generator in the published format, with a model card.

``python -m train.export CHECKPOINT.pt OUT_DIR [--raw] [--license ...] [--dataset ...] [--official-pth]``

The folder (``config.json`` + ``model.safetensors`` + ``README.md``) is what ``gfp.loading`` loads by path
or Hugging Face repo id, so ``python -m gfp -v OUT_DIR`` and ``python app.py --model OUT_DIR`` use it.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch
import yaml

from gfp.archs import GeneratorConfig, UnknownArchitectureError, build_generator, detect_config
from gfp.loading import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, save_pretrained
from gfp.messages import load_failure
from train.config import DEFAULTS, identity_start

METRIC_NAMES = {"psnr": "PSNR", "ssim": "SSIM", "id_cos": "Identity cosine similarity"}
"""What the card shows (each higher is better); the validation log has them for the model's output and,
with :data:`INPUT_SUFFIX`, for its degraded input."""
INPUT_SUFFIX = "_lq"
TRAINING_CONFIG_FILE = "training_config.yml"
OFFICIAL_FILE = "generator_official.pth"
CHECKPOINT_GLOB = "step_*.pt"
"""A run's checkpoints, ``RUN/checkpoints/step_XXXXXXXX.pt``: the newest sorts last."""
EXPORT_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, TRAINING_CONFIG_FILE, OFFICIAL_FILE)
"""Every file an export may write (the official .pth only with ``--official-pth``)."""
HIDDEN_FIELDS = ("input_is_latent",)
"""GeneratorConfig fields that no weight shows, so a .pth cannot carry them (others are recognised)."""


class ExportError(ValueError):
    """A checkpoint that cannot be exported (message says why)."""


def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself, or the newest checkpoint of a run folder (``RUN/checkpoints/step_*.pt``)."""
    p = Path(path)
    if p.is_dir():
        found = sorted((p / "checkpoints").glob(CHECKPOINT_GLOB))
        if not found:
            raise ExportError(f"no checkpoint in {p / 'checkpoints'} (is {p} a training run folder?)")
        return found[-1]
    if not p.is_file():
        raise ExportError(f"checkpoint not found: {p}")
    return p


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A training checkpoint written by ``train.train`` (loaded with ``weights_only=True``), its tensors
    on ``map_location``; ``ExportError`` for a file that is none, naming the newest older checkpoint beside
    it that reads (a run killed while writing, a full disk or a copy cut short spoil the newest one only).
    That one is named, never taken instead: it is another step's weights."""
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"checkpoint not found: {p}")
    try:
        return _load_checkpoint(p, map_location)
    except ExportError as err:
        older = (q for q in sorted(p.parent.glob(CHECKPOINT_GLOB), reverse=True) if q.name < p.name)
        readable = next((q for q in older if _readable(q)), None)
        if readable is None:
            raise
        newest = f"the newest checkpoint beside it that reads is {readable}"
        raise ExportError(f"{err}; {newest}: give that file instead (an earlier step)") from err


def _load_checkpoint(p: Path, map_location: str | torch.device, mmap: bool = False) -> dict[str, Any]:
    """:func:`read_checkpoint` of an existing file, without the look at the others beside it; ``mmap``:
    the tensors are not read (a quick test that the file is whole)."""
    try:
        state = torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:  # torch's text would advise loading it unsafely: never
        raise ExportError(f"{p} is not a readable training checkpoint: no pickle of tensors only") from None
    # Arbitrary bytes fail the unpickler in arbitrary ways (KeyError, IndexError, ...): one answer.
    except Exception as err:
        raise ExportError(f"{p} is not a readable training checkpoint: {load_failure(err)}") from err
    if not isinstance(state, dict) or "net_g_ema" not in state or "config" not in state:
        raise ExportError(f"{p} is not a train.train checkpoint (no net_g_ema/config)")
    return state


def _readable(p: Path) -> bool:
    """Whether ``p`` reads as a training checkpoint (memory-mapped: its tensors are not read)."""
    try:
        _load_checkpoint(p, "cpu", mmap=True)
    except ExportError:
        return False
    return True


def run_folder(checkpoint: str | Path) -> Path | None:
    """The run folder a checkpoint belongs to (``RUN/checkpoints/step_*.pt``); None for a lone file."""
    folder = Path(checkpoint).resolve().parent
    return folder.parent if folder.name == "checkpoints" else None


def log_record(line: str) -> dict[str, Any] | None:
    """One record of a run's JSON-lines log (``train_log.jsonl``, ``val_log.jsonl``), or None for a line
    that is none: a killed run or a full disk can cut the last one short."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int | float) else None


def validation_metrics(checkpoint: str | Path, step: int) -> dict[str, float]:
    """The validation record logged at ``step`` (or the latest before it) in the checkpoint's run: the
    model's metrics, the degraded input's (``psnr_lq``, ...: the baseline it must beat) and the ``step`` it
    was logged at (the card names that step, not the checkpoint's)."""
    run = run_folder(checkpoint)
    log = None if run is None else run / "val_log.jsonl"
    if log is None or not log.is_file():
        return {}
    best: dict[str, Any] = {}
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        record = log_record(line)
        if record is not None and record["step"] <= step:
            best = record
    if not any(k in METRIC_NAMES for k in best):
        return {}
    found = {k: float(v) for k, v in best.items() if k.removesuffix(INPUT_SUFFIX) in METRIC_NAMES}
    return {"step": float(best["step"]), **found}


def shareable(cfg: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A copy of a training config fit to publish, and the keys it changed: an absolute or home path
    (``/home/me/data/faces``, ``~/faces``, ``C:\\data\\faces``) names this machine's folders and often its
    user, so only its last part (``faces``) is kept; relative paths, model names and repo ids stay."""
    changed: list[str] = []

    def walk(value: Any, key: str) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, key) for v in value]
        if not (isinstance(value, str) and _local_path(value)):
            return value
        if key not in changed:
            changed.append(key)
        return PureWindowsPath(value).name or "."  # (a Windows path's parts are split at / and \\ both)

    return walk(cfg, ""), changed


def _local_path(value: str) -> bool:
    """Whether ``value`` is an absolute or home path, on POSIX or Windows."""
    return value.startswith("~") or PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute()


def training_config_text(cfg: dict[str, Any]) -> str:
    """``training_config.yml`` of an export: the run's config, :func:`shareable` (a comment names the keys
    cut to their last part, to point at one's own copies before training again)."""
    public, changed = shareable(cfg)
    note = (
        f"# Local paths cut to their last part, not to publish this machine's folders: {', '.join(changed)}\n"
        "# (set them to your own copies to train again; the run folder's config.yml has them whole)\n"
        if changed
        else ""
    )
    return note + yaml.safe_dump(public, sort_keys=False)


def model_card(
    cfg: dict[str, Any],
    step: int,
    metrics: dict[str, float],
    license_id: str = "apache-2.0",
    datasets: list[str] | None = None,
    base_model: str | None = None,
    repo_name: str | None = None,
    ema: bool = True,
    half: bool = False,
) -> str:
    """README.md with Hugging Face YAML metadata (license, tags, base model, data, metrics) and usage;
    ``ema`` False: the card of a raw (not EMA) generator, whose logged metrics are the EMA's; ``half``: the
    weights are stored as float16. Local paths are cut to their last part (:func:`shareable`): a card is
    written to be published."""
    cfg = shareable(cfg)[0]
    gen = cfg["model"]["generator"]
    name = repo_name or cfg["name"]
    # what -v and --model take: a repo id (owner/name), else the folder the card is in
    spec = repo_name if repo_name and "/" in repo_name else "<this repo id or folder>"
    meta: dict[str, Any] = {
        "license": license_id,
        "library_name": "gfp",
        "pipeline_tag": "image-to-image",
        "tags": ["face-restoration", "gfpgan", "image-to-image", "pytorch", "safetensors"],
    }
    if base_model:
        meta["base_model"] = base_model
    if datasets:
        meta["datasets"] = datasets
    logged_at = int(metrics.get("step", step))
    inputs = {k: metrics[k + INPUT_SUFFIX] for k in METRIC_NAMES if k + INPUT_SUFFIX in metrics}
    metrics = {k: v for k, v in metrics.items() if k in METRIC_NAMES}
    if metrics:
        meta["model-index"] = [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "image-to-image", "name": "Blind face restoration"},
                        "dataset": {
                            "name": "held-out validation faces (synthetic degradation)",
                            "type": "custom",
                        },
                        "metrics": [
                            {"type": k, "name": METRIC_NAMES[k], "value": round(v, 4)}
                            for k, v in metrics.items()
                        ],
                    }
                ],
            }
        ]
    rows = "\n".join(
        f"| {METRIC_NAMES[k]} | {v:.4f} | {f'{inputs[k]:.4f}' if k in inputs else '(not logged)'} |"
        for k, v in metrics.items()
    )
    worse = [METRIC_NAMES[k] for k, v in metrics.items() if k in inputs and v < inputs[k]]
    below = (
        f"\n**Below its input** on {', '.join(worse)}: the restored faces score lower against the originals "
        "than the degraded faces given to it did (an early or failed training).\n"
        if worse
        else ""
    )
    loss = cfg["loss"]
    identity_from = identity_start(cfg)
    # no identity network (model.identity.arch none) or no weight: no identity loss was trained
    identity_on = cfg["model"]["identity"]["arch"] != "none" and float(loss["identity_weight"]) > 0
    if int(loss.get("gan_from", 0)) >= step:
        adversarial = "no adversarial or component loss (reconstruction only up to this step); " + (
            f"identity {loss['identity_weight']} from step {identity_from}"
            if identity_on and identity_from is not None and identity_from < step
            else "no identity loss"
        )
    else:
        identity = f"identity {loss['identity_weight']}" if identity_on else "no identity loss"
        adversarial = (
            f"from step {loss.get('gan_from', 0)}: GAN {loss['gan_weight']}, component GAN "
            f"{loss['component_gan_weight']} (style {loss['component_style_weight']}), {identity}, "
            f"R1 {loss['r1_weight']}"
        )
    folders = ", ".join(f"`{f}`" for f in [cfg["data"]["train"], *(cfg["data"].get("extra_train") or [])])
    residual = ", its input added to its output" if gen.get("input_residual") else ""
    if gen.get("work_size"):
        residual = f", layers at {gen['work_size']} px whose correction is added to the full-size input"
        if gen.get("detail"):
            residual += " (with a full-size detail path)"
    kind = "EMA" if ema else "raw (not the EMA)"
    stored = ", its weights stored as float16 (`gfp` loads them as float32)" if half else ""
    validated = f"EMA generator, step {logged_at}" + ("" if ema else ": of the EMA, not of these raw weights")
    validation = f"""## Validation ({validated})

Scored against the original faces, beside the same score of the degraded input the model restored (the
baseline a restoration must beat).

| metric | this model | degraded input |
| --- | --- | --- |
{rows}
{below}"""
    if not metrics:  # no record to name a step or a score of
        validation = (
            f"## Validation\n\nNone logged up to step {step} (no validation faces, none scored yet, or no "
            "`val_log.jsonl` of the run beside the checkpoint).\n"
        )
    changed = [
        f"{key} {value!r} (official {DEFAULTS['degradation'][key]!r})"
        for key, value in cfg["degradation"].items()
        if key in DEFAULTS["degradation"] and value != DEFAULTS["degradation"][key]
    ]
    degraded = (
        "with the official GFPGAN recipe's degradation model, these settings changed: " + ", ".join(changed)
        if changed
        else "as in the official GFPGAN recipe"
    )
    return f"""---
{yaml.safe_dump(meta, sort_keys=False).strip()}
---

# {name}

A GFPGAN blind face restoration generator trained with the `train/` package of `gfp`
(architecture `{gen["arch"]}`, {cfg["data"]["out_size"]} px, channel multiplier
{gen.get("channel_multiplier")}, narrow {gen.get("narrow")}{residual}); exported from step {step} as
the {kind} generator{stored}.

## Use

```bash
python -m gfp -i inputs -o results -v {spec}
python app.py --model {spec}
```

## Training

- data: {folders}, degraded on the fly {degraded}
  (full settings in `training_config.yml`)
- loss weights: pixel {loss["pixel_weight"]}, pyramid {loss["pyramid_weight"]},
  perceptual {loss["perceptual_weight"]} (style {loss["style_weight"]}); {adversarial}
- initialisation: {cfg["model"]["pretrained"] or "random"}; StyleGAN2 prior: {cfg["model"]["prior"] or "none"}

{validation}"""


def export(
    checkpoint: str | Path,
    out_dir: str | Path,
    use_ema: bool = True,
    card: str | None = None,
    official_pth: bool = False,
    half: bool = False,
    state: dict[str, Any] | None = None,
) -> Path:
    """Write the generator of ``checkpoint`` (a file or a run folder's newest) to ``out_dir`` in the
    published format (+ official .pth); ``half`` stores float16 weights (half the size, loads as float32).
    ``state``: the checkpoint as the caller already read it (read once: a running training may prune the
    file meanwhile)."""
    checkpoint = find_checkpoint(checkpoint)
    state = state if state is not None else read_checkpoint(checkpoint)
    config = GeneratorConfig.from_dict(state["config"]["model"]["generator"])
    net = build_generator(config)
    net.load_state_dict(state["net_g_ema" if use_ema else "net_g"], strict=True)
    if official_pth:  # checked before anything is written
        _check_official_layout(net, config)
    if card is None:
        metrics = validation_metrics(checkpoint, state["step"])
        card = model_card(state["config"], state["step"], metrics, ema=use_ema, half=half)
    if half:
        net = net.half()
    folder = save_pretrained(net, config, out_dir, card=card)
    (Path(folder) / TRAINING_CONFIG_FILE).write_text(training_config_text(state["config"]), encoding="utf-8")
    official = Path(folder) / OFFICIAL_FILE
    if official_pth:  # the official layout, for tools that read GFPGAN .pth files
        torch.save({"params_ema": net.state_dict()}, official)
    else:
        official.unlink(missing_ok=True)  # an earlier export's, of other weights: publish would upload it
    return Path(folder)


def _check_official_layout(net: torch.nn.Module, config: GeneratorConfig) -> None:
    """``ExportError`` when a .pth, which carries no config, would load as another network than ``config``
    (a layout may be recognised under other but equivalent numbers, e.g. channel multiplier × narrow; what
    no weights show, :data:`HIDDEN_FIELDS`, is lost): it would restore faces wrongly, silently."""
    try:
        read_as = detect_config(net.state_dict())
    except UnknownArchitectureError as err:
        problem = str(err)
    else:
        problem = ", ".join(
            f"{k} {getattr(config, k)} (read as {getattr(read_as, k)})"
            for k in HIDDEN_FIELDS
            if getattr(read_as, k) != getattr(config, k)
        )
    if problem:
        raise ExportError(
            "--official-pth: a .pth carries no config, and its weights would load as another layout: "
            f"{problem}; leave out --official-pth and share the folder (its config.json keeps the layout)"
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.export", description=__doc__.splitlines()[0])
    p.add_argument(
        "checkpoint",
        help="training checkpoint (runs/NAME/checkpoints/step_*.pt) or a run folder (its newest)",
    )
    p.add_argument("out_dir", help="folder to write config.json + model.safetensors + README.md into")
    p.add_argument("--raw", action="store_true", help="export the raw generator instead of the EMA one")
    p.add_argument("--license", default="apache-2.0", help="license id for the model card")
    p.add_argument("--dataset", action="append", default=None, help="dataset id for the card (repeatable)")
    p.add_argument("--base-model", default=None, help="Hub id of the model this was fine-tuned from")
    p.add_argument("--name", default=None, help="model name / repo id shown in the card")
    p.add_argument("--official-pth", action="store_true", help="also write generator_official.pth")
    p.add_argument("--half", action="store_true", help="store float16 weights (half the file size)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        checkpoint = find_checkpoint(args.checkpoint)
        state = read_checkpoint(checkpoint)
        metrics = validation_metrics(checkpoint, state["step"])
        card = model_card(
            state["config"], state["step"], metrics, args.license, args.dataset, args.base_model, args.name,
            ema=not args.raw, half=args.half,
        )  # fmt: skip
        folder = export(
            checkpoint,
            args.out_dir,
            use_ema=not args.raw,
            card=card,
            official_pth=args.official_pth,
            half=args.half,
            state=state,
        )
    except (ExportError, OSError) as err:  # OSError: e.g. the output is a file
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported step {state['step']} to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
