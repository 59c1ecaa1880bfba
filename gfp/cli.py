"""Command line: ``python -m gfp`` / ``gfp``, with the official ``inference_gfpgan.py`` flags and layout.

``gfp export-onnx MODEL OUT.onnx`` exports a generator instead (:mod:`gfp.onnx`); ``gfp batch INPUT -o
OUTPUT`` restores a whole archive with Ray Data, with these options and outputs (:mod:`gfp.batch`).

Outputs (as the official script writes them) under ``--output``::

    cropped_faces/{name}_{idx:02d}.png            aligned input faces (idx = face number - 1)
    restored_faces/{name}_{idx:02d}[_{suffix}].png restored faces
    cmp/{name}_{idx:02d}.png                      input | restored, side by side
    restored_imgs/{name}[_{suffix}].{ext}         the whole restored image (not with --aligned)
    restored_videos/{name}[_{suffix}].mp4         a restored video clip (see gfp.video)

A file that cannot be read or restored is reported in one line and skipped; the exit status is 1 if any
file failed, 2 for usage errors, missing weights and an output disk that is full or read-only (the run stops
at the first file it cannot write), 0 otherwise.
"""

from __future__ import annotations

import argparse
import errno
import glob
import os
import sys
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache, partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gfp import registry
from gfp.atomic import new_folders_undone, unwinding_on_termination
from gfp.background import scaled_size
from gfp.color import COLOR_FIXES
from gfp.devices import BACKENDS
from gfp.imageio import (
    WRITE_FORMATS,
    ImageMemoryError,
    ImageReadError,
    first_frame_note,
    is_image_name,
    read_icc_profile,
    read_image,
    size_error,
    write_image,
)
from gfp.messages import OptionError, first_line, shown
from gfp.pipeline import RestoreOptions, Restorer, RestoreResult
from gfp.stages import backends_text
from gfp.video import (
    VIDEO_CODECS,
    VideoError,
    VideoOptions,
    VideoResult,
    is_video,
    needs_plan,
    restore_video,
)
from gfp.weights.errors import WeightsError

MANIFEST = "manifest.jsonl"
"""``gfp batch``'s record of every input, in its output folder (see :mod:`gfp.batch`)."""
LOCK_FILE = ".gfp-batch.lock"
"""Held by the ``gfp batch`` job writing to an output folder (see :func:`gfp.batch.claim_output`)."""
JOB_FILES = frozenset({MANIFEST, LOCK_FILE})
"""The files ``gfp batch`` keeps beside its outputs: never inputs, so a folder restored into itself
(``-o`` the input folder) can be run again."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (official inference_gfpgan.py flags, plus ours); choices from gfp.registry."""
    p = argparse.ArgumentParser(
        prog="gfp",
        description="Restore faces in photos with GFPGAN (blind face restoration, generative facial prior).",
        epilog="Export a generator to ONNX: gfp export-onnx MODEL OUT.onnx (see gfp export-onnx --help). "
        "Restore a whole archive on a Ray cluster: gfp batch INPUT -o OUTPUT (see gfp batch --help).",
    )
    p.add_argument(
        "-i", "--input", default="inputs/whole_imgs", help="input image or folder (default: %(default)s)"
    )
    p.add_argument("-o", "--output", default="results", help="output folder (default: %(default)s)")
    add_restore_arguments(p)
    return p


