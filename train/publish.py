"""Publish an exported generator (or a training checkpoint, exported on the way) to the Hugging Face Hub.

``python -m train.publish SOURCE --repo-id owner/name [--private] [--dry-run] [--out-dir DIR]``

SOURCE is an export folder, a ``step_*.pt`` checkpoint or a training run folder (its newest checkpoint).
The folder is checked first (all three files present, it loads through ``gfp.loading.load_generator``, and
its card and training config name no local folders);
``--dry-run`` stops there and only writes it.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

import yaml

from gfp.loading import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, WeightsError, load_generator
from train.export import (
    EXPORT_FILES,
    TRAINING_CONFIG_FILE,
    ExportError,
    export,
    find_checkpoint,
    model_card,
    read_checkpoint,
    run_folder,
    shareable,
    validation_metrics,
)

REQUIRED = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)


class PublishError(ValueError):
    """A folder that is not ready to publish, or an upload that failed."""


def check_folder(folder: str | Path) -> list[str]:
    """Raise unless ``folder`` holds the published format and loads as a generator; returns the files to
    upload: the folder's own files, not hidden ones (such as a killed export's temporary file) nor its
    sub-folders."""
    root = Path(folder)
    missing = [name for name in REQUIRED if not (root / name).is_file()]
    if missing:
        raise PublishError(f"{root} is not ready to publish: missing {', '.join(missing)}")
    load_generator(root)
    leaks = _local_paths(root)
    if leaks:
        raise PublishError(
            f"{root} is not ready to publish: {leaks}, which would name this machine's folders on the Hub; "
            "export it again (python -m train export cuts them) or edit them out"
        )
    return sorted(p.name for p in root.iterdir() if p.is_file() and not p.name.startswith("."))


def _local_paths(root: Path) -> str:
    """Where an export folder (one written before export cut them, or edited) holds local paths: the keys
    of its training_config.yml that :func:`train.export.shareable` would cut, and the card's mention of the
    home folder; "" when none."""
    found = []
    config = root / TRAINING_CONFIG_FILE
    if config.is_file():
        try:
            cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise PublishError(f"{config} is not a YAML file: {str(err).splitlines()[0]}") from None
        keys = shareable(cfg)[1] if isinstance(cfg, dict) else []
        if keys:
            found.append(f"{TRAINING_CONFIG_FILE} has absolute paths ({', '.join(keys)})")
    home = os.path.expanduser("~")
    if home not in ("~", "/") and home in (root / CARD_FILE).read_text(encoding="utf-8", errors="replace"):
        found.append(f"{CARD_FILE} names the home folder {home}")
    return "; ".join(found)


def prepare(source: str | Path, repo_id: str, out_dir: str | Path | None = None, **card_args) -> Path:
    """Export folder for ``source``: used as is when it is an export folder; a checkpoint, or a run folder's
    newest, is exported first (into ``out_dir``, default ``RUN/export``)."""
    src = Path(source)
    if src.is_dir() and not (src / "checkpoints").is_dir():
        return src
    checkpoint = find_checkpoint(src)
    state = read_checkpoint(checkpoint)
    run = run_folder(checkpoint)  # a lone checkpoint file: its export goes beside it, not two folders up
    default = (
        run / "export" if run is not None else checkpoint.resolve().with_name(f"{checkpoint.stem}_export")
    )
    folder = Path(out_dir) if out_dir else default
    metrics = validation_metrics(checkpoint, state["step"])
    card = model_card(state["config"], state["step"], metrics, repo_name=repo_id, **card_args)
    return export(checkpoint, folder, card=card, state=state)


def publish(
    folder: str | Path, repo_id: str, private: bool = False, dry_run: bool = False, token: str | None = None
) -> str:
    """Create (if needed) the model repo and upload the folder's files (:func:`check_folder`), deleting from
    the repo any export file the folder lacks; returns the repo URL (dry run: the folder)."""
    files = check_folder(folder)
    if dry_run:
        print(f"dry run: would upload {', '.join(files)} from {folder} to {repo_id} (private={private})")
        return str(folder)
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message="Upload GFPGAN generator",
            allow_patterns=[glob.escape(name) for name in files],  # what the check and the dry run listed
            # an export's file this one lacks (an earlier --official-pth) is of other weights: not kept
            delete_patterns=[name for name in EXPORT_FILES if name not in files],
        )
    except Exception as err:  # network, auth and permission errors all end the same way for the user
        raise PublishError(f"upload to {repo_id} failed: {type(err).__name__}: {err}") from err
    return str(url)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.publish", description=__doc__.splitlines()[0])
    p.add_argument("source", help="export folder or training checkpoint")
    p.add_argument("--repo-id", required=True, help="Hugging Face repo id, owner/name")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", action="store_true", help="write and check the folder, upload nothing")
    p.add_argument("--out-dir", default=None, help="where to export a checkpoint (default: RUN/export)")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN / `hf auth login`)")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--dataset", action="append", default=None)
    p.add_argument("--base-model", default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    args = build_parser().parse_args(argv)
    try:
        validate_repo_id(args.repo_id)
    except HFValidationError as err:
        reason = str(err).splitlines()[0]
        print(f"error: --repo-id {args.repo_id!r} is not a Hub repo id: {reason}", file=sys.stderr)
        return 2
    try:
        folder = prepare(
            args.source, args.repo_id, args.out_dir,
            license_id=args.license, datasets=args.dataset, base_model=args.base_model,
        )  # fmt: skip
        result = publish(folder, args.repo_id, private=args.private, dry_run=args.dry_run, token=args.token)
    except (ExportError, PublishError, WeightsError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"published: {result}" if not args.dry_run else f"ready to publish: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
