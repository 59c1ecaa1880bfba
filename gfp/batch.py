"""Restore a whole archive on a Ray cluster: ``python -m gfp.batch INPUT -o OUTPUT`` (= ``gfp batch``).

A Ray Data job with the CLI's options and outputs. ``INPUT`` is a folder, a glob, a text file listing
paths (``.txt``) or an object-storage URL Ray Data reads (``s3://``, ``gs://``, ...); ``OUTPUT`` gets the
CLI's layout and file names (:mod:`gfp.cli`), on a file system every worker sees (a local disk for a local
instance, a shared mount on a cluster). Photos are read by Ray Data's binary-file reader and decoded by
:func:`gfp.imageio.read_image_bytes`, as the CLI reads them (alpha, 16-bit, EXIF orientation); each clip
is one call of :func:`gfp.video.restore_video`, and a photo whose path holds a control character (which Ray
Data's reader drops from paths) is read by its worker too. One :class:`RestoreWorker` per Ray worker holds one
:class:`~gfp.pipeline.Restorer`, so the networks load once per worker.

Nothing is lost and nothing is done twice: every output is written atomically by the worker, which then
returns one record; the driver appends it to ``OUTPUT/manifest.jsonl`` (path, status, faces found and
restored, seconds, worker, error, outputs, notes, settings). A file that cannot be read or restored is a
failed record, never a failed job. Rerunning the same command skips every input whose latest record is
done, with the same settings, and whose outputs all exist (``--redo`` forces); a job killed midway and
rerun ends with each input done once.

Ray is optional (``pip install -r requirements-batch.txt``): ``import gfp`` and the CLI never import it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import fnmatch
import glob
import hashlib
import itertools
import json
import os
import posixpath
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from gfp.atomic import PARTIAL_GLOB, termination_handlers_kept, unwinding_on_termination
from gfp.cli import (
    CLASH,
    LOCK_FILE,
    MANIFEST,
    add_restore_arguments,
    check_not_input,
    check_output_folder,
    check_output_size,
    disk_error,
    face_summary,
    failure,
    is_input_file,
    is_job_file,
    list_inputs,
    main_output,
    make_restorer,
    output_clash,
    output_group,
    output_owners,
    restore_options,
    said,
    save_outputs,
    unwritable,
    video_options,
)
from gfp.imageio import first_frame_note, read_icc_profile, read_image_bytes
from gfp.messages import first_line, is_plain, shown
from gfp.video import VideoError, VideoOptionError, is_video, restore_video
from gfp.weights.errors import WeightsError

INSTALL = "pip install -r requirements-batch.txt"
"""How to get Ray Data (the line printed when it is missing)."""
RUN_ONLY = frozenset(
    {"input", "output", "address", "workers", "gpus_per_worker", "cpus_per_worker", "redo"}
    | {"weights_dir", "device", "half", "fp32", "backend", "batch_size"}
)
"""Arguments that say where and how fast the job runs, not what it makes: left out of the settings
fingerprint, so a job begun on CPUs may be finished on a GPU cluster without redoing its done inputs."""


# ---------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Input:
    """One input: ``key`` as the manifest names it (an absolute local path or a URL) and ``path`` on its
    file system (what Ray Data's reader is given and reports back)."""

    key: str
    path: str


@dataclass(frozen=True)
class Inputs:
    """The listed inputs, the pyarrow file system they are read from (None: the local disk) and the prefix
    that turns a path on it into its key (``s3://``; empty on the local disk)."""

    items: list[Input]
    filesystem: Any
    prefix: str = ""


def _remote(spec: str) -> bool:
    """Whether ``spec`` is a URL (read through pyarrow's file systems, as Ray Data reads it)."""
    return "://" in spec


def _split_url(url: str) -> tuple[Any, str, str]:
    """(pyarrow file system, path on it, prefix that turns such a path back into a URL: ``s3://``,
    ``hdfs://host:8020``)."""
    from pyarrow import fs as pafs

    try:
        filesystem, path = pafs.FileSystem.from_uri(url)
    except (ValueError, OSError) as err:
        raise ValueError(f"cannot open {url!r}: {first_line(err)}") from None
    at = url.find(path, len(url.split("://", 1)[0]) + 3) if path else -1
    return filesystem, path, url[:at] if at >= 0 else url.split("://", 1)[0] + "://"


def list_batch_inputs(spec: str) -> Inputs:
    """The inputs ``spec`` names: a folder (its files, sorted, as the CLI lists them), a glob, a ``.txt``
    file listing one path or URL per line (relative ones from the list's folder; ``#`` comments), a single
    file, or the same on object storage (a URL; a glob there only in its last part). A folder or glob never
    yields a job's own files (:data:`gfp.cli.JOB_FILES`): ``-o`` may be the input folder.

    Raises ``FileNotFoundError`` or ``ValueError`` with a one-line message; an input named twice is kept
    once.
    """
    if spec.endswith(".txt"):
        return _read_list(spec)
    if _remote(spec):
        filesystem, path, prefix = _split_url(spec)
        listed = _list_remote(filesystem, path, prefix)
        return Inputs(list(dict.fromkeys(Input(prefix + p, p) for p in listed)), filesystem, prefix)
    if glob.has_magic(spec) and not os.path.exists(spec):
        found = sorted(p for p in glob.glob(spec) if is_input_file(p) and not is_job_file(p))
        if not found:
            raise FileNotFoundError(f"no file matches {spec!r}")
        return Inputs(_local(found), None)
    return Inputs(_local(str(p) for p in list_inputs(spec)), None)


def _local(paths: Iterable[str]) -> list[Input]:
    return list(dict.fromkeys(Input(os.path.abspath(p), os.path.abspath(p)) for p in paths))


def _list_remote(filesystem: Any, path: str, prefix: str) -> list[str]:
    """A file, the files of a folder (no hidden ones, as the CLI's glob) or those matching a glob."""
    from pyarrow import fs as pafs

    if filesystem.get_file_info(path).type == pafs.FileType.File:
        return [path]
    folder, pattern = (
        (posixpath.dirname(path), posixpath.basename(path)) if glob.has_magic(path) else (path, "*")
    )
    if glob.has_magic(folder):
        raise ValueError(f"{prefix + path}: a URL takes a glob only in its last part")
    entries = filesystem.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    names = sorted(
        e.path
        for e in entries
        if e.type == pafs.FileType.File
        and fnmatch.fnmatchcase(e.base_name, pattern)
        and not e.base_name.startswith(".")
        and not is_job_file(e.base_name)
    )
    if not names:
        raise FileNotFoundError(f"no file at {prefix + path}")
    return names


def _read_list(spec: str) -> Inputs:
    """The inputs a list file names: one path or URL a line, all on the local disk or all on one store."""
    try:
        if _remote(spec):
            filesystem, path, _ = _split_url(spec)
            with filesystem.open_input_stream(path) as stream:
                text = stream.read().decode("utf-8")
            base = spec.rsplit("/", 1)[0]
        else:
            text, base = Path(spec).read_text(encoding="utf-8"), os.path.dirname(os.path.abspath(spec))
    except (OSError, UnicodeDecodeError) as err:
        raise FileNotFoundError(f"cannot read the input list {spec!r}: {first_line(err)}") from None
    entries = [line.strip() for line in text.splitlines()]
    entries = [e for e in entries if e and not e.startswith("#")]
    if not entries:
        raise ValueError(f"the input list {spec!r} names no file")
    if not _remote(base) and not any(_remote(e) for e in entries):
        return Inputs(_local(os.path.join(base, e) for e in entries), None)
    urls = [e if _remote(e) else f"{base}/{e}" for e in entries]
    filesystem, _, prefix = _split_url(urls[0])
    strange = next((url for url in urls if not url.startswith(prefix)), None)
    if strange is not None:
        raise ValueError(f"the input list {spec!r} mixes file systems ({strange}); list one kind per job")
    return Inputs(list(dict.fromkeys(Input(url, url[len(prefix) :]) for url in urls)), filesystem, prefix)


# -------------------------------------------------------------------------------------------- manifest
class Manifest:
    """``OUTPUT/manifest.jsonl``: one JSON line per finished input, appended (and flushed) by the driver."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def latest(self) -> dict[str, dict[str, Any]]:
        """The latest record of each input; a line cut short by a kill is ignored."""
        records: dict[str, dict[str, Any]] = {}
        if not self.path.is_file():
            return records
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("path"), str):
                    records[record["path"]] = record
        return records

    def append(self, records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Append each record as it comes (one unbuffered write per line), yielding it after it is written.
        A manifest that cannot be written (a full disk) is a :class:`FatalError`: the job stops, its
        outputs kept, rather than restoring inputs it could not record."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = self.path.open("r+b" if self.path.exists() else "w+b", buffering=0)
        except OSError as err:
            raise FatalError(self._cannot(err)) from None
        with fh:
            for record in records:
                line = memoryview(json.dumps(record, sort_keys=True).encode() + b"\n")
                try:
                    _cut_torn_line(fh)
                    while line:
                        line = line[fh.write(line) :]
                except OSError as err:
                    with contextlib.suppress(OSError):
                        _cut_torn_line(fh)  # the part of this line a full disk let through
                    raise FatalError(self._cannot(err)) from None
                yield record

    def _cannot(self, err: OSError) -> str:
        return f"cannot write {self.path}: {first_line(err)}; rerun the same command when it can be written"


def _cut_torn_line(fh: IO[bytes]) -> None:
    """Leave ``fh`` at the end of its last whole line, dropping a line a kill or a full disk cut short (its
    input has no record, so it is restored again): the manifest stays valid JSON Lines for other readers,
    and the next record starts a line of its own."""
    end = fh.seek(0, os.SEEK_END)
    if end == 0:
        return
    fh.seek(end - 1)
    if fh.read(1) == b"\n":  # the usual case: whole lines, one byte read
        return
    start = end
    while start > 0:
        step = min(start, 1 << 16)
        fh.seek(start - step)
        newline = fh.read(step).rfind(b"\n")
        if newline >= 0:
            start -= step - newline - 1
            break
        start -= step
    if start < end:
        fh.truncate(start)
    fh.seek(start)


def settings_of(args: argparse.Namespace) -> str:
    """A fingerprint of every argument that changes the outputs (all but :data:`RUN_ONLY`)."""
    made = {k: v for k, v in sorted(vars(args).items()) if k not in RUN_ONLY}
    return hashlib.sha256(json.dumps(made, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_complete(record: dict[str, Any] | None, output: Path, settings: str) -> bool:
    """Whether ``record`` says its input is done with these settings and every output it lists exists."""
    return (
        record is not None
        and record.get("status") == "done"
        and record.get("settings") == settings
        and bool(record.get("outputs"))
        and all((output / name).is_file() for name in record["outputs"])
    )


def _record(path: str, status: str, seconds: float = 0.0, worker: str = "", **fields: Any) -> dict[str, Any]:
    record = {"path": path, "status": status, "faces_found": 0, "faces_restored": 0, "error": None}
    record |= {"outputs": [], "notes": [], "seconds": round(seconds, 4), "worker": worker}
    return record | fields | {"time": datetime.now(UTC).isoformat(timespec="milliseconds")}


# ---------------------------------------------------------------------------------------------- worker
@dataclass(frozen=True)
class Job:
    """What every worker needs: the parsed restore arguments, the absolute output folder, the inputs' file
    system and key prefix (:class:`Inputs`; remote clips are copied to a local temporary file for PyAV),
    the settings fingerprint its records carry and its PyTorch threads."""

    args: argparse.Namespace
    output: str
    filesystem: Any
    prefix: str
    settings: str
    threads: int


class RestoreWorker:
    """The callable class of ``map_batches``: one per Ray worker, holding one :class:`Restorer` whose
    networks load once, here, while the first inputs are read. Each call restores the rows of a batch
    (``path``, ``bytes``; clips come without bytes, and so do photos :func:`execute` leaves to the worker),
    writes their outputs as the CLI does and returns one JSON record per row. Missing weights and a full or
    read-only output disk are a ``fatal`` record: the driver stops the job (exit 2)."""

    def __init__(self, job: Job) -> None:
        import torch

        torch.set_num_threads(job.threads)
        self.job = job
        self.options = restore_options(job.args)
        self.video = video_options(job.args)
        self.output = Path(job.output)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.restorer = make_restorer(job.args)
        self.restorer.prepare(self.options)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        """Restore every row of ``batch``; returns ``{"record": [json, ...]}``, one per row."""
        rows = zip(batch["path"], batch["bytes"], strict=True)
        return {"record": [json.dumps(self.restore(str(path), data)) for path, data in rows]}

    def restore(self, path: str, data: bytes) -> dict[str, Any]:
        """Restore the input at ``path`` (on the job's file system; ``data``: a photo's bytes) and write its
        outputs; its record (done, failed, or fatal for missing weights and a full or read-only disk)."""
        start = time.perf_counter()
        key = self.job.prefix + path
        try:
            record = self._restore(path, key, data)
        except WeightsError as err:
            record = {"status": "fatal", "error": str(err)}
        except TemporaryFolderFull as err:  # not the output disk's fault: the message names the folder
            record = {"status": "fatal", "error": str(err), "unwritable": True, "folder": err.folder}
        except Exception as err:  # one bad file must not stop the others: it becomes a failed record
            full = unwritable(err)  # ... but a full disk would fail every later one: the job stops
            record = {"status": "failed", "error": failure(err, key)}
            if full is not None:
                why = f"cannot write the outputs of {shown(key)}: {disk_error(full)}"
                record = {"status": "fatal", "error": why, "unwritable": True}
        return _record(key, seconds=time.perf_counter() - start, worker=self.worker, **record)

    def _restore(self, path: str, key: str, data: bytes) -> dict[str, Any]:
        basename, in_ext = os.path.splitext(posixpath.basename(path))
        args = self.job.args
        target = main_output(self.output, path, args)
        if _is_local(self.job.filesystem):  # a local input (file:// too): never written over
            check_not_input(target, Path(path))
        if is_video(path):
            with _local_copy(self.job.filesystem, path, key) as local:
                try:
                    result = restore_video(local, target, self.options, self.video, self.restorer)
                except VideoOptionError as err:  # the options it names are said as flags: kept as one
                    raise VideoOptionError(err.template, **(err.values | {"path": key})) from None
                except VideoError as err:  # it names the file PyAV read: a remote clip's is a deleted copy
                    raise VideoError(str(err).replace(local, key)) from None
            written, extra = [target], {"audio": result.audio}  # copied, re-encoded (how) or none
            animated = None
        else:
            if not data:  # left to the worker (see execute), or an empty file, read again at no cost
                data = _read_bytes(self.job.filesystem, path)
            img = read_image_bytes(data, name=key)
            check_output_size(target, img, self.options.upscale)
            result = self.restorer.restore(img, self.options)
            profile = read_icc_profile(data)
            written = save_outputs(
                result, basename, in_ext, self.output, args.suffix, args.ext, args.aligned, profile
            )
            extra = {}
            animated = first_frame_note(data, shown(posixpath.basename(path)))
        selection = None if args.aligned else face_summary(result)  # the CLI's line: why faces were skipped
        return {
            "status": "done",
            "faces_found": result.selection.found,  # faces of a photo, people (face tracks) of a clip
            "faces_restored": len(result.selection.restored),
            "selection": selection,
            "backends": result.backends,  # what ran the generator and the parser (a slow worker's why)
            "outputs": [p.relative_to(self.output).as_posix() for p in written],
            "notes": [*result.notes, *filter(None, [animated])],
            "settings": self.job.settings,
        } | extra


def _open_input(filesystem: Any, path: str) -> IO[bytes]:
    """The file ``path`` on ``filesystem`` (None: the local disk), open for reading."""
    return Path(path).open("rb") if filesystem is None else filesystem.open_input_stream(path)


def _read_bytes(filesystem: Any, path: str) -> bytes:
    """The bytes of the file ``path`` on ``filesystem`` (None: the local disk)."""
    with _open_input(filesystem, path) as stream:
        return stream.read()


def _is_local(filesystem: Any) -> bool:
    """Whether the inputs' file system is this machine's disk (None, or pyarrow's for a file:// URL)."""
    return filesystem is None or filesystem.type_name == "local"


class TemporaryFolderFull(Exception):
    """The local temporary folder ``folder`` (TMPDIR chooses it) is full or read-only: a remote clip cannot
    be copied there, nor can any later one, so the job stops; its output disk may well have room."""

    def __init__(self, message: str, folder: str) -> None:
        super().__init__(message)
        self.folder = folder


@contextlib.contextmanager
def _local_copy(filesystem: Any, path: str, key: str = "") -> Iterator[str]:
    """``path`` as a local file for PyAV: itself on the local disk (a file:// URL too), else a temporary
    copy (deleted after); :class:`TemporaryFolderFull` when that copy finds no room (``key`` names the
    clip)."""
    if _is_local(filesystem):
        yield path
        return
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(path)[1])
        with os.fdopen(fd, "wb") as sink, filesystem.open_input_stream(path) as source:
            shutil.copyfileobj(source, sink, 1 << 22)
    except OSError as err:
        if tmp is not None:
            os.unlink(tmp)
        full = unwritable(err)
        if full is None:
            raise
        folder = tempfile.gettempdir()
        raise TemporaryFolderFull(
            f"cannot copy {shown(key or path)} to the temporary folder {folder!r} (TMPDIR chooses it): "
            f"{disk_error(full)}",
            folder,
        ) from None
    try:
        yield tmp
    finally:
        os.unlink(tmp)


# ---------------------------------------------------------------------------------------------- driver
class FatalError(RuntimeError):
    """The job cannot restore anything (missing weights, a worker no node can hold): it stops with exit
    status 2."""


def build_parser(prog: str = "gfp batch") -> argparse.ArgumentParser:
    """The batch command's parser: INPUT, -o, the Ray flags, then every restore option of the CLI."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Restore the faces of a whole archive with Ray Data, on this machine or a Ray cluster: "
        "the CLI's options and output files, a manifest of every input, resumable after a kill.",
        epilog=f"Needs Ray Data: {INSTALL}. OUTPUT must be on a file system every worker sees.",
    )
    p.add_argument(
        "input",
        metavar="INPUT",
        help="a folder, a glob (quoted), a .txt file listing paths or URLs, a file, or an object-storage URL "
        "(s3://bucket/photos/, gs://...)",
    )
    p.add_argument(
        "-o", "--output", required=True, help="output folder: the CLI's layout plus manifest.jsonl"
    )
    ray = p.add_argument_group("Ray")
    ray.add_argument(
        "--address",
        default=None,
        help="join a running cluster: auto (this machine's, or $RAY_ADDRESS) or ray://HEAD:10001 "
        "(default: start a local Ray instance)",
    )
    ray.add_argument(
        "--workers",
        type=int,
        default=None,
        help="restoring workers, each with its own copy of the networks (default: as many as the cluster's "
        "CPUs, or GPUs, hold)",
    )
    ray.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        help="GPUs per worker, e.g. 0.5 for two workers per GPU (default: 1 when the cluster has GPUs and "
        "--device is not cpu, else 0)",
    )
    ray.add_argument(
        "--cpus-per-worker",
        type=float,
        default=1.0,
        help="CPUs per worker; its PyTorch threads (default: %(default)s)",
    )
    ray.add_argument(
        "--redo", action="store_true", help="restore every input again, also those the manifest has as done"
    )
    add_restore_arguments(p)
    return p


@dataclass
class Tally:
    """What the final summary line counts."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    faces: int = 0
    """Faces restored in photos."""
    people: int = 0
    """People (face tracks) restored in clips: a person seen in 300 frames counts once, not as 300 faces."""
    clips: int = 0

    def add(self, record: dict[str, Any]) -> None:
        if record["status"] != "done":
            self.failed += 1
            return
        self.done += 1
        if is_video(record["path"]):
            self.clips += 1
            self.people += record["faces_restored"]
        else:
            self.faces += record["faces_restored"]

    def line(self, seconds: float) -> str:
        rate = self.done / seconds if seconds > 0 else 0.0
        person = "person" if self.people == 1 else "people"
        people = f", {self.people} {person} in clips" if self.clips else ""
        return (
            f"{self.done} done, {self.skipped} skipped, {self.failed} failed, {self.faces} faces{people}, "
            f"{rate:.2f} files/s ({seconds:.1f} s)"
        )


def plan(
    inputs: Sequence[Input], latest: dict[str, dict[str, Any]], output: Path, settings: str, redo: bool
) -> tuple[list[Input], list[Input], list[dict[str, Any]]]:
    """(inputs to restore, inputs already complete, failed records of inputs whose outputs would overwrite
    another input's: :func:`gfp.cli.output_clash`). The inputs ``latest`` has as done keep their outputs'
    names, also those of an earlier job with other inputs into the same ``output``; this job's inputs share
    the others as the CLI shares them (:func:`gfp.cli.output_owners`)."""
    done: dict[str, str] = {}
    for key, record in latest.items():
        if record.get("status") == "done":
            done.setdefault(output_group(key), key)
    # An input that failed when tried (a corrupt a.jpg) claims its name after the others (a.png), as the
    # CLI gives a failed input's name back: a rerun restores what the first run refused as a clash.
    tried = {
        key
        for key, record in latest.items()
        if record.get("status") == "failed" and not str(record.get("error") or "").startswith(CLASH)
    }
    keys_in_order = sorted((item.key for item in inputs), key=lambda key: key in tried)
    owners = output_owners(keys_in_order, done)
    keys = {item.key for item in inputs}
    todo, complete, clashes = [], [], []
    for item in inputs:
        group = output_group(item.key)
        record = latest.get(item.key)
        earlier = owners.get(group)
        if earlier not in (None, item.key) and earlier not in keys and _same_file(earlier, item.key):
            # the file an earlier job restored, named another way (a link, a file:// URL): this input
            owners[group], record = item.key, record or latest.get(earlier)
        clash = output_clash(owners, item.key)
        if clash and owners[group] not in keys:
            clash += f"; an earlier job restored it into {output}: give this input another -o"
        if clash:
            clashes.append(_record(item.key, "failed", error=clash))
        elif not redo and is_complete(record, output, settings):
            complete.append(item)
        else:
            todo.append(item)
    return todo, complete, clashes


def _same_file(a: str, b: str) -> bool:
    """Whether the keys ``a`` and ``b`` name one file on this machine (a path and a link to it, or its
    file:// URL); keys of other file systems are compared as they are."""

    def local(key: str) -> str | None:
        path = key.removeprefix("file://")
        return path if os.path.isabs(path) else None

    first, second = local(a), local(b)
    if first is None or second is None:
        return a == b
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them is gone: not the same file as far as can be told
        return False


def _resources(args: argparse.Namespace, pending: int) -> tuple[int, float, float]:
    """(workers, CPUs per worker, GPUs per worker) for the connected cluster; :class:`FatalError` when no
    node of the local instance can hold one worker (Ray would wait for such a node for ever; a joined
    cluster gets a warning, as an autoscaler may start one)."""
    import ray

    total = ray.cluster_resources()
    cpus = args.cpus_per_worker
    gpus = args.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if total.get("GPU", 0) >= 1 and args.device != "cpu" else 0.0
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if nodes and not any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        most_cpus = max(n.get("CPU", 0) for n in nodes)
        most_gpus = max(n.get("GPU", 0) for n in nodes)
        why = (
            f"a worker needs {cpus:g} CPU(s) and {gpus:g} GPU(s) (--cpus-per-worker, --gpus-per-worker), "
            f"and no node of the Ray cluster has them: it has at most {most_cpus:g} CPU(s) and "
            f"{most_gpus:g} GPU(s) on a node"
        )
        if not args.address:  # the local instance this job started gets no other node
            raise FatalError(why)
        # a cluster joined by --address may start a node that fits (an autoscaler): wait, but say why
        print(f"gfp batch: warning: {why}; waiting for one to join", file=sys.stderr)
    if args.workers is not None:
        return args.workers, cpus, gpus
    fits = int(total.get("CPU", 1) // cpus)
    if gpus:
        fits = min(fits, int(total.get("GPU", 0) // gpus))
    return max(1, min(fits, pending)), cpus, gpus


def execute(job: Job, pending: Sequence[Input], args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """Run the Ray Data job over ``pending``: each input's record as its worker returns it, then a failed
    record for every input whose read or worker failed in Ray (dropped blocks). Raises
    :class:`FatalError` at once, before any work, when no node can hold a worker. Clips, and photos whose
    path holds a control character (Ray Data's reader drops a newline or a tab from a path, so it would
    never find them), are read by their workers."""
    from ray import data as rd

    workers, cpus, gpus = _resources(args, len(pending))
    images = [item.path for item in pending if not is_video(item.path) and is_plain(item.path)]
    own = [item.path for item in pending if is_video(item.path) or not is_plain(item.path)]
    parts = []
    if images:  # one block per photo, so each record comes back as soon as its photo is done
        parts.append(
            rd.read_binary_files(
                images,
                filesystem=job.filesystem,
                include_paths=True,
                ignore_missing_paths=True,
                override_num_blocks=len(images),
                num_cpus=0,  # reading is I/O: the workers hold the CPUs, and a read must still run
                concurrency=min(max(2, workers), len(images)),
            )
        )
    if own:  # a clip is one task; its worker opens it itself (no clip in the object store)
        rows = [{"bytes": b"", "path": path} for path in own]
        parts.append(rd.from_items(rows, override_num_blocks=len(rows)))
    dataset = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    dataset = dataset.map_batches(
        RestoreWorker,
        fn_constructor_args=(job,),
        batch_size=1,
        batch_format="numpy",
        compute=rd.ActorPoolStrategy(size=workers),
        num_cpus=cpus,
        num_gpus=gpus,
    )
    return _results(dataset, job, pending)


def _results(dataset: Any, job: Job, pending: Sequence[Input]) -> Iterator[dict[str, Any]]:
    """The records of :func:`execute`'s ``dataset`` as they come, then those of inputs that came back
    without one."""
    from ray import data as rd

    missing = {item.key: item.path for item in pending}
    context = rd.DataContext.get_current()
    allowed, context.max_errored_blocks = context.max_errored_blocks, -1  # a bad file drops its block only
    try:
        for row in dataset.iter_rows():
            record = json.loads(row["record"])
            if record["status"] == "fatal" and record.get("unwritable"):
                left = f"{len(missing)} of {len(pending)} input(s) not restored"
                raise FatalError(
                    f"{record['error']}; stopped with {left}: rerun the same command to go on once "
                    f"{record.get('folder', job.output)!r} can be written"
                )
            if record["status"] == "fatal":
                raise FatalError(record["error"])
            missing.pop(record["path"], None)
            yield record
    finally:
        context.max_errored_blocks = allowed
    for key, path in missing.items():  # no record came back: its read or its worker failed
        yield _record(key, "failed", error=_unreadable(path, job.filesystem))


def _unreadable(path: str, filesystem: Any) -> str:
    """Why an input came back without a record (it could not be read, or its worker died on it)."""
    try:
        _open_input(filesystem, path).close()
    except OSError as err:
        return f"cannot read it: {first_line(err)}"
    return "its Ray task failed (a worker died on it?); see the Ray Data log"


def _connect(address: str | None) -> bool:
    """Join the cluster at ``address``, or start a local instance; whether we started it. An already
    connected Ray (a caller's) is used as it is."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from an instance we start
    with termination_handlers_kept():  # SIGTERM stops the job as Ctrl-C does, not as Ray's exit(15)
        if address:
            ray.init(address=address)
        else:
            ray.init(address="local", include_dashboard=False)
    return True


def claim_output(output: Path) -> IO[bytes] | None:
    """Hold ``output`` for this job (an exclusive lock on ``output/.gfp-batch.lock``, released when the
    returned file is closed or the process ends); None when another job holds it. Two jobs over one folder
    would restore everything twice, and each would delete the other's half-written files at its start."""
    output.mkdir(parents=True, exist_ok=True)
    handle = open(output / LOCK_FILE, "ab")  # noqa: SIM115  (held open: the lock lives as long as the file)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def remove_partial(output: Path) -> None:
    """Delete what a killed job left half-written in ``output``'s folders: the temporary files of the
    image and clip writes (``gfp.atomic.PARTIAL_GLOB``). Only a job over the same folder writes them, and
    this one has not started."""
    for tmp in output.glob(f"*/{PARTIAL_GLOB}"):
        tmp.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None, prog: str = "gfp batch") -> int:
    """Run the batch job; returns the exit status: 0 all done, 1 some input failed, 2 usage errors,
    missing Ray, missing weights or a full or read-only output disk, 130 interrupted (the manifest keeps
    what finished)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        import ray  # noqa: F401  (checked here, before any work; the job imports it where it runs)
        from ray import data  # noqa: F401  (Ray Data: ray[data])
    except ImportError:
        print(f"{prog}: error: Ray Data is not installed; install it with: {INSTALL}", file=sys.stderr)
        return 2
    if _remote(args.output):
        parser.error(f"OUTPUT must be a folder every worker sees (a shared mount), not {args.output!r}")
    try:
        check_output_folder(args.output)
        restore_options(args)
        video_options(args)
        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {args.workers}")
        if args.cpus_per_worker <= 0 or (args.gpus_per_worker or 0) < 0:
            raise ValueError("--cpus-per-worker must be above 0 and --gpus-per-worker at least 0")
        inputs = list_batch_inputs(args.input)
    except (ValueError, FileNotFoundError) as err:
        parser.error(said(err))
    if not inputs.items:
        parser.error(f"input {args.input!r} holds no files")
    # Workers may run in another folder (or on another machine): local paths are given to them whole.
    if args.weights_dir is not None:
        args.weights_dir = os.path.abspath(args.weights_dir)
    if os.path.exists(args.version):
        args.version = os.path.abspath(args.version)

    output = Path(args.output).resolve()
    try:
        claim = claim_output(output)
    except OSError as err:  # a read-only or full disk: said before any work, not as a traceback
        print(f"{prog}: error: cannot write to {output}: {first_line(err)}", file=sys.stderr)
        return 2
    if claim is None:
        print(
            f"{prog}: error: another gfp batch job is writing to {output}: wait for it to end, or give "
            "another output folder",
            file=sys.stderr,
        )
        return 2
    with claim, unwinding_on_termination():  # (python -m gfp.batch: gfp's CLI is not around it)
        return _run(args, prog, inputs, output)


def _run(args: argparse.Namespace, prog: str, inputs: Inputs, output: Path) -> int:
    """The job over ``output`` (held by this process): plan, restore what is pending, report."""
    remove_partial(output)
    manifest = Manifest(output / MANIFEST)
    settings = settings_of(args)
    pending, complete, clashes = plan(inputs.items, manifest.latest(), output, settings, args.redo)
    tally = Tally(skipped=len(complete))
    threads = max(1, int(args.cpus_per_worker))
    job = Job(args, str(output), inputs.filesystem, inputs.prefix, settings, threads)
    start = time.perf_counter()
    started = False
    results: Iterator[dict[str, Any]] | None = None
    noted: set[str] = set()
    try:
        records: Iterable[dict[str, Any]] = clashes
        if pending:
            started = _connect(args.address)
            start = time.perf_counter()
            results = execute(job, pending, args)
            records = itertools.chain(clashes, results)
        for record in manifest.append(records):
            tally.add(record)
            if record["status"] != "done":
                error, path = record["error"], shown(record["path"])
                print(f"{prog}: error: {error if path in error else f'{path}: {error}'}", file=sys.stderr)
            for note in set(record["notes"]) - noted:
                noted.add(note)
                print(f"{prog}: note: {note}", file=sys.stderr)
    except FatalError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except ConnectionError as err:
        print(
            f"{prog}: error: cannot join the Ray cluster at {args.address!r}: {first_line(err)}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(
            f"{prog}: interrupted; the manifest keeps what finished: rerun the same command to go on",
            file=sys.stderr,
        )
        return 130
    finally:
        if results is not None:  # a job stopped midway: its Ray Data iterator ends while Ray is up
            results.close()
        if started:
            import ray

            ray.shutdown()
    print(f"{prog}: {tally.line(time.perf_counter() - start)}; manifest: {manifest.path}")
    return 1 if tally.failed else 0


if __name__ == "__main__":
    raise SystemExit(main(prog="python -m gfp.batch"))