def add_restore_arguments(p: argparse.ArgumentParser) -> None:
    """Add every restore option (all flags but input and output) to ``p``: shared with ``gfp batch``, so
    both commands take the same options with the same meaning."""
    versions = ", ".join(v.removeprefix("v") for v in registry.choice_names("generator"))
    p.add_argument(
        "-v",
        "--version",
        default=registry.DEFAULTS["generator"].removeprefix("v"),
        help=f"GFPGAN model: {versions}, a weights file or a Hub repo id (default: %(default)s)",
    )
    p.add_argument(
        "-s", "--upscale", type=float, default=2, help="final upscale, 1 to 8 (default: %(default)s)"
    )
    p.add_argument(
        "--bg_upsampler",
        default=None,
        choices=registry.choice_names("upsampler"),
        help="background upsampler; 'none' = Lanczos resize (default: "
        f"{registry.default_for('upsampler', 'cpu')} on a CPU, {registry.DEFAULTS['upsampler']} on a GPU, "
        "or Lanczos with a note when its weights cannot be had; a name given here must be had)",
    )
    p.add_argument(
        "--bg_tile", type=int, default=400, help="background tile size, 0 = no tiling (default: %(default)s)"
    )
    p.add_argument(
        "--suffix", default=None, type=_file_name_part, help="suffix of the restored faces and images"
    )
    p.add_argument(
        "--only_center_face",
        action="store_true",
        help="only restore the face nearest the centre (= --faces center)",
    )
    p.add_argument(
        "--faces",
        default="all",
        help="faces to restore: all, largest, center, or face numbers from 1, left to right, as the output "
        "files number them (face N is NAME_{N-1:02d}.png), e.g. 1,3; the others stay as they are; in a video "
        "the faces are people tracked across frames, numbered as they appear (default: %(default)s)",
    )
    p.add_argument(
        "--min-face",
        type=int,
        default=0,
        metavar="PX",
        help="skip faces whose detected box is smaller than PX pixels of the input on its shorter side (in a "
        "video: the median over the face's frames); 0 = any size (default: %(default)s)",
    )
    p.add_argument(
        "--color-fix",
        default="none",
        choices=COLOR_FIXES,
        help="give each restored face its input's colours: wavelet (the input's colour and light under the "
        "restored detail) or adain (each channel's mean and spread); for models that tint or darken "
        "faces (default: %(default)s, the face as the model makes it)",
    )
    p.add_argument("--aligned", action="store_true", help="inputs are already FFHQ-aligned faces")
    p.add_argument(
        "--detect-max-side",
        type=int,
        default=None,
        help="detect faces on a copy shrunk to this longer side (e.g. 2048): much faster on big photos, and "
        "finds faces too large for the detector at full size (default: the full photo, as the official)",
    )
    p.add_argument(
        "--ext",
        default="auto",
        choices=["auto", "jpg", "png"],
        help="extension of restored images; auto = as the input, or png for a format that cannot be "
        "written (gif, ppm, ...) (default: %(default)s)",
    )
    p.add_argument(
        "-w",
        "--weight",
        type=float,
        default=0.5,
        help="official flag, kept for parity; no effect (use --strength)",
    )
    p.add_argument(
        "--strength",
        type=float,
        default=1.0,
        help="blend of restored (1) and input (0) face (default: %(default)s)",
    )
    p.add_argument(
        "--detector",
        default=registry.DEFAULTS["detector"],
        choices=registry.choice_names("detector"),
        help="face detector (default: %(default)s)",
    )
    p.add_argument(
        "--weights-dir", default=None, help="folder searched first for weight files (else $GFP_WEIGHTS_DIR)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    p.add_argument(
        "--half", action="store_true", help="float16 generator and background on a GPU (ignored on a CPU)"
    )
    p.add_argument(
        "--backend",
        default=None,
        choices=BACKENDS,
        help="what runs the generator and face parser: auto (default, or $GFP_BACKEND): OpenVINO on a CPU "
        "when installed, else PyTorch; torch; openvino (CPU; converts each model once, cached)",
    )
    p.add_argument(
        "--fp32",
        action="store_true",
        help="float32 throughout on a CPU (default: bfloat16 autocast for the face parser, clean "
        "generators and SRVGG backgrounds where the CPU computes bf16 natively, AVX512-BF16 or AMX)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="faces per generator batch (default: 1 on a CPU, 4 on a GPU)",
    )
    video = p.add_argument_group("video (mp4, mov, mkv, webm, avi ... → OUTPUT/restored_videos/NAME.mp4)")
    video.add_argument(
        "--video-codec",
        default="h264",
        choices=list(VIDEO_CODECS),
        help="codec of restored videos (default: %(default)s)",
    )
    video.add_argument(
        "--crf",
        type=int,
        default=18,
        help="video quality, lower = better: 0-51 for h264/h265, 0-63 for vp9/av1 (default: %(default)s)",
    )
    video.add_argument(
        "--no-smooth",
        dest="smooth",
        action="store_false",
        help="do not smooth face landmarks across frames (faces may jitter)",
    )


