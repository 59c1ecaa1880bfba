"""gfp.batch: the Ray Data job writes the CLI's files byte for byte, keeps a manifest, turns a bad file into a
failed record, resumes after a kill and skips what is done.

The Ray tests share one local Ray instance (2 CPUs) and a tiny generator. Its workers run with the PyTorch
backend, a cache holding an unreadable ParseNet file (so that no worker tries a download: faces are blended
with the soft square, as in the offline CLI runs they are compared with) and one PyTorch thread each, as
the CLI runs here: the thread count changes float rounding on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from _video_helpers import write_clip
from _zoo_helpers import shared_data_dir
from conftest import make_weights, shared_detector
from PIL import Image, ImageCms

from gfp import batch, cli, imageio
from gfp.registry import MODEL_ZOO

with contextlib.suppress(ImportError):  # without Ray its tests skip, the others run
    import ray.data  # noqa: F401  (here, not under a test's capsys: Ray's log handler keeps that stream)

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("codeformer_01.jpg", "codeformer_04.jpg")  # 4 faces and 1 face

pytestmark = pytest.mark.usefixtures("offline")


def _gradient(h: int, w: int, dtype: type = np.uint8, channels: int = 3) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    planes = [xx * 4, yy * 5, (xx + yy) * 2, 255 - xx][:channels]
    scale = 257 if dtype == np.uint16 else 1
    return (np.dstack(planes) % 256 * scale).astype(dtype)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny generator and the real detector when the shared data is there, else a blind one."""
    return make_weights(tmp_path_factory.mktemp("weights"), shared_detector())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local Ray instance with 2 CPUs for the whole module; yields its address (for ``--address``)."""
    ray = pytest.importorskip("ray")
    cache = tmp_path_factory.mktemp("cache")
    with open(cache / "parsing_parsenet.pth", "wb") as fh:  # its official size (sparse), so not downloaded
        fh.write(b"not a checkpoint")
        fh.truncate(MODEL_ZOO["parsenet"].size)
    with pytest.MonkeyPatch.context() as env:  # the raylet, so every worker, inherits these
        env.setenv("GFP_BACKEND", "torch")
        env.setenv("GFP_CACHE_DIR", str(cache))
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        context = ray.init(
            num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False
        )

        try:
            yield context.address_info["gcs_address"]
        finally:
            ray.shutdown()


def _args(weights: Path, *extra: str) -> list[str]:
    return ["-v", str(weights / "tiny"), "--weights-dir", str(weights), "--detector", "retinaface_mobile0.25",
            "--device", "cpu", "--bg_upsampler", "none", *extra]  # fmt: skip


def _cli(inputs: Path, out: Path, weights: Path, *extra: str) -> int:
    """The plain CLI on one PyTorch thread, as each batch worker runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return cli.main(["-i", str(inputs), "-o", str(out), *_args(weights, *extra)])
    finally:
        torch.set_num_threads(threads)


def _files(folder: Path) -> dict[str, bytes]:
    """Every output file (relative name → bytes), the manifest left out."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in (batch.MANIFEST, batch.LOCK_FILE)
    }


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / batch.MANIFEST).read_text().splitlines()]


def _worker(weights: Path, out: Path, filesystem: object, prefix: str, *extra: str) -> batch.RestoreWorker:
    """A worker as a Ray worker holds it, here in the test's process (its PyTorch threads put back)."""
    args = batch.build_parser().parse_args(["in", "-o", str(out), *_args(weights, *extra)])
    threads = torch.get_num_threads()
    try:
        return batch.RestoreWorker(batch.Job(args, str(out), filesystem, prefix, batch.settings_of(args), 1))
    finally:
        torch.set_num_threads(threads)


def _photos(folder: Path, n: int, size: int = 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"img{i:02d}.png"), np.roll(_gradient(size, size), i, axis=1))
    return folder


# ------------------------------------------------------------------------------------------ without Ray
def test_gfp_and_the_cli_do_not_import_ray() -> None:
    code = "import sys, gfp, gfp.cli, gfp.batch; print(sorted({'ray', 'pyarrow'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_without_ray_one_line_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert batch.main([str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install -r requirements-batch.txt" in err[0]
    assert not (tmp_path / "out").exists()


