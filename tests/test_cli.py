"""gfp.cli: official flags and output layout, per-file errors, exit codes, no tracebacks for user errors."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from _zoo_helpers import save_tiny_generator
from conftest import MOBILE, make_weights

from gfp import background, cli, faces, imageio
from gfp.cli import list_inputs, main
from gfp.pipeline import Restorer, RestoreResult

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("offline")


def _args(weights: Path, *extra: str, background: str | None = "none") -> list[str]:
    """Flags for the tiny weights; ``background`` None leaves --bg_upsampler at its default."""
    chosen = [] if background is None else ["--bg_upsampler", background]
    return ["-v", str(weights / "tiny"), "--weights-dir", str(weights), "--detector", "retinaface_mobile0.25",
            "--device", "cpu", *chosen, *extra]  # fmt: skip


def _gradient(h: int = 40, w: int = 56) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.dstack([xx * 4, yy * 5, (xx + yy) * 2]).astype(np.uint8)


def test_module_entry_point_prints_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gfp", "--help"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0
    for flag in ("--input", "--upscale", "--bg_upsampler", "--only_center_face", "--aligned", "--strength"):
        assert flag in proc.stdout


def test_list_inputs(tmp_path: Path) -> None:
    for name in ("b.png", "a.jpg", "manifest.jsonl", ".gfp-batch.lock"):  # and gfp batch's own files
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "c.jpg").symlink_to(tmp_path / "gone.jpg")  # a link to nothing: listed, fails when read
    assert [p.name for p in list_inputs(str(tmp_path) + "/")] == ["a.jpg", "b.png", "c.jpg"]
    assert list_inputs(str(tmp_path / "a.jpg")) == [tmp_path / "a.jpg"]
    with pytest.raises(FileNotFoundError, match="neither a file nor a folder"):
        list_inputs(str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-i", "/nonexistent/x.png"], "neither a file nor a folder"),
        (["-s", "9"], "gfp: error: --upscale must be in [1, 8], got 9.0"),
        (["-w", "x"], ""),
        (
            ["--detect-max-side", "10"],
            "gfp: error: --detect-max-side must be an integer >= 64 or unset (the full image), got 10",
        ),
        (["--backend", "onnx"], "invalid choice: 'onnx'"),
        (["--backend", "openvino", "--device", "cuda:7"], "cuda:7"),
        (["--faces", "0"], "gfp: error: --faces: face numbers start at 1, got '0'"),
        (["--faces", "x"], "gfp: error: --faces must be all, largest, center or face numbers such as 1,3"),
        (["--min-face", "-3"], "gfp: error: --min-face must be a whole number of pixels >= 0, got -3"),
        (["--min-face", "ten"], "argument --min-face: invalid int value: 'ten'"),
        (["--color-fix", "sepia"], "argument --color-fix: invalid choice: 'sepia'"),
        (
            ["--only_center_face", "--faces", "2"],
            "gfp: error: --only_center_face means --faces 'center'; it cannot be combined with --faces '2'",
        ),
        (
            ["--aligned", "--faces", "1"],
            "gfp: error: --faces cannot be combined with --aligned (each image is one aligned face)",
        ),
        (
            ["--aligned", "--faces", "1", "--min-face", "9"],
            "gfp: error: --faces and --min-face cannot be combined with --aligned",
        ),
        (["--aligned", "--min-face", "20"], "error: --min-face cannot be combined with --aligned"),
        (
            ["--faces", "{x}"],
            "gfp: error: --faces must be all, largest, center or face numbers such as 1,3 "
            "(from 1), got '{x}'",
        ),
        (["-o", "restored.mp4"], "-o takes a folder, and 'restored.mp4' looks like a file name"),
        (["-o", "restored.PNG"], "-o takes a folder, and 'restored.PNG' looks like a file name"),
    ],
)
def test_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list, message: str
) -> None:
    img = tmp_path / "in.png"
    cv2.imwrite(str(img), _gradient())
    with pytest.raises(SystemExit) as exc:
        main(["-i", str(img), "-o", str(tmp_path / "out"), *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1


def test_option_errors_name_the_flags_the_parser_has() -> None:
    """The CLI's words for the options are read off its parser: a renamed flag is followed; a value that
    looks like a placeholder is said as typed; a pickled error (a worker's) is the same error."""
    import pickle

    from gfp.messages import OptionError
    from gfp.pipeline import RestoreOptions

    flags = cli.option_flags()
    assert flags["min_face"] == "--min-face" and flags["upscale"] == "--upscale"
    assert flags["codec"] == "--video-codec" and flags["detect_max_side"] == "--detect-max-side"
    fields = set(RestoreOptions.__dataclass_fields__) - {"use_parse"}  # the one option with no flag
    assert fields <= set(flags)
    with pytest.raises(OptionError) as err:
        RestoreOptions(faces="{min_face}")
    assert str(err.value).startswith("faces must be all, largest") and str(err.value).endswith("'{min_face}'")
    assert cli.said(err.value).startswith("--faces must be all") and cli.said(err.value).endswith(
        "'{min_face}'"
    )
    again = pickle.loads(pickle.dumps(err.value))
    assert type(again) is OptionError and cli.said(again) == cli.said(err.value)
    with pytest.raises(OptionError) as err:
        RestoreOptions(faces=(n for n in (1, 2)))  # no list of numbers; a generator cannot be pickled
    again = pickle.loads(pickle.dumps(err.value))  # a worker's error reaches its caller whatever the value
    assert str(again) == str(err.value) and "generator object" in str(again)


def test_an_output_that_is_a_file_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = make_weights(tmp_path / "w")
    img = tmp_path / "in.png"
    cv2.imwrite(str(img), _gradient())
    (tmp_path / "results").write_text("a file, not a folder")
    for output in (img, tmp_path / "results"):
        with pytest.raises(SystemExit) as exc:
            main(["-i", str(img), "-o", str(output), *_args(weights)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"-o takes a folder, and {str(output)!r} is a file" in err and "Restoring" not in err
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")  # a link to a folder that is not there
    with pytest.raises(SystemExit) as exc:
        main(["-i", str(img), "-o", str(tmp_path / "gone"), *_args(weights)])
    assert exc.value.code == 2 and "which does not exist" in capsys.readouterr().err


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not every input restored, then each failing to write: one line, exit 2, before the work."""
    weights = make_weights(tmp_path / "w")
    img = tmp_path / "in.png"
    cv2.imwrite(str(img), _gradient())
    locked = tmp_path / "locked"
    locked.mkdir()
    allowed = os.access
    # a read-only folder as a user sees it (the tests may run as root, which may write anywhere)
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and allowed(path, mode))
    for output in (locked, locked / "new" / "deeper"):
        with pytest.raises(SystemExit) as exc:
            main(["-i", str(img), "-o", str(output), *_args(weights)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"cannot write to -o {str(output)!r}: {locked} is not writable" in err
        assert "Restoring" not in err


def _one_face_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every photo "restored" at once into a gradient with one face, for tests of what is written."""
    face = np.zeros((8, 8, 3), np.uint8)
    result = RestoreResult(
        image=_gradient(), cropped_faces=[face], restored_faces=[face], boxes=np.zeros((1, 5), np.float32),
        landmarks=np.zeros((1, 5, 2), np.float32), timings={}, device="cpu", face_numbers=[1],
    )  # fmt: skip
    monkeypatch.setattr(Restorer, "restore", lambda self, img, options: result)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_stops_the_run_and_leaves_no_half_photo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """A full disk at the restored image: its faces, written just before, go too (no faces of a photo
    the summary calls failed), and the run stops there in one line (exit 2) rather than restoring every
    later photo only to fail to write it."""
    weights = make_weights(tmp_path / "w")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        cv2.imwrite(str(inputs / name), _gradient())
    _one_face_restores(monkeypatch)
    real_write = cli.write_image

    def write(path: Path, img: np.ndarray, **kwargs: object) -> Path:
        if path.name == "b.png" and path.parent.name == "restored_imgs":
            raise OSError(code, os.strerror(code))
        return real_write(path, img, **kwargs)

    monkeypatch.setattr(cli, "write_image", write)
    out = tmp_path / "out"
    assert main(["-i", str(inputs), "-o", str(out), *_args(weights)]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert errors == [
        f"gfp: error: cannot write the outputs of b.png: [Errno {code}] {os.strerror(code)}; stopped with 1 "
        f"of 3 file(s) not tried: rerun the same command once {str(out)!r} can be written"
    ]
    assert "Restored" not in captured.out
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    a = {"cropped_faces/a_00.png", "restored_faces/a_00.png", "cmp/a_00.png", "restored_imgs/a.png"}
    assert names == a  # none of b's, and c not tried


def test_a_failed_photo_leaves_no_folder_it_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk at the restored image removed the faces written before it but left their folders,
    empty (and the output folder); as for a clip, the folders the run made go, those that were there or
    that another writer (a ``gfp batch`` worker) filled meanwhile stay. A writer whose folder another
    one removes, empty, just before it writes makes it again."""
    from gfp import atomic

    weights = make_weights(tmp_path / "w")
    cv2.imwrite(str(tmp_path / "a.png"), _gradient())
    _one_face_restores(monkeypatch)
    real_write = cli.write_image

    def write(path: Path, img: np.ndarray, **kwargs: object) -> Path:
        if path.parent.name == "restored_imgs":
            if path.parent.parent.name == "kept":
                (path.parent.parent / "cmp" / "b_00.png").write_bytes(b"another worker's face")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(path, img, **kwargs)

    monkeypatch.setattr(cli, "write_image", write)
    assert main(["-i", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), *_args(weights)]) == 2
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("out*")] == []  # nothing of it
    (tmp_path / "kept" / "restored_faces").mkdir(parents=True)
    assert main(["-i", str(tmp_path / "a.png"), "-o", str(tmp_path / "kept"), *_args(weights)]) == 2
    kept = sorted(p.relative_to(tmp_path / "kept").as_posix() for p in (tmp_path / "kept").rglob("*"))
    assert kept == ["cmp", "cmp/b_00.png", "restored_faces"]
    real_temp = atomic._temp_beside

    def vanished(dest: Path, suffix: str) -> tuple[int, Path]:  # another writer's rmdir, just before
        monkeypatch.setattr(atomic, "_temp_beside", real_temp)
        dest.parent.rmdir()
        return real_temp(dest, suffix)

    monkeypatch.setattr(atomic, "_temp_beside", vanished)
    assert real_write(tmp_path / "new" / "a.png", _gradient()).is_file()


def test_a_run_that_wrote_nothing_names_no_results_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every input failed: the last line named a results folder that was never made (or was removed, with
    the folders a failed write made)."""
    weights = make_weights(tmp_path / "w")
    (tmp_path / "a.png").write_bytes(b"not an image")
    assert main(["-i", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), *_args(weights)]) == 1
    assert "Restored 0 of 1 file(s); nothing was written." in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_a_folder_removed_between_mkdir_and_its_look_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer's folder, there when ``mkdir`` refused to make it and removed (empty: that writer
    failed) before it was looked at, failed a write with "[Errno 17] File exists" (gfp batch workers
    writing into one new folder, half of them failing, met it): the folder is made again."""
    real_mkdir = Path.mkdir
    raced = tmp_path / "out" / "cmp"

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if self == raced and not getattr(mkdir, "done", False):
            mkdir.done = True  # type: ignore[attr-defined]
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(self))  # and gone since
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert cli.write_image(raced / "a.png", _gradient()).is_file()


def test_a_full_disk_at_the_only_input_counts_no_files_not_tried(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing left to try (one input, or the last), the line says no "stopped with 0 of 1 file(s)
    not tried", nor the hidden temporary file the error names (gone when the line is read)."""
    weights = make_weights(tmp_path / "w")
    cv2.imwrite(str(tmp_path / "a.png"), _gradient())
    _one_face_restores(monkeypatch)

    def full(path: Path, img: np.ndarray, **kwargs: object) -> Path:  # as an atomic write's temporary file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path.parent / f".{path.name}.1f2e.tmp"))

    monkeypatch.setattr(cli, "write_image", full)
    out = tmp_path / "out"
    assert main(["-i", str(tmp_path / "a.png"), "-o", str(out), *_args(weights)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert errors == [
        f"gfp: error: cannot write the outputs of a.png: [Errno {errno.ENOSPC}] {os.strerror(errno.ENOSPC)}; "
        f"rerun the same command once {str(out)!r} can be written"
    ]


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(
            "Unable to allocate 2.15 GiB for an array with shape (13920, 13824, 3) and data type float32"
        ),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory"
        ),
    ],
)
def test_a_photo_out_of_memory_says_what_to_change_and_the_run_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """A photo too big for the memory (a large -s, full-size detection of a 40 MP photo) is one line that
    names the options that need less, not only the allocator's words; the next photo is restored."""
    weights = make_weights(tmp_path / "w")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(inputs / name), _gradient())
    real_restore = Restorer.restore

    def restore(self: Restorer, img: np.ndarray, options: object) -> RestoreResult:
        if not hasattr(restore, "failed"):
            restore.failed = True  # type: ignore[attr-defined]
            raise error
        return real_restore(self, img, options)

    monkeypatch.setattr(Restorer, "restore", restore)
    out = tmp_path / "out"
    assert main(["-i", str(inputs), "-o", str(out), *_args(weights)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert errors == [f"gfp: error: {inputs / 'a.png'}: {cli.OUT_OF_MEMORY} ({error})"]
    assert {p.name for p in out.rglob("*") if p.is_file()} == {"b.png"}


@pytest.mark.parametrize(
    ("module", "shape", "upscale", "said"),
    [
        (  # full-size detection of a 40 MP photo takes about 9 GB: past a cgroup's limit the run was killed
            faces,
            (768, 1024),
            "1",
            "detecting faces on 1024x768 pixels needs about 48 MiB, 20 MiB is free: use --detect-max-side "
            "512 or less (it detects on a copy that size)",
        ),
        (  # a decode that does not fit said "corrupt"; no option helps, so none is advised
            imageio,
            (2000, 3000),
            "1",
            "decoding its 3000x2000 pixels (6.0 MP) needs about 34 MiB, 20 MiB is free: free some memory or "
            "downscale it first",
        ),
        (  # an output that does not fit failed only after the slow background
            background,
            (768, 1000),
            "4",
            "a 4000x3072 restored image needs at least 70 MiB, 20 MiB is free: use --upscale 2 or less",
        ),
    ],
    ids=["detection", "decode", "output"],
)
def test_a_photo_that_would_not_fit_is_refused_up_front_saying_what_fits(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    module: object,
    shape: tuple[int, int],
    upscale: str,
    said: str,
) -> None:
    """A photo whose detection, decode or output would not fit in the memory left is one line, before that
    work, saying what it needs, what is free and what fits (in the CLI's flags); the next photo is
    restored."""
    monkeypatch.setattr(module, "available_memory", lambda: 20 * 2**20)
    weights = make_weights(tmp_path / "w")
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "a.png"), np.zeros((*shape, 3), np.uint8))
    cv2.imwrite(str(inputs / "b.png"), _gradient())
    out = tmp_path / "out"
    assert main(["-i", str(inputs), "-o", str(out), *_args(weights, "-s", upscale)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert errors == [f"gfp: error: {inputs / 'a.png'}: not enough memory: {said}"]
    assert {p.name for p in out.rglob("*") if p.is_file()} == {"b.png"}


def test_a_clips_full_disk_is_found_behind_its_video_error() -> None:
    """PyAV's error is an OSError with the errno; gfp.video raises a VideoError in its place."""
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise ValueError("clip.mp4: cannot decode or encode this clip") from None
    except ValueError as err:
        assert cli.unwritable(err) is not None and cli.unwritable(err).errno == errno.ENOSPC
    assert cli.unwritable(OSError(errno.ENOENT, "No such file")) is None


def test_names_holding_a_newline_or_a_tab_are_printed_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each message stays one line, and says what the name holds (as Python writes it); a name without
    such characters is printed as it is."""
    weights = make_weights(tmp_path / "w")
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "new\nline.png"), _gradient())
    cv2.imwrite(str(inputs / "plain.png"), _gradient())
    (inputs / "bad\tname.png").write_bytes(b"not an image")
    assert main(["-i", str(inputs), "-o", str(tmp_path / "out"), *_args(weights)]) == 1
    odd = str(tmp_path / "out\nput")  # an -o holding a newline: the last line stays one line too
    assert main(["-i", str(inputs / "plain.png"), "-o", odd, *_args(weights)]) == 0
    captured = capsys.readouterr()
    assert f"results are in the [{odd!r}] folder." in captured.out
    err = [line for line in captured.err.splitlines() if line.startswith("gfp:")]
    assert "gfp: 'new\\nline.png': no face found, image only upscaled" in err
    assert "gfp: plain.png: no face found, image only upscaled" in err
    bad = repr(str(inputs / "bad\tname.png"))
    assert any(line.startswith(f"gfp: error: {bad}: not an image") for line in err), err
    assert "1 file(s) failed: 'bad\\tname.png'\n" in captured.err
    assert (tmp_path / "out" / "restored_imgs" / "new\nline.png").is_file()


def test_missing_weights_offline_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "in.png"
    cv2.imwrite(str(img), _gradient())
    code = main(
        ["-i", str(img), "-o", str(tmp_path / "out"), "--weights-dir", str(tmp_path), "--device", "cpu"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "could not find weights 'v1.4'" in err and "GFPGANv1.4.pth" in err and "Traceback" not in err
    assert "Restoring" not in err  # said before the progress bar starts, not under it
    # the detector's weights too, when the generator's are there
    model = save_tiny_generator(tmp_path / "model")
    args = ["-i", str(img), "-o", str(tmp_path / "out"), "-v", str(model), "--weights-dir", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "could not find weights 'retinaface_resnet50'" in err and "Restoring" not in err
    # a weights folder that is no folder is said to be wrong, not only the file missing from it
    for folder, why in ((img, "is a file"), (tmp_path / "typo", "does not exist")):
        assert main(["-i", str(img), "-o", str(tmp_path / "out"), "--weights-dir", str(folder)]) == 2
        err = capsys.readouterr().err
        assert f"weights folder (--weights-dir / weights_dir argument): {folder} {why}" in err


def test_warnings_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    """A warning during a run (OpenVINO falling back to PyTorch, say) is a 'gfp: warning:' line, not
    Python's file:line text followed by a line of the source."""
    import warnings

    import gfp.cli

    def warn_then_fail(spec: str) -> list:
        warnings.warn("OpenVINO could not compile tiny (no luck); it runs in PyTorch", stacklevel=2)
        raise FileNotFoundError("no inputs here")

    monkeypatch.setattr(gfp.cli, "list_inputs", warn_then_fail)
    shown = warnings.showwarning
    with pytest.raises(SystemExit):
        main(["-i", str(tmp_path / "x.png"), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "gfp: warning: OpenVINO could not compile tiny (no luck); it runs in PyTorch" in err
    assert "UserWarning" not in err and "warnings.warn" not in err
    assert warnings.showwarning is shown  # put back for the caller


def test_weights_that_are_no_generator_exit_2_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A -v file that loads but is no GFPGAN generator stops the run as missing weights do, not per file."""
    import torch
    from safetensors.torch import save_file

    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / name), _gradient())
    save_file({"foo": torch.zeros(2)}, tmp_path / "junk.safetensors")
    args = ["-i", str(tmp_path), "-o", str(tmp_path / "out"), "-v", str(tmp_path / "junk.safetensors")]
    assert main([*args, "--weights-dir", str(tmp_path), "--device", "cpu", "--bg_upsampler", "none"]) == 2
    err = capsys.readouterr().err
    assert err.count("not a GFPGAN") == 1 and "junk.safetensors" in err and "Traceback" not in err


def test_default_background_offline_falls_back_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = make_weights(tmp_path / "w")
    cv2.imwrite(str(tmp_path / "a.png"), _gradient())
    cv2.imwrite(str(tmp_path / "b.png"), _gradient(30, 20))
    assert main(["-i", str(tmp_path), "-o", str(tmp_path / "out"), *_args(weights, background=None)]) == 0
    err = capsys.readouterr().err
    notes = [
        line
        for line in err.splitlines()
        if "gfp: note: background upsampler realesr-general-x4v3 unavailable" in line  # the CPU's default
    ]
    assert len(notes) == 1 and "realesr-general-x4v3.pth" in notes[0] and "Lanczos" in notes[0]
    assert cv2.imread(str(tmp_path / "out" / "restored_imgs" / "a.png")).shape == (80, 112, 3)


def test_background_asked_for_by_name_offline_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = make_weights(tmp_path / "w")
    cv2.imwrite(str(tmp_path / "a.png"), _gradient())
    args = _args(weights, background="realesrgan")
    assert main(["-i", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert (
        "could not find weights 'RealESRGAN_x2plus'" in err and str(weights / "RealESRGAN_x2plus.pth") in err
    )
    assert "Traceback" not in err


def test_folder_with_a_broken_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = make_weights(tmp_path / "w")
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "a.png"), _gradient())
    cv2.imwrite(str(inputs / "b.jpg"), _gradient(30, 20))
    (inputs / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    code = main(["-i", str(inputs), "-o", str(out), "-s", "2", *_args(weights)])
    captured = capsys.readouterr()
    assert code == 1
    error_lines = [line for line in captured.err.splitlines() if "broken.png" in line and "error" in line]
    assert len(error_lines) == 1 and "Traceback" not in captured.err
    # the file named once, and no text of an in-memory buffer ("<_io.BytesIO object at 0x...>")
    assert error_lines[0].count("broken.png") == 1 and " at 0x" not in error_lines[0], error_lines[0]
    assert cv2.imread(str(out / "restored_imgs" / "a.png")).shape == (80, 112, 3)
    assert cv2.imread(str(out / "restored_imgs" / "b.jpg")).shape == (60, 40, 3)
    assert not (out / "cropped_faces").exists()  # no faces in gradients
    assert "Restored 2 of 3" in captured.out


def test_an_animation_is_said_to_be_restored_from_its_first_frame(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    weights = make_weights(tmp_path / "w")
    frames = [Image.fromarray(np.roll(_gradient(), shift, axis=1)) for shift in (0, 8, 16)]
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "still.gif")
    for name in ("clip.gif", "still.gif"):
        assert main(["-i", str(tmp_path / name), "-o", str(tmp_path / "out"), *_args(weights)]) == 0
    err = capsys.readouterr().err
    assert "gfp: note: clip.gif holds 3 frames; only the first was restored" in err
    assert "still.gif holds" not in err


def test_ext_and_suffix_for_images(tmp_path: Path) -> None:
    weights = make_weights(tmp_path / "w")
    cv2.imwrite(str(tmp_path / "a.jpg"), _gradient())
    out = tmp_path / "out"
    assert (
        main(
            [
                "-i",
                str(tmp_path / "a.jpg"),
                "-o",
                str(out),
                "--ext",
                "png",
                "--suffix",
                "gfp",
                *_args(weights),
            ]
        )
        == 0
    )
    assert [p.name for p in (out / "restored_imgs").iterdir()] == ["a_gfp.png"]


def test_inputs_whose_outputs_would_collide_fail_and_keep_earlier_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """a.jpg and a.png would write the same faces (and with --ext png the same image): the second is a
    failed file; a run into the folder it reads from does not replace its inputs."""
    weights = make_weights(tmp_path / "w")
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "a.jpg"), _gradient())
    cv2.imwrite(str(inputs / "a.png"), _gradient(30, 20))
    out = tmp_path / "out"
    assert main(["-i", str(inputs), "-o", str(out), "--ext", "png", *_args(weights)]) == 1
    err = capsys.readouterr().err
    assert "a.png: its outputs would overwrite those of a.jpg" in err and "Traceback" not in err
    assert cv2.imread(str(out / "restored_imgs" / "a.png")).shape == (80, 112, 3)  # a.jpg's, kept

    before = (out / "restored_imgs" / "a.png").read_bytes()
    assert main(["-i", str(out / "restored_imgs"), "-o", str(out), *_args(weights)]) == 1
    assert "would replace the input itself" in capsys.readouterr().err
    assert (out / "restored_imgs" / "a.png").read_bytes() == before


def test_a_file_that_cannot_be_read_leaves_its_name_to_the_photo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An iPhone's IMG_1234.AAE sidecar (XML) sorts before IMG_1234.JPG, and a corrupt a.jpg before a.png:
    neither keeps the photo beside it from being restored."""
    weights = make_weights(tmp_path / "w")
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "IMG_1234.AAE").write_text('<?xml version="1.0"?><plist></plist>')
    cv2.imwrite(str(inputs / "IMG_1234.JPG"), _gradient())
    (inputs / "a.jpg").write_bytes(b"not an image")
    cv2.imwrite(str(inputs / "a.png"), _gradient(30, 20))
    out = tmp_path / "out"
    assert main(["-i", str(inputs), "-o", str(out), *_args(weights)]) == 1
    err = capsys.readouterr().err
    assert "IMG_1234.AAE" in err and "a.jpg" in err and "Traceback" not in err
    assert sorted(p.name for p in (out / "restored_imgs").iterdir()) == ["IMG_1234.JPG", "a.png"]


def test_a_damaged_png_is_one_line_not_libpngs(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """libpng's own "libpng error: IDAT: ..." line broke the progress bar: the user sees our line alone."""
    weights = make_weights(tmp_path / "w")
    inputs = tmp_path / "in"
    inputs.mkdir()
    ok, png = cv2.imencode(".png", _gradient())
    data = bytearray(png.tobytes())
    data[data.find(b"IDAT") + 20] ^= 0x10  # inside the pixel data: its CRC no longer matches
    (inputs / "a.png").write_bytes(data)
    cv2.imwrite(str(inputs / "b.png"), _gradient())
    out = tmp_path / "out"
    assert main(["-i", str(inputs), "-o", str(out), *_args(weights)]) == 1
    err = capfd.readouterr().err
    assert f"gfp: error: {inputs / 'a.png'}: corrupt or truncated image" in err and "libpng" not in err
    assert [p.name for p in (out / "restored_imgs").iterdir()] == ["b.png"]


def test_a_restored_image_too_large_for_its_format_fails_before_the_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 2100 px wide WebP at -s 8 would be 16800 px wide, above the 16383 WebP holds: one line on that
    file, said before restoring it, and the others restored."""
    weights = make_weights(tmp_path / "w")
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "wide.webp"), _gradient(16, 2100))
    cv2.imwrite(str(inputs / "small.webp"), _gradient(16, 16))
    out = tmp_path / "out"
    assert main(["-i", str(inputs), "-o", str(out), "-s", "8", *_args(weights)]) == 1
    err = capsys.readouterr().err
    assert (
        "wide.webp: restored size 16800x128 is above the 16383 px a side that WebP holds; use --ext png or "
        "a smaller -s" in err
    )
    assert [p.name for p in (out / "restored_imgs").iterdir()] == ["small.webp"]


def test_a_format_that_cannot_be_written_is_restored_to_png(tmp_path: Path) -> None:
    from PIL import Image

    weights = make_weights(tmp_path / "w")
    Image.fromarray(_gradient()[:, :, ::-1]).save(tmp_path / "a.gif")
    out = tmp_path / "out"
    assert main(["-i", str(tmp_path / "a.gif"), "-o", str(out), "-s", "1", *_args(weights)]) == 0
    assert [p.name for p in (out / "restored_imgs").iterdir()] == ["a.png"]


@pytest.mark.parametrize("suffix", ["a/b", "../x", "x\\y"])
def test_a_suffix_must_be_part_of_a_file_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["-i", str(tmp_path), "-o", str(tmp_path / "out"), "--suffix", suffix])
    assert exc.value.code == 2
    assert "must be part of a file name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.shared
def test_official_output_layout(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = make_weights(tmp_path / "w", shared_data / "weights" / MOBILE)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("codeformer_01.jpg", "codeformer_04.jpg"):  # 4 faces and 1 face
        (inputs / name).symlink_to(shared_data / "photos" / name)
    out = tmp_path / "out"
    assert main(["-i", str(inputs), "-o", str(out), "--suffix", "x", *_args(weights)]) == 0
    names = {p.relative_to(out).as_posix() for p in out.rglob("*.*")}
    expected = {"restored_imgs/codeformer_01_x.jpg", "restored_imgs/codeformer_04_x.jpg"}
    for stem, n in (("codeformer_01", 4), ("codeformer_04", 1)):
        expected |= {f"cropped_faces/{stem}_{i:02d}.png" for i in range(n)}
        expected |= {f"restored_faces/{stem}_{i:02d}_x.png" for i in range(n)}
        expected |= {f"cmp/{stem}_{i:02d}.png" for i in range(n)}
    assert names == expected
    assert capsys.readouterr().err.count("face parser unavailable") == 1
    cmp = cv2.imread(str(out / "cmp" / "codeformer_01_00.png"))
    crop = cv2.imread(str(out / "cropped_faces" / "codeformer_01_00.png"))
    assert cmp.shape == (64, 128, 3)
    np.testing.assert_array_equal(cmp[:, :64], crop)


def test_aligned_inputs_write_faces_only(tmp_path: Path) -> None:
    weights = make_weights(tmp_path / "w")
    cv2.imwrite(str(tmp_path / "face.png"), _gradient(96, 96))
    out = tmp_path / "out"
    assert main(["-i", str(tmp_path / "face.png"), "-o", str(out), "--aligned", *_args(weights)]) == 0
    names = {p.relative_to(out).as_posix() for p in out.rglob("*.*")}
    assert names == {"cropped_faces/face_00.png", "restored_faces/face_00.png", "cmp/face_00.png"}


def test_the_input_colour_profile_goes_into_every_output(tmp_path: Path) -> None:
    """A photo tagged Display P3 (here: any RGB ICC profile) keeps its profile, or its colours shift."""
    from PIL import Image, ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    weights = make_weights(tmp_path / "w")
    Image.fromarray(_gradient(96, 96)).save(tmp_path / "face.png", icc_profile=profile)
    Image.fromarray(_gradient()).save(tmp_path / "photo.jpg", icc_profile=profile, quality=95)
    out = tmp_path / "out"
    assert main(["-i", str(tmp_path / "face.png"), "-o", str(out), "--aligned", *_args(weights)]) == 0
    assert main(["-i", str(tmp_path / "photo.jpg"), "-o", str(out), *_args(weights)]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.*"))
    assert len(written) == 4 and "restored_imgs/photo.jpg" in written
    for name in written:
        with Image.open(out / name) as im:
            assert im.info.get("icc_profile") == profile, name


def test_fp32_flag_turns_cpu_bf16_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gfp.cli

    made: list[bool] = []
    real_init = gfp.cli.Restorer.__init__

    def spy(self, *args, **kwargs) -> None:  # noqa: ANN001
        real_init(self, *args, **kwargs)
        made.append(self.store.placement.bf16)

    monkeypatch.setattr(gfp.cli.Restorer, "__init__", spy)
    monkeypatch.setattr("gfp.devices.cpu_has_native_bf16", lambda: True)  # any CPU: the flag decides
    weights = make_weights(tmp_path / "w")
    cv2.imwrite(str(tmp_path / "face.png"), _gradient(96, 96))
    for extra in ([], ["--fp32"]):
        assert (
            main(
                [
                    "-i",
                    str(tmp_path / "face.png"),
                    "-o",
                    str(tmp_path / "o"),
                    "--aligned",
                    *_args(weights, *extra),
                ]
            )
            == 0
        )
    assert made == [True, False]


@pytest.mark.shared
def test_face_choice_names_files_by_face_number_and_says_what_it_skipped(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = make_weights(tmp_path / "w", shared_data / "weights" / MOBILE)
    photo = shared_data / "photos" / "codeformer_01.jpg"  # 4 faces in a row
    every, chosen = tmp_path / "every", tmp_path / "chosen"
    assert main(["-i", str(photo), "-o", str(every), *_args(weights)]) == 0
    assert "codeformer_01.jpg: 4 faces found, 4 restored" in capsys.readouterr().err
    assert main(["-i", str(photo), "-o", str(chosen), "--faces", "4,2,9", *_args(weights)]) == 0
    err = capsys.readouterr().err
    assert "codeformer_01.jpg: 4 faces found, 2 restored, 2 skipped (2 not chosen); no face 9" in err
    names = sorted(p.name for p in (chosen / "restored_faces").iterdir())
    assert names == ["codeformer_01_01.png", "codeformer_01_03.png"]  # faces 2 and 4
    for name in names:  # the same face, with the same name, as when every face is restored
        np.testing.assert_array_equal(
            cv2.imread(str(chosen / "restored_faces" / name)),
            cv2.imread(str(every / "restored_faces" / name)),
        )


def test_color_fix_reaches_the_restored_faces(tmp_path: Path) -> None:
    weights = make_weights(tmp_path / "w")
    cv2.imwrite(str(tmp_path / "face.png"), _gradient(64, 64))
    faces = {}
    for fix in ("none", "wavelet", "adain"):
        out = tmp_path / fix
        args = ["-i", str(tmp_path / "face.png"), "-o", str(out), "--aligned", "--color-fix", fix]
        assert main([*args, *_args(weights)]) == 0
        faces[fix] = cv2.imread(str(out / "restored_faces" / "face_00.png")).astype(int)
    source = _gradient(64, 64).astype(int)
    for fix in ("wavelet", "adain"):  # the random tiny generator's colours give way to the input's
        mean_error = np.abs(faces[fix].mean(axis=(0, 1)) - source.mean(axis=(0, 1))).max()
        assert mean_error < 0.2 * np.abs(faces["none"].mean(axis=(0, 1)) - source.mean(axis=(0, 1))).max()


def test_a_second_ctrl_c_while_networks_are_prepared_leaves_at_once(tmp_path: Path) -> None:
    """Ctrl-C while a network is still being prepared (converted for OpenVINO on the spot, which takes a
    while): the CLI says it finishes that, and a second Ctrl-C leaves at once, without the traceback Python
    prints when it is pressed while the interpreter waits for threads at its exit."""
    import signal
    import textwrap

    script = textwrap.dedent(
        """
        import sys, threading, time
        from gfp import cli

        def prepare(self, options):
            thread = threading.Thread(target=time.sleep, args=(20,), name="gfp-prepare")
            thread.start()
            return [thread]

        def restore(self, img, options=None, progress=None):
            raise KeyboardInterrupt  # the first Ctrl-C

        cli.Restorer.prepare, cli.Restorer.restore = prepare, restore
        sys.exit(cli.main(sys.argv[1:]))
        """
    )
    cv2.imwrite(str(tmp_path / "face.png"), np.zeros((64, 64, 3), np.uint8))
    model = save_tiny_generator(tmp_path / "tiny")
    args = ["-i", str(tmp_path / "face.png"), "-o", str(tmp_path / "out"), "-v", str(model), "--aligned"]
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stderr is not None
    said = ""
    while "Ctrl-C again" not in said and (line := proc.stderr.readline()):  # the bar's lines, "interrupted"
        said += line
    assert "gfp: interrupted" in said and "finishing the networks being prepared" in said, said
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=30)[1]
    assert proc.returncode == 130 and "Traceback" not in rest, rest