FIELD_DESTS = {"codec": "video_codec"}
"""The options whose flag's dest is not the option's field name (``--video-codec`` sets ``codec``)."""


@cache
def option_flags() -> dict[str, str]:
    """Each option's field name → the flag that sets it, in its long spelling (``min_face`` →
    ``--min-face``), read off :func:`add_restore_arguments`' parser, so that a renamed flag is followed: the
    words an :class:`OptionError` is said in to the CLI's and ``gfp batch``'s users."""
    parser = argparse.ArgumentParser(add_help=False)
    add_restore_arguments(parser)
    flags = {a.dest: max(a.option_strings, key=len) for a in parser._actions if a.option_strings}
    return flags | {field: flags[dest] for field, dest in FIELD_DESTS.items()}


def said(err: BaseException, name: str | None = None) -> str:
    """:func:`first_line` of ``err`` with the options it names as the flags that set them
    (:func:`option_flags`): ``--faces``, not ``faces``."""
    return first_line(err, name, option_flags())


def restore_options(args: argparse.Namespace) -> RestoreOptions:
    """The :class:`RestoreOptions` of parsed restore arguments (``ValueError`` for bad values)."""
    return RestoreOptions(
        version=args.version,
        upscale=args.upscale,
        bg_upsampler=args.bg_upsampler,
        bg_tile=args.bg_tile,
        only_center_face=args.only_center_face,
        aligned=args.aligned,
        strength=args.strength,
        detector=args.detector,
        detect_max_side=args.detect_max_side,
        batch_size=args.batch_size,
        weight=args.weight,
        color_fix=args.color_fix,
        faces=args.faces,
        min_face=args.min_face,
    )


def video_options(args: argparse.Namespace) -> VideoOptions:
    """The :class:`VideoOptions` of parsed restore arguments (``ValueError`` for bad values)."""
    return VideoOptions(codec=getattr(args, FIELD_DESTS["codec"]), crf=args.crf, smooth=args.smooth)


def make_restorer(args: argparse.Namespace) -> Restorer:
    """A :class:`Restorer` for parsed restore arguments (weights folder, device, precision, backend)."""
    bf16 = False if args.fp32 else None
    return Restorer(
        weights_dir=args.weights_dir, device=args.device, half=args.half, bf16=bf16, backend=args.backend
    )


def _file_name_part(text: str) -> str:
    """An argparse type: ``text`` as part of a file name (no folder separators, which would write
    elsewhere, or several faces into one file)."""
    if "/" in text or "\\" in text:
        raise argparse.ArgumentTypeError(f"{text!r} must be part of a file name: no '/' or '\\'")
    return text


def list_inputs(path: str) -> list[Path]:
    """The input file, or the files of an input folder in sorted order (as the official script globs), but
    ``gfp batch``'s own files (:data:`JOB_FILES`). A link to nothing (a photo on a drive not mounted) is
    listed, so that it is a failed file the summary names, not one left out without a word."""
    path = path.rstrip("/\\") or path
    if os.path.isfile(path):
        return [Path(path)]
    if os.path.isdir(path):
        listed = sorted(glob.glob(os.path.join(glob.escape(path), "*")))
        return [Path(p) for p in listed if is_input_file(p) and not is_job_file(p)]
    raise FileNotFoundError(f"input {path!r} is neither a file nor a folder")


def is_input_file(path: str) -> bool:
    """Whether ``path``, found in a folder or by a glob, is an input: a file, or a link to nothing (a photo
    on a drive not mounted), which fails when read and so is named, not left out without a word."""
    return os.path.isfile(path) or (os.path.islink(path) and not os.path.exists(path))


def is_job_file(path: str) -> bool:
    """Whether ``path`` is named as one of ``gfp batch``'s own files (:data:`JOB_FILES`), not an input."""
    return os.path.basename(path) in JOB_FILES