def test_gfp_batch_takes_every_restore_option_of_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    ours = batch.build_parser()._option_string_actions
    theirs = cli.build_parser()._option_string_actions
    assert set(theirs) - set(ours) == {"-i", "--input"}
    argv = ["-s", "3", "--strength", "0.5", "--only_center_face", "--detect-max-side", "128", "--crf", "20",
            "--no-smooth", "-v", "1.3", "--batch-size", "2"]  # fmt: skip
    mine = batch.build_parser().parse_args(["in", "-o", "out", *argv])
    plain = cli.build_parser().parse_args(argv)
    assert cli.restore_options(mine) == cli.restore_options(plain)
    assert cli.video_options(mine) == cli.video_options(plain)
    with pytest.raises(SystemExit) as exc:
        cli.main(["batch", "--help"])  # `gfp batch` is this command
    assert exc.value.code == 0
    assert "--address" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-s", "9"], "gfp batch: error: --upscale must be in [1, 8], got 9.0"),
        (["--aligned", "--min-face", "9"], "error: --min-face cannot be combined with --aligned"),
        (["--crf", "99"], "gfp batch: error: --crf must be an integer in [0, 51] for h264, got 99"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--cpus-per-worker", "0"], "--cpus-per-worker"),
        (["-o", "s3://bucket/out"], "OUTPUT must be a folder every worker sees"),
    ],
)
def test_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    pytest.importorskip("ray")
    _photos(tmp_path / "in", 1)
    with pytest.raises(SystemExit) as exc:
        batch.main([str(tmp_path / "in"), "-o", str(tmp_path / "out"), *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_output_that_is_a_file_or_named_like_one_is_refused_as_by_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("ray")
    inputs = _photos(tmp_path / "in", 1)
    (tmp_path / "results").write_text("a file, not a folder")
    for output, why in (
        (tmp_path / "results", "is a file"),
        (tmp_path / "out.png", "looks like a file name"),
    ):
        with pytest.raises(SystemExit) as exc:
            batch.main([str(inputs), "-o", str(output)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"-o takes a folder, and {str(output)!r} {why}" in err and "Traceback" not in err
    assert (tmp_path / "results").is_file() and not (tmp_path / "out.png").exists()


def test_an_output_that_cannot_be_written_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused before Ray starts, as the CLI refuses it; a folder that cannot be made says why."""
    pytest.importorskip("ray")
    inputs = _photos(tmp_path / "in", 1)
    locked = tmp_path / "locked"
    locked.mkdir()
    allowed = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and allowed(path, mode))
    with pytest.raises(SystemExit) as exc:
        batch.main([str(inputs), "-o", str(locked / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{locked} is not writable" in err and "Traceback" not in err
    (tmp_path / "file").write_text("not a folder")
    assert batch.main([str(inputs), "-o", str(tmp_path / "file" / "out")]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot write to {tmp_path / 'file' / 'out'}: " in err and "Traceback" not in err


def test_a_second_job_over_the_same_output_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While a job holds an output folder, another is refused before touching it: it would restore
    everything again, and its start would delete the running job's half-written files."""
    pytest.importorskip("ray")
    _photos(tmp_path / "in", 1)
    out = tmp_path / "out"
    running = batch.claim_output(out)
    assert running is not None
    (out / "restored_imgs").mkdir()
    writing = out / "restored_imgs" / ".img00.png.1234abcd.tmp"  # the running job's write in progress
    writing.write_bytes(b"half")
    assert batch.main([str(tmp_path / "in"), "-o", str(out), "-v", "v1.4"]) == 2
    assert "another gfp batch job is writing to" in capsys.readouterr().err
    assert writing.read_bytes() == b"half" and not (out / batch.MANIFEST).exists()
    running.close()  # the job ends: the folder is free again
    again = batch.claim_output(out)
    assert again is not None
    again.close()


def test_inputs_folder_glob_list_and_url(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("b.png", "a.jpg", "c.mp4", ".hidden.png", batch.MANIFEST, batch.LOCK_FILE):
        (photos / name).write_bytes(b"x")
    (photos / "sub").mkdir()
    (photos / "d.jpg").symlink_to(tmp_path / "gone.jpg")  # a link to nothing: listed, a failed record
    a, b, c, d = (str(photos / n) for n in ("a.jpg", "b.png", "c.mp4", "d.jpg"))

    def keys(spec: str) -> list[str]:
        return [item.key for item in batch.list_batch_inputs(spec).items]

    # what the CLI lists: not the files of a job that wrote into this folder (-o the input folder)
    assert keys(str(photos)) == [a, b, c, d]
    assert keys(str(photos / "*")) == [a, b, c, d]
    assert keys(str(photos / "*.p*")) == [b]
    assert keys(str(photos / "d.*")) == [d]
    (tmp_path / "list.txt").write_text(f"# chosen\nphotos/b.png\n\n{a}\nphotos/b.png\n")
    assert keys(str(tmp_path / "list.txt")) == [b, a]  # relative to the list, in its order, once each
    url = batch.list_batch_inputs(f"file://{photos}/*.jpg")
    assert [(i.key, i.path) for i in url.items] == [(f"file://{a}", a)]
    assert url.prefix == "file://" and url.filesystem is not None
    assert keys(f"file://{photos}") == [f"file://{p}" for p in (a, b, c)]  # what the store lists
    (tmp_path / "urls.txt").write_text(f"file://{c}\nphotos/a.jpg\n")
    with pytest.raises(ValueError, match="mixes file systems"):
        batch.list_batch_inputs(str(tmp_path / "urls.txt"))
    with pytest.raises(FileNotFoundError, match="no file matches"):
        batch.list_batch_inputs(str(photos / "*.gif"))
    with pytest.raises(FileNotFoundError, match="neither a file nor a folder"):
        batch.list_batch_inputs(str(tmp_path / "missing"))


def test_manifest_torn_line_settings_and_clashes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = batch.Manifest(out / batch.MANIFEST)
    (out / "restored_imgs").mkdir(parents=True)
    (out / "restored_imgs" / "a.png").write_bytes(b"x")
    done = {"path": "/in/a.png", "status": "done", "settings": "s1", "outputs": ["restored_imgs/a.png"]}
    assert list(manifest.append([done])) == [done]
    with manifest.path.open("ab") as fh:
        fh.write(b'{"path": "/in/b.png", "sta')  # a kill in the middle of a line
    later = {"path": "/in/c.png", "status": "failed", "error": "bad"}
    list(manifest.append([later]))
    assert manifest.latest() == {"/in/a.png": done, "/in/c.png": later}
    # the cut line is gone, not kept beside the next record: every line is JSON for any other reader
    assert [json.loads(line) for line in manifest.path.read_text().splitlines()] == [done, later]
    assert batch.is_complete(done, out, "s1")
    assert not batch.is_complete(done, out, "s2")  # other settings: redo
    assert not batch.is_complete(later, out, "s1")
    (out / "restored_imgs" / "a.png").unlink()
    assert not batch.is_complete(done, out, "s1")

    parser = batch.build_parser()
    base = parser.parse_args(["in", "-o", "out"])
    assert batch.settings_of(base) == batch.settings_of(
        parser.parse_args(["elsewhere", "-o", "o2", "--workers", "3", "--device", "cuda", "--redo"])
    )
    for extra in (["--suffix", "x"], ["-s", "4"], ["--ext", "png"], ["--crf", "20"]):
        assert batch.settings_of(parser.parse_args(["in", "-o", "out", *extra])) != batch.settings_of(base)

    items = [batch.Input(f"/in/{n}", f"/in/{n}") for n in ("a.jpg", "b.png", "a.png", "a.mp4")]
    todo, complete, clashes = batch.plan(items, {}, out, "s1", redo=False)
    # a clip's outputs go to restored_videos/: a.mp4 does not clash with the photo a.jpg
    assert [i.key for i in todo] == ["/in/a.jpg", "/in/b.png", "/in/a.mp4"] and not complete
    assert [(r["path"], r["status"]) for r in clashes] == [("/in/a.png", "failed")]
    assert "/in/a.jpg" in clashes[0]["error"]


def test_a_manifest_that_cannot_be_written_stops_the_job_and_stays_json_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk lets half a record through: the job stops (a FatalError, exit 2, not a traceback) and
    the half line is taken back."""
    manifest = batch.Manifest(tmp_path / batch.MANIFEST)
    first = {"path": "/in/a.png", "status": "done"}
    list(manifest.append([first]))

    class FullDisk(io.FileIO):
        def write(self, data: Any) -> int:
            super().write(bytes(data)[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "open", lambda self, mode, buffering=-1: FullDisk(self, mode.replace("b", "")))
    records = manifest.append([{"path": "/in/b.png", "status": "done"}])
    with pytest.raises(batch.FatalError, match="cannot write .*manifest.jsonl: .*No space left on device"):
        next(records)
    assert manifest.path.read_bytes() == json.dumps(first, sort_keys=True).encode() + b"\n"


def test_plan_keeps_an_earlier_jobs_outputs_and_gives_photos_their_names(tmp_path: Path) -> None:
    """An input whose outputs another job into the same folder restored (y2019/IMG_0001.jpg, then
    y2020/IMG_0001.jpg) fails instead of replacing them; a photo gets its name before a file that is none
    (an iPhone's IMG_1234.AAE sidecar sorts first)."""
    out = tmp_path / "out"
    earlier = {"path": "/y2019/IMG_0001.jpg", "status": "done", "settings": "s1", "outputs": ["x"]}
    failed = {"path": "/y2018/IMG_0002.jpg", "status": "failed", "error": "bad"}
    latest = {r["path"]: r for r in (earlier, failed)}
    items = [batch.Input(k, k) for k in ("/y2020/IMG_0001.jpg", "/y2020/IMG_0002.jpg", "/y2020/IMG_0003.jpg")]
    todo, _, clashes = batch.plan(items, latest, out, "s1", redo=False)
    assert [i.key for i in todo] == ["/y2020/IMG_0002.jpg", "/y2020/IMG_0003.jpg"]  # a failure claims nothing
    assert [r["path"] for r in clashes] == ["/y2020/IMG_0001.jpg"]
    assert "/y2019/IMG_0001.jpg" in clashes[0]["error"] and "another -o" in clashes[0]["error"]
    again = [batch.Input("/y2019/IMG_0001.jpg", "/y2019/IMG_0001.jpg"), *items[1:]]
    assert not batch.plan(again, latest, out, "s1", redo=True)[2]  # the earlier job's input keeps its outputs

    items = [batch.Input(k, k) for k in ("/in/IMG_1234.AAE", "/in/IMG_1234.JPG", "/in/b.xml", "/in/b.txt")]
    todo, _, clashes = batch.plan(items, {}, out, "s1", redo=False)
    assert [i.key for i in todo] == ["/in/IMG_1234.JPG", "/in/b.xml"]  # no photo: the first
    assert [r["path"] for r in clashes] == ["/in/IMG_1234.AAE", "/in/b.txt"]
    assert "/in/IMG_1234.JPG" in clashes[0]["error"] and "another -o" not in clashes[0]["error"]

    # a.jpg is corrupt, a.png a photo: the first run refuses a.png as a clash; the rerun, where a.jpg's
    # record says it failed when tried, restores a.png (as the CLI gives a failed input's name back)
    items = [batch.Input(k, k) for k in ("/in/a.jpg", "/in/a.png")]
    todo, _, clashes = batch.plan(items, {}, out, "s1", redo=False)
    assert [i.key for i in todo] == ["/in/a.jpg"] and [r["path"] for r in clashes] == ["/in/a.png"]
    latest = {
        r["path"]: r for r in (clashes[0], {"path": "/in/a.jpg", "status": "failed", "error": "corrupt"})
    }
    todo, _, clashes = batch.plan(items, latest, out, "s1", redo=False)
    assert [i.key for i in todo] == ["/in/a.png"] and [r["path"] for r in clashes] == ["/in/a.jpg"]


def test_the_file_an_earlier_job_restored_is_no_clash_under_another_name(tmp_path: Path) -> None:
    """Through a link to its folder, or as a file:// URL, it is the same input: complete, not 'its outputs
    would overwrite those of' itself."""
    photo = _photos(tmp_path / "in", 1) / "img00.png"
    (tmp_path / "link").symlink_to(tmp_path / "in")
    out = tmp_path / "out"
    (out / "restored_imgs").mkdir(parents=True)
    (out / "restored_imgs" / "img00.png").write_bytes(b"restored")
    done = {"path": str(photo), "status": "done", "settings": "s1", "outputs": ["restored_imgs/img00.png"]}
    for key in (str(tmp_path / "link" / "img00.png"), f"file://{photo}"):
        todo, complete, clashes = batch.plan([batch.Input(key, key)], {str(photo): done}, out, "s1", False)
        assert (todo, [i.key for i in complete], clashes) == ([], [key], []), key
        todo, _, clashes = batch.plan([batch.Input(key, key)], {str(photo): done}, out, "s1", True)
        assert [i.key for i in todo] == [key] and not clashes  # --redo restores it again


def test_a_file_url_input_is_never_written_over(tmp_path: Path, weights: Path) -> None:
    """file://OUT/restored_imgs/ -o OUT: the input is read through pyarrow's local file system, and its
    output would be the input itself."""
    pafs = pytest.importorskip("pyarrow.fs")
    out = tmp_path / "out"
    photo = _photos(out / "restored_imgs", 1) / "img00.png"
    before = photo.read_bytes()
    record = _worker(weights, out, pafs.LocalFileSystem(), "file://").restore(str(photo), before)
    assert record["status"] == "failed" and "would replace the input itself" in record["error"]
    assert record["path"] == f"file://{photo}" and photo.read_bytes() == before


def test_a_clip_on_the_local_disk_is_read_where_it_is(tmp_path: Path) -> None:
    """A file:// clip is on this machine: it was copied whole to a temporary file first, like one on S3."""
    pafs = pytest.importorskip("pyarrow.fs")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not read here")
    with batch._local_copy(pafs.LocalFileSystem(), str(clip)) as local:
        assert local == str(clip)


def test_a_remote_clips_error_names_the_clip_not_its_temporary_copy(tmp_path: Path, weights: Path) -> None:
    """A clip on object storage is restored from a local copy, deleted after: its failed record names it."""
    pafs = pytest.importorskip("pyarrow.fs")
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    clip = write_clip(tmp_path / "clip.mkv", [_gradient(48, 64)] * 20, container="matroska")
    (bucket / "cut.mkv").write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    store = pafs.SubTreeFileSystem(str(bucket), pafs.LocalFileSystem())  # not the local disk: copied first
    record = _worker(weights, tmp_path / "out", store, "s3://bucket/").restore("cut.mkv", b"")
    assert record["status"] == "failed"
    assert record["error"].startswith("s3://bucket/cut.mkv: truncated or corrupt")


def test_a_records_refused_options_are_named_by_their_flags(tmp_path: Path, weights: Path) -> None:
    """A clip's record says the flags to change, as the CLI does, not the library's field names; a remote
    clip's names the clip, not its temporary copy."""
    pafs = pytest.importorskip("pyarrow.fs")
    (tmp_path / "bucket").mkdir()
    clip = write_clip(tmp_path / "bucket" / "wide.mkv", [_gradient(48, 2100)], container="matroska")
    record = _worker(weights, tmp_path / "out", None, "", "--aligned").restore(str(clip), b"")
    assert record["status"] == "failed"
    assert record["error"].startswith("--aligned does not apply to videos")
    store = pafs.SubTreeFileSystem(str(clip.parent), pafs.LocalFileSystem())  # copied first
    record = _worker(weights, tmp_path / "out", store, "s3://bucket/", "-s", "8").restore("wide.mkv", b"")
    assert record["status"] == "failed"
    assert record["error"].startswith("s3://bucket/wide.mkv: restored frames of 16800x384 are above")
    assert record["error"].endswith("choose a smaller --upscale, or --video-codec h265 or vp9")


def test_a_full_disk_is_a_fatal_record_and_stops_the_job(
    tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every later input would be restored, then fail to write: the worker's record stops the job (exit 2)
    in one line saying how many inputs are left; the photo's record is not written, so a rerun does it."""
    pytest.importorskip("ray.data")
    photo = _photos(tmp_path / "in", 1) / "img00.png"

    def full(path: Path, *args: object, **kwargs: object) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli, "write_image", full)
    out = tmp_path / "out"
    record = _worker(weights, out, None, "").restore(str(photo), photo.read_bytes())
    assert record["status"] == "fatal" and record["unwritable"]
    assert record["error"] == f"cannot write the outputs of {photo}: [Errno 28] No space left on device"

    class Rows:
        def iter_rows(self) -> Iterator[dict[str, str]]:
            yield {"record": json.dumps(record)}

    pending = [batch.Input(str(tmp_path / f"in/img0{i}.png"), "") for i in range(3)]
    job = batch.Job(argparse.Namespace(), str(out), None, "", "s1", 1)
    with pytest.raises(batch.FatalError) as exc:
        next(batch._results(Rows(), job, pending))
    assert str(exc.value) == (
        f"{record['error']}; stopped with 3 of 3 input(s) not restored: rerun the same command to go on "
        f"once {str(out)!r} can be written"
    )
    monkeypatch.undo()  # another error (a corrupt photo) fails that input only
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert _worker(weights, out, None, "").restore(str(broken), broken.read_bytes())["status"] == "failed"


def test_a_full_temporary_folder_is_named_not_the_output_disk(
    tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remote clip is copied to the temporary folder first: when that is full, the job still stops, but
    its line names that folder and TMPDIR, not the output disk, which may well have room."""
    pafs = pytest.importorskip("pyarrow.fs")
    (tmp_path / "bucket").mkdir()
    (tmp_path / "bucket" / "clip.mkv").write_bytes(b"a clip")
    store = pafs.SubTreeFileSystem(str(tmp_path / "bucket"), pafs.LocalFileSystem())
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(batch.tempfile, "tempdir", str(scratch))

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(batch.shutil, "copyfileobj", full)
    out = tmp_path / "out"
    record = _worker(weights, out, store, "s3://bucket/").restore("clip.mkv", b"")
    assert record["status"] == "fatal" and record["unwritable"]
    assert record["error"] == (
        f"cannot copy s3://bucket/clip.mkv to the temporary folder {str(scratch)!r} (TMPDIR chooses it): "
        "[Errno 28] No space left on device"
    )
    assert not list(scratch.iterdir())  # the part copied is deleted

    class Rows:
        def iter_rows(self) -> Iterator[dict[str, str]]:
            yield {"record": json.dumps(record)}

    job = batch.Job(argparse.Namespace(), str(out), store, "s3://bucket/", "s1", 1)
    with pytest.raises(batch.FatalError, match=f"go on once {str(scratch)!r} can be written$"):
        next(batch._results(Rows(), job, [batch.Input("s3://bucket/clip.mkv", "clip.mkv")]))


def test_a_photo_out_of_memory_is_a_failed_record_saying_what_to_change(
    tmp_path: Path, weights: Path
) -> None:
    """As the CLI says it: the record of a photo too big for a worker's memory leads with the options that
    need less, not only the allocator's words."""
    photo = tmp_path / "big.png"
    cv2.imwrite(str(photo), _gradient(64, 64))
    worker = _worker(weights, tmp_path / "out", None, "")

    def restore(img: np.ndarray, options: object) -> None:
        raise MemoryError("Unable to allocate 2.15 GiB for an array")

    worker.restorer.restore = restore  # type: ignore[method-assign]
    record = worker.restore(str(photo), photo.read_bytes())
    assert record["status"] == "failed"
    assert record["error"] == f"{cli.OUT_OF_MEMORY} (Unable to allocate 2.15 GiB for an array)"


def test_a_photo_too_big_to_decode_is_a_failed_record_saying_memory(
    tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the CLI says it: its size, what its decode needs and what is free, not a corrupt file, nor the
    options that make the restore smaller (none makes the decode fit)."""
    monkeypatch.setattr(imageio, "available_memory", lambda: 2**20)
    photo = tmp_path / "big.png"
    cv2.imwrite(str(photo), _gradient(500, 700))
    record = _worker(weights, tmp_path / "out", None, "").restore(str(photo), photo.read_bytes())
    assert record["status"] == "failed"
    assert record["error"] == (
        f"{photo}: not enough memory: decoding its 700x500 pixels (0.3 MP) needs about 2 MiB, 1 MiB is free: "
        "free some memory or downscale it first"
    )


def test_a_restored_image_too_large_for_its_format_is_a_failed_record(tmp_path: Path, weights: Path) -> None:
    photo = tmp_path / "wide.jpg"
    cv2.imwrite(str(photo), _gradient(8, 8200))
    record = _worker(weights, tmp_path / "out", None, "", "-s", "8").restore(str(photo), photo.read_bytes())
    assert record["status"] == "failed"
    assert record["error"].startswith("restored size 65600x64 is above the 65500 px a side that JPEG holds")
    assert not (tmp_path / "out").exists()  # nothing written, no face file either


def test_an_animation_is_noted_as_restored_from_its_first_frame(tmp_path: Path, weights: Path) -> None:
    """As the CLI and the app say it: the batch job's record notes that only the first frame was restored."""
    from PIL import Image

    frames = [Image.fromarray(np.roll(_gradient(64, 64), shift, axis=1)) for shift in (0, 8)]
    frames[0].save(tmp_path / "wave.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "still.gif")
    worker = _worker(weights, tmp_path / "out", None, "")
    moving = worker.restore(str(tmp_path / "wave.gif"), (tmp_path / "wave.gif").read_bytes())
    still = worker.restore(str(tmp_path / "still.gif"), (tmp_path / "still.gif").read_bytes())
    assert moving["status"] == still["status"] == "done"
    assert "wave.gif holds 2 frames; only the first was restored" in moving["notes"]
    assert not any("holds" in note for note in still["notes"])


@pytest.mark.shared
def test_a_record_says_which_faces_were_skipped_and_why(tmp_path: Path, weights: Path) -> None:
    """The CLI prints why faces were not restored (not chosen, too small, numbers not there); a record held
    only the counts, so a manifest could not tell a choice from a miss."""
    photo = shared_data_dir() / "photos" / PHOTOS[0]  # 4 faces
    worker = _worker(weights, tmp_path / "out", None, "", "--faces", "2,9", "--backend", "torch")
    record = worker.restore(str(photo), photo.read_bytes())
    assert record["faces_found"] == 4 and record["faces_restored"] == 1
    assert record["backends"]["generator"] == "PyTorch"  # what ran it, as the CLI's last line says
    assert (
        record["selection"]
        == "4 faces found, 1 restored, 3 skipped (3 not chosen); no face 9 (numbers go up to 4)"
    )
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), _gradient(64, 64))
    assert worker.restore(str(blank), blank.read_bytes())["selection"] == "no face found, image only upscaled"


# -------------------------------------------------------------------------------------------- with Ray
def test_outputs_equal_the_cli_byte_for_byte_and_a_corrupt_file_is_a_failed_record(
    tmp_path: Path, cluster: str, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    data = shared_data_dir()
    real = (data / "README.md").is_file()  # real photos with faces; else gradients and a blind detector
    for name in PHOTOS if real else ():
        (inputs / name).symlink_to(data / "photos" / name)
    cv2.imwrite(str(inputs / "alpha16.png"), _gradient(48, 40, np.uint16, channels=4))
    cv2.imwrite(str(inputs / "gray.png"), _gradient(30, 50)[:, :, 0])
    upright = cv2.imread(str(data / "photos" / PHOTOS[1])) if real else _gradient(60, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90° clockwise: only a reader that applies it sees the upright photo
    turned = np.ascontiguousarray(np.rot90(upright, 1)[:, :, ::-1])
    Image.fromarray(turned).save(inputs / "turned.jpg", exif=exif, quality=95)
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()  # kept in the outputs
    Image.fromarray(_gradient(30, 50)).save(inputs / "tagged.png", icc_profile=profile)
    small = cv2.resize(upright, (96, 96))
    write_clip(
        inputs / "clip.mp4", [np.clip(small.astype(int) + i, 0, 255).astype(np.uint8) for i in range(4)]
    )
    (inputs / "broken.png").write_bytes(b"not an image")

    out, plain = tmp_path / "batch", tmp_path / "cli"
    # Given as a URL: read through a pyarrow file system, as from object storage (the clip copied locally).
    argv = [f"file://{inputs}", "-o", str(out), "--workers", "2", *_args(weights)]
    assert batch.main(argv) == 1  # one input failed
    printed = capsys.readouterr()
    assert _cli(inputs, plain, weights) == 1

    ours, theirs = _files(out), _files(plain)
    assert sorted(ours) == sorted(theirs)
    assert [name for name in ours if ours[name] != theirs[name]] == []
    assert cv2.imread(str(out / "restored_imgs" / "turned.jpg")).shape[:2] == (
        2 * upright.shape[0],
        2 * upright.shape[1],
    )

    with Image.open(out / "restored_imgs" / "tagged.png") as im:
        assert im.info.get("icc_profile") == profile
    records = {Path(r["path"]).name: r for r in _records(out)}
    assert sorted(r["path"] for r in records.values()) == sorted(f"file://{p}" for p in inputs.iterdir())
    assert records["broken.png"]["status"] == "failed" and "not an image" in records["broken.png"]["error"]
    assert "broken.png" in printed.err and f"{len(records) - 1} done, 0 skipped, 1 failed" in printed.out
    for name, record in records.items():
        if name == "broken.png":
            continue
        stem = Path(name).stem
        assert record["status"] == "done" and record["error"] is None and record["seconds"] > 0
        assert sorted(record["outputs"]) == sorted(n for n in ours if Path(n).stem.startswith(stem))
        assert record["faces_found"] >= record["faces_restored"]
        faces = [n for n in ours if n.startswith("restored_faces/") and Path(n).stem.startswith(stem)]
        assert record["faces_restored"] == len(faces) or name == "clip.mp4"  # a clip writes no face files
    assert records["clip.mp4"]["audio"] == "copied" and "audio" not in records["gray.png"]
    # the summary counts photos' faces and clips' people (tracks) apart
    faces = sum(r["faces_restored"] for name, r in records.items() if name not in ("clip.mp4", "broken.png"))
    people = records["clip.mp4"]["faces_restored"]
    assert f" {faces} faces, {people} {'person' if people == 1 else 'people'} in clips, " in printed.out
    if real:
        assert records[PHOTOS[0]]["faces_restored"] == 4 and records["turned.jpg"]["faces_restored"] == 1
        assert people == 1  # one person


def test_names_holding_a_newline_or_a_tab_are_restored_and_printed_in_one_line(
    tmp_path: Path, cluster: str, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ray Data's reader drops a newline or a tab from a path (it never found such a photo: 'its Ray task
    failed' on every rerun): their workers read them, and every message names them in one line."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "new\nline.png"), _gradient(40, 56))
    cv2.imwrite(str(inputs / "tab\tname.png"), _gradient(40, 56))
    cv2.imwrite(str(inputs / "plain.png"), _gradient(40, 56))
    (inputs / "bad\nname.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert batch.main([str(inputs), "-o", str(out), "--workers", "1", *_args(weights)]) == 1
    printed = capsys.readouterr()
    records = {Path(r["path"]).name: r for r in _records(out)}
    assert {name: r["status"] for name, r in records.items()} == {
        "new\nline.png": "done", "tab\tname.png": "done", "plain.png": "done", "bad\nname.png": "failed"
    }  # fmt: skip
    assert (
        out / "restored_imgs" / "new\nline.png"
    ).is_file() and "3 done, 0 skipped, 1 failed" in printed.out
    bad = repr(str(inputs / "bad\nname.png"))
    errors = [line for line in printed.err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith(f"gfp batch: error: {bad}: not an image"), errors


def test_rerun_redoes_only_missing_outputs_and_a_finished_job_does_no_work(
    tmp_path: Path, cluster: str, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = _photos(tmp_path / "in", 4)
    out = tmp_path / "out"
    argv = [str(inputs), "-o", str(out), "--workers", "1", *_args(weights)]
    assert batch.main(argv) == 0
    first = _files(out)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    gone = out / "restored_imgs" / "img02.png"
    gone.unlink()
    capsys.readouterr()

    assert batch.main(argv) == 0
    assert "1 done, 3 skipped, 0 failed" in capsys.readouterr().out
    assert [Path(r["path"]).name for r in _records(out)][4:] == ["img02.png"]
    assert _files(out) == first
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p != gone)  # the others untouched

    manifest = (out / batch.MANIFEST).read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert batch.main(argv) == 0
    assert "0 done, 4 skipped, 0 failed" in capsys.readouterr().out
    assert (out / batch.MANIFEST).read_bytes() == manifest
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamps

    assert batch.main([*argv, "--redo"]) == 0
    assert "4 done, 0 skipped" in capsys.readouterr().out
    assert Counter(Path(r["path"]).name for r in _records(out)) == {
        "img00.png": 2, "img01.png": 2, "img02.png": 3, "img03.png": 2
    }  # fmt: skip


def _job_midway(tmp_path: Path, weights: Path, cluster: str) -> tuple[subprocess.Popen, list[str]]:
    """A ``python -m gfp.batch`` job over 24 photos into ``tmp_path / "out"``, once its first record is
    written; returns the process (its stderr goes to ``tmp_path / "stderr"``) and its arguments."""
    inputs = _photos(tmp_path / "in", 24, size=192)
    out = tmp_path / "out"
    argv = [str(inputs), "-o", str(out), "--workers", "1", "-s", "4", *_args(weights), "--address", cluster]
    with open(tmp_path / "stderr", "wb") as err:  # (a pipe nobody reads could fill and stop the job)
        proc = subprocess.Popen(
            [sys.executable, "-m", "gfp.batch", *argv], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err
        )
    manifest = out / batch.MANIFEST
    deadline = time.monotonic() + 240
    while not (manifest.is_file() and manifest.read_bytes().count(b"\n")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no record within 4 minutes"
        time.sleep(0.02)
    return proc, argv


def test_a_job_killed_midway_and_rerun_does_each_input_once(
    tmp_path: Path, cluster: str, weights: Path
) -> None:
    proc, argv = _job_midway(tmp_path, weights, cluster)
    inputs, out = tmp_path / "in", tmp_path / "out"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 0 < len(_records(out)) < 24  # killed midway
    # a write the kill cut short, whether or not this kill landed in one: the rerun must not leave it
    (out / "restored_imgs").mkdir(exist_ok=True)
    (out / "restored_imgs" / ".img00.png.k1ll3d.tmp").write_bytes(b"\x89PNG half")

    assert batch.main(argv) == 0
    records = _records(out)
    assert all(r["status"] == "done" for r in records)
    assert Counter(Path(r["path"]).name for r in records) == {p.name: 1 for p in inputs.iterdir()}
    assert _cli(inputs, tmp_path / "cli", weights, "-s", "4") == 0
    assert _files(out) == _files(tmp_path / "cli")


def test_a_job_stopped_with_sigterm_says_so_and_exits_130(
    tmp_path: Path, cluster: str, weights: Path
) -> None:
    """ray.init put its own SIGTERM handler in place (exit 15, without a word): a stopped job must end as
    Ctrl-C ends it, saying how to go on."""
    proc, _ = _job_midway(tmp_path, weights, cluster)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    err = (tmp_path / "stderr").read_bytes()
    assert proc.returncode == 130, err.decode()
    assert b"interrupted; the manifest keeps what finished" in err and b"Traceback" not in err


def test_a_worker_no_node_can_hold_is_a_one_line_error(
    tmp_path: Path, cluster: str, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--cpus-per-worker 4 on the 2-CPU cluster, or a GPU where it has none: Ray would wait for ever for a
    node that can hold the worker."""
    parser = batch.build_parser()
    asks = {"--cpus-per-worker": "4 CPU(s) and 0 GPU(s)", "--gpus-per-worker": "1 CPU(s) and 1 GPU(s)"}
    for flag, asked in asks.items():  # each asks 4 CPUs or 1 GPU: the count its message begins with
        with pytest.raises(batch.FatalError, match="at most 2 CPU") as exc:
            batch._resources(parser.parse_args(["in", "-o", "out", flag, asked[0]]), 3)
        assert asked in str(exc.value)
    # a cluster joined by --address may start a node that fits (an autoscaler): a warning, then the wait
    joined = parser.parse_args(["in", "-o", "out", "--address", "auto", "--cpus-per-worker", "4"])
    assert batch._resources(joined, 3)[1:] == (4, 0)
    assert "warning: a worker needs 4 CPU(s)" in capsys.readouterr().err
    out = tmp_path / "out"
    argv = [str(_photos(tmp_path / "in", 1)), "-o", str(out), "--cpus-per-worker", "4", *_args(weights)]
    assert batch.main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "no node of the Ray cluster has them" in errors[0], errors
    assert not (out / batch.MANIFEST).exists()


def test_missing_weights_stop_the_job_with_exit_2(
    tmp_path: Path, cluster: str, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = _photos(tmp_path / "in", 2)
    argv = [str(inputs), "-o", str(tmp_path / "out"), "--workers", "1", *_args(weights)]
    argv[argv.index("-v") + 1] = str(tmp_path / "gone.pth")
    assert batch.main(argv) == 2
    err = capsys.readouterr().err
    assert f"weights file {tmp_path / 'gone.pth'} does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "out" / batch.MANIFEST).exists() or not _records(tmp_path / "out")
