"""``python -m train {prepare,components,crop,train,export,publish,evaluate} ...``: training entry point."""

from __future__ import annotations

import argparse
import sys


def _prepare(argv: list[str]) -> int:
    from train.data import DataError, prepare_folder

    p = argparse.ArgumentParser(
        prog="python -m train prepare", description="Resize aligned faces for training."
    )
    p.add_argument("src", help="folder of aligned faces (e.g. FFHQ 1024 px)")
    p.add_argument("dst", help="output folder (or NAME.lmdb with --lmdb)")
    p.add_argument("--size", type=int, default=512, help="training size in pixels (data.out_size)")
    p.add_argument(
        "--lmdb",
        action="store_true",
        help="write the resized faces into a basicsr-style lmdb DST.lmdb only (no folder of PNGs)",
    )
    args = p.parse_args(argv)
    try:
        print(prepare_folder(args.src, args.dst, args.size, lmdb=args.lmdb))
    except (DataError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _detector_options(p: argparse.ArgumentParser) -> None:
    """--detector and --weights-dir, for the commands that find faces."""
    p.add_argument(
        "--detector", default="retinaface_resnet50", help="retinaface_resnet50 or retinaface_mobile0.25"
    )
    p.add_argument("--weights-dir", default=None, help="folder searched first for the detector weights")


def _components(argv: list[str]) -> int:
    from gfp.loading import WeightsError
    from train.data import DataError, detect_components, save_component_file

    p = argparse.ArgumentParser(
        prog="python -m train components",
        description="Eye and mouth boxes from RetinaFace's 5 landmarks, for datasets without a landmarks "
        "file (use the output as data.components.file with data.components.source=file).",
    )
    p.add_argument("src", help="folder of aligned faces")
    p.add_argument("out", help="output .pth file (official structure, loads with weights_only=True)")
    _detector_options(p)
    args = p.parse_args(argv)
    try:
        found, missed = detect_components(args.src, args.detector, args.weights_dir)
    except (DataError, WeightsError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(save_component_file(found, args.out))
    if missed:
        print(f"no face found in {len(missed)} image(s), e.g. {missed[0]}: remove them or use the template")
    return 1 if missed else 0


def _crop(argv: list[str]) -> int:
    from gfp.loading import WeightsError
    from train.data import DataError, crop_faces

    p = argparse.ArgumentParser(
        prog="python -m train crop",
        description="Aligned faces cut from whole photos (RetinaFace landmarks, FFHQ alignment), as more "
        "training faces: give the output folder to data.extra_train.",
    )
    p.add_argument("photos", help="folder of whole photos")
    p.add_argument("out", help="output folder of aligned PNG faces")
    p.add_argument("--size", type=int, default=512, help="face size in pixels (data.out_size)")
    p.add_argument(
        "--min-size",
        type=int,
        default=384,
        help="keep a face only if its crop covers at least this many photo pixels across (default 384)",
    )
    _detector_options(p)
    args = p.parse_args(argv)
    if args.size < 16 or args.min_size < 1:
        p.error(f"--size must be at least 16 and --min-size at least 1, got {args.size} and {args.min_size}")
    try:
        written, skipped = crop_faces(
            args.photos, args.out, args.size, args.min_size, args.detector, args.weights_dir
        )
    except (DataError, WeightsError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(written)} faces written to {args.out} ({skipped} too small or cut off by the border)")
    return 0 if written else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = ("prepare", "components", "crop", "train", "export", "publish", "evaluate")
    usage = f"usage: python -m train {{{','.join(commands)}}} ... (add -h after a command for its options)"
    if argv[:1] in (["-h"], ["--help"]):
        print(usage)
        return 0
    if not argv or argv[0] not in commands:
        unknown = f"error: unknown command {argv[0]!r}\n" if argv else ""
        print(f"{unknown}{usage}", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "prepare":
        return _prepare(rest)
    if command == "components":
        return _components(rest)
    if command == "crop":
        return _crop(rest)
    if command == "train":
        from train.train import main as run
    elif command == "export":
        from train.export import main as run
    elif command == "evaluate":
        from train.evaluate import main as run
    else:
        from train.publish import main as run
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