def save_outputs(
    result: RestoreResult,
    basename: str,
    in_ext: str,
    output: Path,
    suffix: str | None,
    ext: str,
    aligned: bool,
    icc_profile: bytes | None = None,
) -> list[Path]:
    """Write faces, comparisons and the restored image with the official names; returns the files written
    (each appears atomically). A face's index in its file name is its face number - 1
    (:mod:`gfp.selection`), whichever faces were chosen. ``icc_profile``, the input's colour profile, goes
    into every file whose format holds one: all their pixels are in the input's colour space. A write that
    fails (a full disk, Ctrl-C) deletes the files this call wrote before it, and the folders it made: a
    failed input leaves no faces without their image, and no empty folder."""
    write = partial(write_image, icc_profile=icc_profile)
    written: list[Path] = []
    with new_folders_undone():  # and the folders made for them, then left empty
        try:
            faces = zip(result.face_numbers, result.cropped_faces, result.restored_faces, strict=True)
            for number, cropped, restored in faces:
                face = f"{basename}_{number - 1:02d}"
                written.append(write(output / "cropped_faces" / f"{face}.png", cropped))
                written.append(write(output / "restored_faces" / f"{_suffixed(face, suffix)}.png", restored))
                comparison = np.concatenate((cropped, restored), axis=1)
                written.append(write(output / "cmp" / f"{face}.png", comparison))
            if not aligned:
                written.append(write(image_target(output, basename, in_ext, suffix, ext), result.image))
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
    return written


def image_target(output: Path, basename: str, in_ext: str, suffix: str | None, ext: str) -> Path:
    """Where the restored image of ``basename`` + ``in_ext`` goes: ``restored_imgs/{basename}[_{suffix}].
    {ext}``; ``ext`` "auto" keeps the input's extension, or takes png for a format that cannot be written
    (GIF, PPM, no extension ...)."""
    if ext == "auto":
        ext = in_ext.lstrip(".") if in_ext.lower() in WRITE_FORMATS else "png"
    return output / "restored_imgs" / f"{_suffixed(basename, suffix)}.{ext}"


def video_target(output: Path, basename: str, suffix: str | None) -> Path:
    """Where the restored clip ``basename`` goes: ``restored_videos/{basename}[_{suffix}].mp4``."""
    return output / "restored_videos" / f"{_suffixed(basename, suffix)}.mp4"


def main_output(output: Path, name: str, args: argparse.Namespace) -> Path | None:
    """The restored image or clip of the input file ``name`` under ``output`` (None for aligned faces,
    which have no whole image)."""
    basename, in_ext = os.path.splitext(os.path.basename(name))
    if is_video(name):
        return video_target(output, basename, args.suffix)
    return None if args.aligned else image_target(output, basename, in_ext, args.suffix, args.ext)


def output_group(name: str) -> str:
    """What the outputs of the input file ``name`` are named after: inputs of one group would overwrite each
    other's outputs (photos: the name without its extension, in every output folder; clips:
    ``restored_videos/`` and that name)."""
    stem = os.path.splitext(os.path.basename(name))[0]
    return f"restored_videos/{stem}" if is_video(name) else stem


CLASH = "its outputs would overwrite those of"
"""How :func:`output_clash` begins: a failed record that says it was never tried."""


def output_owners(names: Iterable[str], taken: dict[str, str] | None = None) -> dict[str, str]:
    """Which input each :func:`output_group` of ``names`` goes to, for :func:`output_clash`: the first
    input with a photo or video extension, else the first input (an iPhone's IMG_1234.AAE sidecar, XML,
    must not take the outputs of IMG_1234.JPG after it); ``taken`` (groups already written, by an earlier
    job into the same folder) keep their inputs."""
    names, owners = list(names), dict(taken or {})
    known = [name for name in names if is_video(name) or is_image_name(name)]
    for name in [*known, *names]:
        owners.setdefault(output_group(name), name)
    return owners


def output_clash(owners: dict[str, str], name: str) -> str | None:
    """Why the input ``name`` cannot be restored because its outputs would overwrite another input's
    (None: they would not); ``owners`` maps each :func:`output_group` to its input (:func:`output_owners`);
    a group not in it goes to ``name`` and is added."""
    first = owners.setdefault(output_group(name), name)
    if first == name:
        return None
    return f"{CLASH} {shown(first)} (same name without extension)"


def give_back(owners: dict[str, str], name: str) -> None:
    """Free the outputs of ``name``, which failed before writing any, for a later input of its group: an
    unreadable file must not keep a photo from being restored."""
    group = output_group(name)
    if owners.get(group) == name:
        del owners[group]


def check_output_folder(output: str) -> None:
    """Refuse an ``-o`` that cannot be the output folder (``ValueError``), before any work: an existing
    file (every input would be restored, then fail to write), a new name that looks like a file's
    (``-o result.png`` would make a folder of that name), or a folder this user cannot write (nor make)."""
    path = Path(output)
    if path.is_symlink() and not path.exists():  # mkdir would say "File exists" for every input
        raise ValueError(f"-o {output!r} is a link to {os.readlink(path)!r}, which does not exist")
    if path.exists() and not path.is_dir():
        raise ValueError(f"-o takes a folder, and {output!r} is a file (give a folder name)")
    if not path.exists() and (is_video(path) or path.suffix.lower() in WRITE_FORMATS):
        raise ValueError(
            f"-o takes a folder, and {output!r} looks like a file name: the results go into it as "
            "restored_imgs/, restored_faces/ and restored_videos/ (give a folder name)"
        )
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        # every input would be restored, then fail to write; said once, before the work
        raise ValueError(f"cannot write to -o {output!r}: {existing} is not writable")


UNWRITABLE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
"""What a write fails with when the output disk is full (or over quota) or read-only: every later input
would be restored, then fail the same way, so the run stops there."""


def unwritable(err: BaseException) -> OSError | None:
    """The full or read-only disk's error (:data:`UNWRITABLE`) behind ``err``, itself or an error it was
    raised in (a clip's :class:`VideoError` holds PyAV's); None for any other failure."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in UNWRITABLE:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def disk_error(err: OSError) -> str:
    """A full or read-only disk's error as "[Errno 28] No space left on device", without its file name: for
    an atomic write that is a hidden temporary file, gone by the time the user reads the line (which names
    the input and the output folder)."""
    return f"[Errno {err.errno}] {err.strerror}" if err.strerror else first_line(err)


def check_output_size(target: Path | None, img: np.ndarray, upscale: float) -> None:
    """Refuse (``ValueError``) a photo whose restored image, ``img`` upscaled, is larger than the format of
    ``target`` holds (-s 8 on a 2100 px wide photo makes a WebP wider than 16383 px): said before the work,
    and before its face files are written, not after both."""
    if target is None or is_video(target):
        return
    height, width = scaled_size(img.shape[0], img.shape[1], upscale)
    why = size_error(target.suffix, width, height)
    if why:
        other = "" if target.suffix.lower() == ".png" else "--ext png or "
        raise ValueError(f"restored size {why}; use {other}a smaller -s")


OUT_OF_MEMORY = "not enough memory: try a smaller -s, --detect-max-side 2048, or a smaller --bg_tile"
"""What a photo that ran out of memory is reported with, before the allocator's own words."""


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation that failed: numpy's ``MemoryError``, or PyTorch's and OpenCV's
    own errors for it ("can't allocate memory", "Insufficient memory"), which name no option to change."""
    text = str(err)
    return isinstance(err, MemoryError) or "can't allocate memory" in text or "Insufficient memory" in text


def failure(err: BaseException, name: str) -> str:
    """The line an input's failure is said in (its error's first line, ``name`` :func:`shown` in it), led by
    what to change when it ran out of memory: the CLI's and ``gfp batch``'s records alike. A refusal for want
    of memory that is an :class:`~gfp.messages.OptionError` (detection refused up front) already names the
    option and the value that fit: it is not given the general advice, nor a photo too big to decode
    (:class:`~gfp.imageio.ImageMemoryError`), whose line says memory and what to do (no option helps)."""
    why = said(err, name)
    if not out_of_memory(err) or isinstance(err, ImageMemoryError):
        return why
    return f"not enough memory: {why}" if isinstance(err, OptionError) else f"{OUT_OF_MEMORY} ({why})"


def check_not_input(target: Path | None, source: Path) -> None:
    """Refuse to write ``target`` over the input ``source`` itself (``-o`` the folder a run wrote before)."""
    if target is not None and target.exists() and os.path.samefile(target, source):
        raise ValueError(f"its output {target} would replace the input itself; choose another --output")


def _suffixed(name: str, suffix: str | None) -> str:
    return f"{name}_{suffix}" if suffix is not None else name


def restore_video_file(
    path: Path, target: Path, options: RestoreOptions, video: VideoOptions, restorer: Restorer
) -> VideoResult:
    """Restore one clip with a progress bar in frames (with ETA when the container gives a frame count);
    a face choice's first pass over the clip has a bar of its own ("detect"). Each pass has its own bar,
    the first shown from the start, a later one from its first frame, when the bar before it closes (one
    bar reset and renamed showed "(detect) 0/N" between the passes)."""
    bars: dict[str, tqdm] = {}

    def bar_of(stage: str, done: int = 0, total: int = 0) -> tqdm:
        if stage not in bars:
            for bar in bars.values():
                bar.close()
            name = shown(path.name) if stage == "frames" else f"{shown(path.name)} ({stage})"
            bars[stage] = tqdm(
                desc=name, total=total or None, initial=done, unit="frame", leave=False, file=sys.stderr
            )
        return bars[stage]

    def progress(done: int, total: int, stage: str) -> None:
        bar = bar_of(stage, done, total)
        resized = total and bar.total != total
        if resized:
            bar.total = total
        if not bar.update(done - bar.n) and resized:  # shown with its count, never "0/N" first
            bar.refresh()

    bar_of("detect" if needs_plan(options) else "frames")
    try:
        return restore_video(path, target, options, video, restorer, progress=progress)
    finally:
        for bar in bars.values():
            bar.close()


def face_summary(result: RestoreResult | VideoResult) -> str:
    """One line on the faces of a photo or the people of a clip: found, restored, skipped and why (or that
    none was found; a clip's brief faces are found faces too)."""
    if not result.selection.any_face:
        return f"no face found, {'video' if isinstance(result, VideoResult) else 'image'} only upscaled"
    if isinstance(result, VideoResult):  # a clip's faces are people, each counted once however long seen
        return result.selection.summary("person", "people")
    return result.selection.summary()


@contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Warnings (OpenVINO falling back to PyTorch, say) as ``gfp: warning: ...`` lines, not Python's
    file:line text with a line of our source; the previous display is put back after."""
    shown = warnings.showwarning

    def show(message: Warning | str, *args: object, **kwargs: object) -> None:
        tqdm.write(f"gfp: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (130 when interrupted: Ctrl-C, SIGTERM, SIGHUP). ``export-onnx``
    as first argument runs :mod:`gfp.onnx`, ``batch`` runs :mod:`gfp.batch`."""
    try:
        with unwinding_on_termination(), _one_line_warnings():
            return _main(argv)
    except KeyboardInterrupt:
        _interrupted()
        return 130


def _interrupted() -> None:
    """Say so after Ctrl-C, and wait for the threads still preparing networks (with
    ``GFP_OPENVINO_CONVERT=now`` a conversion can take a while), saying that too; a second Ctrl-C leaves at
    once, without the traceback Python prints when it is pressed while the interpreter waits for threads at
    its exit (which it must not tear down under a running OpenVINO compilation: it aborts). Everything is
    said inside the ``try``, so a second Ctrl-C that follows what the user reads is always caught."""
    try:
        tqdm.write("gfp: interrupted", file=sys.stderr)
        busy = [t for t in threading.enumerate() if t.name == "gfp-prepare" and t.is_alive()]
        if busy:
            tqdm.write(
                "gfp: finishing the networks being prepared (Ctrl-C again to stop at once)", file=sys.stderr
            )
            for thread in busy:
                thread.join()
    except KeyboardInterrupt:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


def _main(argv: Sequence[str] | None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["export-onnx"]:  # the restore parser takes no positional arguments: no clash
        from gfp.onnx import main as export_main

        return export_main(args_list[1:], prog="gfp export-onnx")
    if args_list[:1] == ["batch"]:
        from gfp.batch import main as batch_main

        return batch_main(args_list[1:], prog="gfp batch")
    parser = build_parser()
    args = parser.parse_args(args_list)
    try:
        options = restore_options(args)
        clip_options = video_options(args)
        inputs = list_inputs(args.input)
        restorer = make_restorer(args)
    except (ValueError, FileNotFoundError) as err:
        parser.error(said(err))
    if not inputs:
        parser.error(f"input folder {args.input!r} holds no files")
    try:
        check_output_folder(args.output)
    except ValueError as err:
        parser.error(str(err))
    output = Path(args.output)

    try:  # missing or foreign weights are said (and downloads shown) before the progress bar starts
        restorer.generator_config(options.version)  # read once: the loading threads take it from the store
        if not options.aligned:
            restorer.store.resolve(options.detector)
    except WeightsError as err:
        print(f"gfp: error: {err}", file=sys.stderr)
        return 2
    restorer.prepare(options)  # the networks load and compile while the first file is read and searched
    failed: list[Path] = []
    noted: set[str] = set()
    ran: list[dict[str, str]] = []  # what ran the networks, for the summary line
    owners = output_owners(p.name for p in inputs)
    for index, path in enumerate(tqdm(inputs, desc="Restoring", unit="img", file=sys.stderr)):
        basename, in_ext = os.path.splitext(path.name)
        unwritten = False  # a failure while set wrote nothing: its outputs' names go to a later input
        animated = None  # an animation's or a multi-page file's note: only the first frame is read
        try:
            clash = output_clash(owners, path.name)
            if clash:
                raise ValueError(clash)
            target = main_output(output, path.name, args)
            check_not_input(target, path)
            unwritten = True
            if is_video(path):  # its one output is written atomically: a failure leaves none
                result = restore_video_file(path, target, options, clip_options, restorer)
            else:
                img = read_image(path)
                animated = first_frame_note(path, shown(path.name))
                check_output_size(target, img, options.upscale)
                result = restorer.restore(img, options)
                unwritten = False
                profile = read_icc_profile(path)
                save_outputs(result, basename, in_ext, output, args.suffix, args.ext, args.aligned, profile)
        except WeightsError as err:
            tqdm.write(f"gfp: error: {err}", file=sys.stderr)
            return 2
        except Exception as err:  # one bad file must not stop the others: report it in one line
            full = unwritable(err)
            if full is not None:  # a full or read-only disk: every later input would fail to write too
                left = len(inputs) - index - 1  # none left: no "stopped with 0 of 1 file(s) not tried"
                stopped = f"stopped with {left} of {len(inputs)} file(s) not tried: " if left else ""
                tqdm.write(
                    f"gfp: error: cannot write the outputs of {shown(path.name)}: {disk_error(full)}; "
                    f"{stopped}rerun the same command once {str(output)!r} can be written",
                    file=sys.stderr,
                )
                return 2
            if unwritten:
                give_back(owners, path.name)
            failed.append(path)
            named = isinstance(err, ImageReadError | VideoError)  # their messages begin with the file
            why = failure(err, str(path))
            tqdm.write(f"gfp: error: {why if named else f'{shown(str(path))}: {why}'}", file=sys.stderr)
            continue
        ran.append(result.backends)
        for note in result.notes:
            if note not in noted:  # e.g. the missing parser: say it once, not for every file
                noted.add(note)
                tqdm.write(f"gfp: note: {note}", file=sys.stderr)
        if not args.aligned:
            tqdm.write(f"gfp: {shown(path.name)}: {face_summary(result)}", file=sys.stderr)
        if animated:
            tqdm.write(f"gfp: note: {animated}", file=sys.stderr)
    done = len(inputs) - len(failed)
    backends = backends_text(*ran)
    how = f" ({backends})" if backends else ""
    where = f"results are in the [{shown(str(output))}] folder" if output.is_dir() else "nothing was written"
    print(f"Restored {done} of {len(inputs)} file(s){how}; {where}.")  # a failed run's folder is gone
    if failed:
        print(f"{len(failed)} file(s) failed: {', '.join(shown(p.name) for p in failed)}", file=sys.stderr)
        return 1
    return 0
