"""The OpenVINO backend: same function as PyTorch, converted once and cached, thread-safe, chosen once.

Tiny seeded networks; the whole-photo parity against the official stack with this backend is in
tests/test_parity_pipeline.py.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _zoo_helpers import save_tiny_generator, tiny_config, tiny_generator

from gfp import openvino, stages
from gfp.archs import FacesOnly
from gfp.devices import Placement, decide_backend, openvino_installed
from gfp.pipeline import RestoreOptions, Restorer, RunLog
from gfp.store import CONVERT_ENV, ModelStore
from gfp.weights.errors import WeightsError

pytestmark = [
    pytest.mark.usefixtures("offline"),
    pytest.mark.skipif(not openvino_installed(), reason="openvino not installed"),
]

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def convert_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests check the converted networks: a store converts before the first call. Converting in the
    background while PyTorch runs, the default, has its own tests (they set "background")."""
    monkeypatch.setenv(CONVERT_ENV, "now")


def _faces(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, int]:
    config = tiny_config()
    return FacesOnly(tiny_generator(config, seed=0)), config.out_size


def test_auto_is_openvino_on_a_cpu_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GFP_BACKEND", raising=False)
    assert decide_backend(CPU) == "openvino"
    assert decide_backend(torch.device("cuda")) == "torch"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # openvino not installed
    assert decide_backend(CPU) == "torch"
    with pytest.raises(ValueError, match="pip install openvino"):
        decide_backend(CPU, "openvino")


def test_backend_choice_is_checked_and_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GFP_BACKEND", "torch")
    assert decide_backend(CPU) == "torch"
    assert decide_backend(CPU, "openvino") == "openvino"  # an argument wins over the environment
    with pytest.raises(ValueError, match="CPU only"):
        decide_backend(torch.device("cuda"), "openvino")
    with pytest.raises(ValueError, match="unknown backend 'onnx': use"):
        decide_backend(CPU, "onnx")
    monkeypatch.setenv("GFP_BACKEND", "onnx")  # a stale variable is named: the command line does not show it
    with pytest.raises(ValueError, match=r"unknown backend 'onnx' \(env GFP_BACKEND\): use"):
        decide_backend(CPU)


@pytest.mark.parametrize("arch", ["clean", "v1"])
def test_float32_generator_computes_the_pytorch_function_for_any_batch(arch: str, tmp_path: Path) -> None:
    config = tiny_config(arch)
    net, size = FacesOnly(tiny_generator(config, seed=0)), config.out_size
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as the pipeline may call it: not recorded
        compiled = openvino.compile_network(net, torch.zeros(2, 3, size, size), (0,), cache_dir=tmp_path)
    for n in (1, 3, 2, 1):  # exact compilations for the first two shapes, the third runs in the shared one
        x = _faces(n, size, seed=n)
        with torch.no_grad():
            expected = net(x)
        got = compiled(x)
        assert got.shape == expected.shape and got.dtype == torch.float32
        assert _rel(got, expected) < 1e-5
    assert openvino.MAX_SHAPES == 2
    assert set(compiled._compiled) == {(1, 3, size, size), (3, 3, size, size), None}


def test_a_work_size_model_with_its_detail_path_computes_the_pytorch_function(tmp_path: Path) -> None:
    """The CPU recipe's layout (layers at a quarter of the face size, pixel unshuffle/shuffle of the
    full-size face) converts to the same function."""
    from dataclasses import replace

    config = replace(tiny_config(), input_residual=True, work_size=16, detail=True)
    generator = tiny_generator(config, seed=0)
    torch.nn.init.normal_(generator.detail_out.weight, std=0.05)  # built at zero: make the path count
    net = FacesOnly(generator)
    compiled = openvino.compile_network(net, torch.zeros(2, 3, 64, 64), (0,), cache_dir=tmp_path)
    x = _faces(2, 64)
    with torch.no_grad():
        expected = net(x)
    assert _rel(compiled(x), expected) < 1e-5


def test_bf16_stays_close_to_float32(tiny, tmp_path: Path) -> None:
    net, size = tiny
    example = torch.zeros(2, 3, size, size)
    compiled = openvino.compile_network(net, example, (0,), bf16=True, cache_dir=tmp_path)
    x = _faces(2, size)
    with torch.no_grad():
        expected = net(x)
    error = _rel(compiled(x), expected)
    assert 0 < error < 0.02  # it did compute in bf16 (not exact), and closely


def test_converted_once_then_loaded_from_the_cache(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net, size = tiny
    example = torch.zeros(2, 3, size, size)
    first = openvino.compile_network(net, example, (0,), cache_dir=tmp_path)
    saved = list((tmp_path / openvino.SUBDIR).glob("*/model.xml"))
    assert len(saved) == 1 and not list((tmp_path / openvino.SUBDIR).glob(".tmp-*"))

    def no_conversion(*args: object) -> None:
        raise AssertionError("converted again instead of loading the cached model")

    monkeypatch.setattr(openvino, "_convert", no_conversion)
    second = openvino.compile_network(net, example, (0,), cache_dir=tmp_path)
    x = _faces(1, size)
    assert torch.equal(first(x), second(x))

    changed = tiny_generator(tiny_config(), seed=1)  # other weights: another model, converted anew
    with pytest.raises(AssertionError, match="converted again"):
        openvino.compile_network(FacesOnly(changed), example, (0,), cache_dir=tmp_path)


def test_a_damaged_cache_entry_is_converted_again_and_replaced(tiny, tmp_path: Path) -> None:
    net, size = tiny
    example = torch.zeros(2, 3, size, size)
    folder = tmp_path / openvino.SUBDIR / openvino.fingerprint(net, example, (0,))
    folder.mkdir(parents=True)
    (folder / "model.xml").write_text("<net><truncated")
    compiled = openvino.compile_network(net, example, (0,), cache_dir=tmp_path)
    x = _faces(1, size)
    with torch.no_grad():
        assert _rel(compiled(x), net(x)) < 1e-5
    assert (folder / "model.bin").is_file() and "truncated" not in (folder / "model.xml").read_text()


def test_a_damaged_cache_entry_is_read_without_other_frontends_printing(
    tiny, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A damaged model.xml was handed to every OpenVINO frontend in turn, and the TensorFlow one printed
    its parse errors to the terminal; it is rejected by the IR reader alone, and still rebuilt."""
    net, size = tiny
    example = torch.zeros(2, 3, size, size)
    folder = tmp_path / openvino.SUBDIR / openvino.fingerprint(net, example, (0,))
    folder.mkdir(parents=True)
    (folder / "model.xml").write_text("garbage")
    capfd.readouterr()
    assert openvino._read(folder) is None and not folder.exists()
    assert capfd.readouterr().err == ""
    compiled = openvino.compile_network(net, example, (0,), cache_dir=tmp_path)
    assert compiled.folder == folder and openvino._read(folder) is not None


def test_a_save_cut_short_by_a_killed_process_is_removed_by_the_next(tiny, tmp_path: Path) -> None:
    """A converter killed while saving (the out-of-memory killer, say) leaves its temporary folder, a
    model's size of disk that nothing reads: the next save removes it, and no folder a process is writing."""
    import subprocess

    net, size = tiny
    example = torch.zeros(2, 3, size, size)
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs
    cache = tmp_path / openvino.SUBDIR
    host = socket.gethostname()
    owners = {"killed": f"{host} {gone.pid}", "running": f"{host} {os.getpid()}", "starting": "", "old": ""}
    for name, owner in owners.items():
        (cache / f".tmp-{name}").mkdir(parents=True)
        (cache / f".tmp-{name}" / "model.bin").write_bytes(b"half a model")
        if owner:
            (cache / f".tmp-{name}" / "owner").write_text(owner)
    old = time.time() - openvino.STALE_LOCK_S - 1
    os.utime(cache / ".tmp-old", (old, old))  # one without its owner file: its age tells
    openvino.compile_network(net, example, (0,), cache_dir=tmp_path)
    assert sorted(p.name for p in cache.glob(".tmp-*")) == [".tmp-running", ".tmp-starting"]
    entry = cache / openvino.fingerprint(net, example, (0,))
    assert sorted(p.name for p in entry.iterdir()) == ["model.bin", "model.xml"]  # no owner file kept


def test_fingerprint_follows_weights_layout_and_dynamic_dims(tiny) -> None:
    net, size = tiny
    example = torch.zeros(2, 3, size, size)
    base = openvino.fingerprint(net, example, (0,))
    assert openvino.fingerprint(net, example, (0,)) == base
    assert openvino.fingerprint(net, torch.zeros(2, 3, size, size + 1), (0,)) != base
    assert openvino.fingerprint(net, example, (0, 2)) != base
    other = FacesOnly(tiny_generator(tiny_config(), seed=0))
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-3
    assert openvino.fingerprint(other, example, (0,)) != base


def test_a_weight_file_is_hashed_once_and_then_known_by_its_path_size_and_time(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net, size = tiny
    example = torch.zeros(2, 3, size, size)
    cache = tmp_path / "cache"
    source = tmp_path / "weights.pth"
    source.write_bytes(b"first version")
    first = openvino.compile_network(net, example, (0,), cache_dir=cache, source=source)
    entry = cache / openvino.SUBDIR / openvino.fingerprint(net, example, (0,))
    assert (entry / "model.xml").is_file()  # named by the weights, as without a source

    hashed = []
    state_dict = net.state_dict
    monkeypatch.setattr(net, "state_dict", lambda: hashed.append(1) or state_dict())
    monkeypatch.setattr(openvino, "_convert", lambda *a: pytest.fail("converted again"))
    second = openvino.compile_network(net, example, (0,), cache_dir=cache, source=source)
    assert not hashed  # known by the file
    x = _faces(1, size)
    assert torch.equal(first(x), second(x))

    copy = tmp_path / "copy.pth"  # the same weights elsewhere: hashed, and the same model found
    copy.write_bytes(source.read_bytes())
    openvino.compile_network(net, example, (0,), cache_dir=cache, source=copy)
    assert len(hashed) == 1
    stat = source.stat()  # rewritten in place, same size: a new modification time, hashed again
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    openvino.compile_network(net, example, (0,), cache_dir=cache, source=source)
    assert len(hashed) == 2
    stat = source.stat()  # replaced by other weights of the same size, its time kept (cp -p, rsync -a)
    time.sleep(0.05)  # past the file system clock's tick, so the change time differs
    source.write_bytes(b"other version")
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (source.stat().st_size, source.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    openvino.compile_network(net, example, (0,), cache_dir=cache, source=source)
    assert len(hashed) == 3
    folder = tmp_path / "published"  # a published-format folder: any of its files rewritten counts
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    openvino.compile_network(net, example, (0,), cache_dir=cache, source=folder)
    weights = (folder / "model.safetensors").stat()
    os.utime(folder / "model.safetensors", ns=(weights.st_atime_ns, weights.st_mtime_ns + 1))
    openvino.compile_network(net, example, (0,), cache_dir=cache, source=folder)
    assert len(hashed) == 5
    for memo in (cache / openvino.SUBDIR / "files").iterdir():  # a damaged memo: hashed again
        memo.write_text("../../elsewhere")
    openvino.compile_network(net, example, (0,), cache_dir=cache, source=source)
    assert len(hashed) == 6
    names = sorted(p.name for p in (cache / openvino.SUBDIR).iterdir())
    assert names == sorted(["blobs", "files", entry.name])


def test_a_cached_model_known_by_its_file_is_used_without_building_the_network(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net, size = tiny
    example = torch.zeros(2, 3, size, size)
    source = tmp_path / "weights.pth"
    source.write_bytes(b"weights")
    built: list[str] = []

    def build(role: str = "faces") -> torch.nn.Module:
        built.append(role)
        return net

    def compiled(role: str = "faces") -> openvino.OpenVINONetwork:
        return openvino.compile_network(
            lambda: build(role), example, (0,), cache_dir=tmp_path, source=source, role=role, name="w"
        )

    first = compiled()
    assert built == ["faces"]  # converted: built once
    second = compiled()
    assert built == ["faces"]  # found by its file: not built
    x = _faces(1, size)
    with torch.no_grad():
        assert _rel(second(x), net(x)) < 1e-5
    assert torch.equal(first(x), second(x))
    compiled("other")  # another network from the same file is not taken for this one
    assert built == ["faces", "other"]
    monkeypatch.setattr(openvino, "_code_digest", lambda: "edited")  # code that builds networks changed
    compiled()
    assert built == ["faces", "other", "faces"]


def test_a_fixed_shape_compilation_is_cached_and_computes_the_same(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    net, size = tiny
    example = torch.zeros(2, 3, size, size)
    x = _faces(1, size)
    in_memory = openvino.compile_network(net, example, (0,))(x)  # no cache: compiled from the model object
    first = openvino.compile_network(net, example, (0,), cache_dir=tmp_path)
    assert torch.equal(first(x), in_memory)
    entry = tmp_path / openvino.SUBDIR / openvino.fingerprint(net, example, (0,))
    (fixed,) = entry.glob(f"model-1x3x{size}x{size}-*.xml")
    assert fixed.with_suffix(".bin").samefile(entry / "model.bin")  # the weights are shared, not copied
    blobs = tmp_path / openvino.SUBDIR / "blobs"
    saved = sorted(blobs.iterdir())
    assert len(saved) == 1
    again = openvino.compile_network(net, example, (0,), cache_dir=tmp_path)  # as a new process would
    assert torch.equal(again(x), in_memory)
    assert sorted(blobs.iterdir()) == saved  # its compilation came from the cache
    assert torch.equal(again(_faces(3, size))[:1], again(x))  # another shape: compiled for it too
    fixed.write_bytes(b"\xfd garbled by a disk")  # damaged: written anew, not shown to OpenVINO's frontends
    capfd.readouterr()
    damaged = openvino.compile_network(net, example, (0,), cache_dir=tmp_path)
    assert torch.equal(damaged(x), in_memory)
    assert "tensorflow" not in capfd.readouterr().err
    mended = openvino.compile_network(net, example, (0,), cache_dir=tmp_path)
    assert torch.equal(mended(x), in_memory)
    assert fixed.read_bytes().startswith(b"<?xml") and fixed.with_suffix(".bin").samefile(entry / "model.bin")

    def no_links(*args: object) -> None:
        raise OSError("links not supported")

    monkeypatch.setattr(openvino, "_link", no_links)  # no fixed-shape IR: compiled in memory instead
    other = tmp_path / "other"
    plain = openvino.compile_network(net, example, (0,), cache_dir=other)
    assert torch.equal(plain(x), in_memory)
    assert not list((other / openvino.SUBDIR).glob("*/model-*"))
    assert not (other / openvino.SUBDIR / "blobs").exists()


def test_an_unwritable_cache_only_costs_a_conversion(tiny, tmp_path: Path) -> None:
    net, size = tiny
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    compiled = openvino.compile_network(net, torch.zeros(2, 3, size, size), (0,), cache_dir=blocker)
    x = _faces(1, size)
    with torch.no_grad():
        assert _rel(compiled(x), net(x)) < 1e-5


def test_a_cache_entry_is_readable_by_whoever_can_read_the_cache(tiny, tmp_path: Path) -> None:
    """An entry has its cache folder's permissions: made private (mkdtemp's 0700), the other users of a
    shared cache could not read it and ran PyTorch for good, warned on every run."""
    net, size = tiny
    (tmp_path / openvino.SUBDIR).mkdir()
    (tmp_path / openvino.SUBDIR).chmod(0o755)
    compiled = openvino.compile_network(net, torch.zeros(2, 3, size, size), (0,), cache_dir=tmp_path)
    assert compiled.folder is not None and compiled.folder.stat().st_mode & 0o777 == 0o755


def test_a_cache_that_cannot_be_searched_only_costs_a_conversion(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache folder the user may not search (no execute permission): looking for the model in it raised
    PermissionError, so a store fell back to PyTorch instead of using the network it can convert."""
    net, size = tiny
    cache = tmp_path / "cache"
    is_file, mkdir = Path.is_file, Path.mkdir

    def denied(path: Path) -> None:
        if cache in path.parents or path == cache:
            raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Path, "is_file", lambda path: denied(path) or is_file(path))
    monkeypatch.setattr(Path, "mkdir", lambda path, *a, **k: denied(path) or mkdir(path, *a, **k))
    compiled = openvino.compile_network(net, torch.zeros(2, 3, size, size), (0,), cache_dir=cache)
    x = _faces(1, size)
    with torch.no_grad():
        assert compiled.folder is None and _rel(compiled(x), net(x)) < 1e-5


def _full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenVINO's save_model as on a full disk: part of the files written, then its RuntimeError."""

    def save_model(model: object, path: str, **kwargs: object) -> None:
        Path(path).write_text("<net")
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr(openvino._openvino(), "save_model", save_model)


def test_a_full_disk_only_costs_a_conversion(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenVINO raises RuntimeError, not OSError, where it cannot write: the network converted in memory was
    thrown away (a store ran PyTorch, warning that OpenVINO could not compile it), and nothing half-written
    may stay in the cache."""
    net, size = tiny
    _full_disk(monkeypatch)
    compiled = openvino.compile_network(net, torch.zeros(2, 3, size, size), (0,), cache_dir=tmp_path)
    x = _faces(1, size)
    with torch.no_grad():
        assert compiled.folder is None and _rel(compiled(x), net(x)) < 1e-5
    assert [p.name for p in (tmp_path / openvino.SUBDIR).iterdir()] == []


def test_a_background_conversion_that_cannot_be_saved_is_marked_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A converter whose model could not be saved (a full disk) converted for nobody: marked failed, so that
    each new process does not start a conversion that cannot be kept again."""
    source = save_tiny_generator(tmp_path / "tiny")
    size = tiny_config().out_size
    cache = tmp_path / "cache"
    memo = openvino._memo(cache / openvino.SUBDIR, source, "faces", torch.zeros(2, 3, size, size), (0,))
    lock, failed = (cache / openvino.SUBDIR / folder / memo.name for folder in ("converting", "failed"))
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    _full_disk(monkeypatch)
    args = ["gfp.store:conversion_network", "faces", str(source), f"2x3x{size}x{size}", "0", str(cache)]
    with pytest.raises(OSError, match="could not be saved"):
        openvino._convert_main([*args, str(lock), str(failed)])
    assert "could not be saved" in failed.read_text() and not lock.exists()


def test_a_conversion_that_could_not_be_saved_is_tried_again_once_the_disk_has_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conversion that failed for want of disk waited a day even once space was freed; one that failed
    otherwise still does, and a disk as full as it was starts no conversion that would fail again."""
    import shutil
    import subprocess
    from collections import namedtuple

    source = save_tiny_generator(tmp_path / "tiny")
    size = tiny_config().out_size
    example = torch.zeros(2, 3, size, size)
    cache = tmp_path / "cache"
    memo = openvino._memo(cache / openvino.SUBDIR, source, "faces", example, (0,))
    lock, failed = (cache / openvino.SUBDIR / folder / memo.name for folder in ("converting", "failed"))
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    free = [10_000]
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, free[0]))
    _full_disk(monkeypatch)
    args = ["gfp.store:conversion_network", "faces", str(source), f"2x3x{size}x{size}", "0", str(cache)]
    with pytest.raises(OSError, match="could not be saved"):
        openvino._convert_main([*args, str(lock), str(failed)])
    assert failed.read_text().startswith("free 10000\n")
    started: list[object] = []
    process = type("Process", (), {"pid": os.getpid(), "wait": lambda self: 0})
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a) or process())
    weights = sum(f.stat().st_size for f in source.iterdir())
    free[0] += weights - 1  # not yet room for the converted weights
    assert not openvino.convert_in_background(source, "faces", example, (0,), cache)
    free[0] += 1
    assert openvino.convert_in_background(source, "faces", example, (0,), cache) and len(started) == 1
    lock.unlink()
    failed.write_text("RuntimeError: cannot convert")  # not the disk's fault: a day, whatever the room
    free[0] = 10**12
    assert not openvino.convert_in_background(source, "faces", example, (0,), cache) and len(started) == 1


def test_a_cache_that_cannot_be_written_is_said_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GFP_CACHE_DIR naming a file, or a folder that cannot be written: nothing can be converted, and every
    run was PyTorch, slower, without a word. One warning per process names the folder and the fix."""
    monkeypatch.setenv(CONVERT_ENV, "background")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("GFP_CACHE_DIR", str(blocker))
    folder = save_tiny_generator(tmp_path / "tiny")
    options = RestoreOptions(version=str(folder), aligned=True, upscale=1, bg_upsampler="none")
    face = _aligned_face(tiny_config().out_size)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # two processes' worth of stores: said once in this one
            Restorer(device="cpu", backend="openvino", bf16=False).restore(face, options)
    said = [str(w.message) for w in caught]
    assert len(said) == 1, said
    assert said[0].startswith(f"the model cache {blocker} cannot be written (Not a directory)")
    assert "run in PyTorch" in said[0] and "point GFP_CACHE_DIR at another one" in said[0]

    readonly = tmp_path / "readonly"  # (chmod does not stop the superuser: the denial is simulated)
    mkdir = Path.mkdir

    def denied(path: Path, *args: object, **kwargs: object) -> None:
        if readonly in path.parents:
            raise PermissionError(13, "Permission denied", str(path))
        mkdir(path, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", denied)
    example = torch.zeros(2, 3, 8, 8)
    with pytest.warns(UserWarning, match=rf"cache {readonly} cannot be written \(Permission denied\)"):
        assert not openvino.convert_in_background(folder, "faces", example, (0,), readonly)


def test_one_compiled_network_serves_threads(tiny, tmp_path: Path) -> None:
    net, size = tiny
    compiled = openvino.compile_network(net, torch.zeros(2, 3, size, size), (0,), cache_dir=tmp_path)
    inputs = [_faces(1, size, seed=s) for s in range(6)]
    expected = [compiled(x) for x in inputs]
    got: list[torch.Tensor | None] = [None] * len(inputs)

    def work(i: int) -> None:
        for _ in range(3):
            got[i] = compiled(inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))


def test_networks_converted_in_parallel_threads(tmp_path: Path) -> None:
    size = tiny_config().out_size
    nets = [FacesOnly(tiny_generator(tiny_config(), seed=seed)) for seed in range(2)]
    got: dict[int, object] = {}

    def convert(i: int) -> None:
        try:
            got[i] = openvino.compile_network(
                nets[i], torch.zeros(2, 3, size, size), (0,), cache_dir=tmp_path
            )
        except Exception as err:  # noqa: BLE001  (reported by the assertion below)
            got[i] = err

    threads = [threading.Thread(target=convert, args=(i,)) for i in range(len(nets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    x = _faces(1, size)
    for i, net in enumerate(nets):
        assert isinstance(got[i], openvino.OpenVINONetwork), got[i]
        with torch.no_grad():
            assert _rel(got[i](x), net(x)) < 1e-5


class _CountingCore:
    """Stands in for the process's OpenVINO Core and counts compilations."""

    def __init__(self, core: object) -> None:
        self.core, self.compiled = core, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.core, name)

    def compile_model(self, *args: object) -> object:
        self.compiled += 1
        return self.core.compile_model(*args)


@pytest.fixture
def counting_core(monkeypatch: pytest.MonkeyPatch) -> _CountingCore:
    core = _CountingCore(openvino._core())
    monkeypatch.setattr(openvino, "_core", lambda: core)
    return core


def test_prepare_compiles_for_a_shape_before_its_first_call(tiny, tmp_path: Path, counting_core) -> None:
    net, size = tiny
    compiled = openvino.compile_network(net, torch.zeros(2, 3, size, size), (0,), cache_dir=tmp_path)
    assert counting_core.compiled == 0  # compiling waits for a shape
    compiled.prepare((1, 3, size, size))
    assert counting_core.compiled == 1
    x = _faces(1, size)
    with torch.no_grad():
        assert _rel(compiled(x), net(x)) < 1e-5
    assert counting_core.compiled == 1  # the call used the prepared compilation
    compiled(_faces(3, size))
    assert counting_core.compiled == 2


def _aligned_face(size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_restorer_runs_the_generator_in_openvino(tmp_path: Path) -> None:
    folder = save_tiny_generator(tmp_path / "tiny")
    options = RestoreOptions(version=str(folder), aligned=True, upscale=1, bg_upsampler="none")
    face = _aligned_face(tiny_config().out_size)
    ov = Restorer(device="cpu", backend="openvino", bf16=False)
    reference = Restorer(device="cpu", backend="torch", bf16=False)
    got = ov.restore(face, options).restored_faces[0]
    expected = reference.restore(face, options).restored_faces[0]
    faces = ov.store.face_network(options.version).run
    assert isinstance(faces, openvino.OpenVINONetwork)
    assert faces.name == folder.name  # named after its weights in messages and repr
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    # in the gfp cache; the weight file is remembered, so a new process does not hash its weights again
    generator = ov.store.generator(options.version)
    example = torch.zeros(2, 3, generator.config.out_size, generator.config.out_size)
    entry = openvino.fingerprint(FacesOnly(generator.run), example, (0,))
    assert (tmp_path / "cache" / openvino.SUBDIR / entry / "model.xml").is_file()
    assert len(list((tmp_path / "cache" / openvino.SUBDIR / "files").iterdir())) == 1  # its file is known


def test_a_new_restorer_finds_the_converted_generator_without_building_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = save_tiny_generator(tmp_path / "tiny")
    options = RestoreOptions(version=str(folder), aligned=True, upscale=1, bg_upsampler="none")
    face = _aligned_face(tiny_config().out_size)
    expected = Restorer(device="cpu", backend="openvino", bf16=False).restore(face, options)

    def not_built(self: ModelStore, spec: object) -> None:
        raise AssertionError("the PyTorch generator was built")

    monkeypatch.setattr(ModelStore, "generator", not_built)
    restorer = Restorer(device="cpu", backend="openvino", bf16=False)  # as in a new process
    got = restorer.restore(face, options)
    assert np.array_equal(got.restored_faces[0], expected.restored_faces[0])
    assert restorer.generator_config(options.version) == tiny_config()
    assert restorer.store._checkpoint(options.version).state_dict is None  # its tensors are not kept


def test_a_run_in_pytorch_while_converting_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first run with a model converts it in the background and is slower meanwhile: its result says
    so (the CLI prints it once, the app shows it), which a user could not tell from the speed to expect.
    Once converted, nothing is said."""
    monkeypatch.setenv(CONVERT_ENV, "background")
    monkeypatch.setattr(openvino, "convert_in_background", lambda *args, **kwargs: True)  # never ready
    folder = save_tiny_generator(tmp_path / "tiny")
    options = RestoreOptions(version=str(folder), aligned=True, upscale=1, bg_upsampler="none")
    face = _aligned_face(tiny_config().out_size)
    note = "the generator ran in PyTorch while OpenVINO converts it in the background, once: later runs are "
    note += "faster"
    assert Restorer(device="cpu", backend="openvino", bf16=False).restore(face, options).notes == [note]
    monkeypatch.setenv(CONVERT_ENV, "now")
    assert Restorer(device="cpu", backend="openvino", bf16=False).restore(face, options).notes == []


def test_a_result_says_what_ran_its_networks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing said whether the generator and the parser ran in OpenVINO or PyTorch, which tells a slow run
    (or outputs that differ slightly between machines) apart: the result says it, as the store decided."""
    folder = save_tiny_generator(tmp_path / "tiny")
    options = RestoreOptions(version=str(folder), aligned=True, upscale=1, bg_upsampler="none")
    face = _aligned_face(tiny_config().out_size)
    for backend, ran in (("openvino", "OpenVINO"), ("torch", "PyTorch")):
        result = Restorer(device="cpu", backend=backend, bf16=False).restore(face, options)
        assert result.backends == {"generator": ran}
    other = save_tiny_generator(tmp_path / "other", seed=1)
    monkeypatch.setenv(CONVERT_ENV, "background")
    monkeypatch.setattr(openvino, "convert_in_background", lambda *args, **kwargs: True)  # never ready
    converting = RestoreOptions(version=str(other), aligned=True, upscale=1, bg_upsampler="none")
    result = Restorer(device="cpu", backend="openvino", bf16=False).restore(face, converting)
    assert result.backends == {"generator": "PyTorch"}
    both = {"generator": "OpenVINO", "face parser": "OpenVINO"}
    assert stages.backends_text(both) == "generator and face parser in OpenVINO"
    first = {"generator": "PyTorch", "face parser": "OpenVINO"}
    assert stages.backends_text(first, both) == "generator in PyTorch then OpenVINO, face parser in OpenVINO"
    assert stages.backends_text() == ""


def test_a_network_openvino_cannot_convert_runs_in_pytorch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = save_tiny_generator(tmp_path / "tiny")
    options = RestoreOptions(version=str(folder), aligned=True, upscale=1, bg_upsampler="none")
    face = _aligned_face(tiny_config().out_size)
    expected = Restorer(device="cpu", backend="torch", bf16=False).restore(face, options).restored_faces[0]

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unsupported operation aten::foo\nmore details")

    monkeypatch.setattr(openvino, "compile_network", broken)
    restorer = Restorer(device="cpu", backend="openvino", bf16=False)
    with pytest.warns(UserWarning, match=r"could not compile .*operation aten::foo\); it runs in PyTorch"):
        got = restorer.restore(face, options).restored_faces[0]
    assert np.array_equal(got, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the failure is remembered: no second attempt, no second warning
        restorer.restore(face, options)


def test_restorer_prepares_generator_and_parser_in_parallel_threads(
    tmp_path: Path, counting_core: _CountingCore
) -> None:
    from gfp.archs.parsenet import ParseNet

    torch.manual_seed(0)
    torch.save(ParseNet().state_dict(), tmp_path / "parsing_parsenet.pth")
    folder = save_tiny_generator(tmp_path / "tiny")
    restorer = Restorer(tmp_path, device="cpu", backend="openvino", bf16=False)
    options = RestoreOptions(version=str(folder), use_parse=True)
    threads = restorer.prepare(options)
    assert len(threads) == 2
    for thread in threads:
        thread.join()
    assert counting_core.compiled == 2  # the generator and the parser, each for one face
    size = tiny_config().out_size
    restored = restorer.restore_faces([_aligned_face(size)], options)
    masks, how = stages.face_masks(restorer.store, restored, options, RunLog(None))
    assert how == "parsenet" and len(masks) == 1
    assert counting_core.compiled == 2  # the first face used both prepared compilations
    aligned = RestoreOptions(version=str(folder), aligned=True)
    assert len(restorer.prepare(aligned)) == 1  # aligned faces are not pasted: no parser


def test_prepare_leaves_errors_to_the_call_that_needs_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    escaped: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: escaped.append(args.exc_value))
    tried: list[str] = []
    real = ModelStore.resolve

    def spy(self: ModelStore, spec: object) -> object:
        tried.append(str(spec))
        return real(self, spec)

    monkeypatch.setattr(ModelStore, "resolve", spy)
    restorer = Restorer(tmp_path, device="cpu", backend="openvino")
    options = RestoreOptions(version=str(tmp_path / "missing.pth"), use_parse=True)
    threads = restorer.prepare(options)
    for thread in threads:
        thread.join()
    assert len(threads) == 2 and options.version in tried  # the threads did look for the generator...
    assert escaped == []  # ...and kept its error: an exception escaping a thread would be printed, not raised
    with pytest.raises(WeightsError):
        restorer.restore(_aligned_face(64), options)


def test_cli_prepares_the_networks_before_the_first_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cv2

    from gfp.cli import main

    folder = save_tiny_generator(tmp_path / "tiny")
    cv2.imwrite(str(tmp_path / "face.png"), _aligned_face(tiny_config().out_size))
    calls = []
    real = Restorer.prepare

    def spy(self: Restorer, options: RestoreOptions) -> list[threading.Thread]:
        calls.append(options.version)
        return real(self, options)

    monkeypatch.setattr(Restorer, "prepare", spy)
    args = ["-i", str(tmp_path / "face.png"), "-o", str(tmp_path / "out"), "--aligned", "-v", str(folder)]
    assert main([*args, "-s", "1", "--device", "cpu", "--backend", "openvino"]) == 0
    assert calls == [str(folder)]


def test_cli_backend_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import cv2

    from gfp.cli import main

    folder = save_tiny_generator(tmp_path / "tiny")
    cv2.imwrite(str(tmp_path / "face.png"), _aligned_face(tiny_config().out_size))
    faces = {}
    for backend, ran in (("openvino", "OpenVINO"), ("torch", "PyTorch")):
        out = tmp_path / backend
        args = ["-i", str(tmp_path / "face.png"), "-o", str(out), "--aligned", "-v", str(folder), "-s", "1"]
        assert main([*args, "--device", "cpu", "--fp32", "--backend", backend]) == 0
        faces[backend] = cv2.imread(str(out / "restored_faces" / "face_00.png")).astype(int)
        captured = capsys.readouterr()
        assert f"Restored 1 of 1 file(s) (generator in {ran}); results" in captured.out  # what ran it
        assert "Traceback" not in captured.err
    assert np.abs(faces["openvino"] - faces["torch"]).max() <= 1


def test_app_warm_up_prepares_the_generator_and_parser_before_any_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app
    from gfp.archs.parsenet import ParseNet

    folder = save_tiny_generator(tmp_path / "tiny")
    torch.manual_seed(0)
    torch.save(ParseNet().state_dict(), tmp_path / "parsing_parsenet.pth")
    restorer = Restorer(tmp_path, device="cpu", backend="openvino")
    for thread in app.warm_up(restorer, str(folder)):
        thread.join(timeout=120)
    escaped: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: escaped.append(args.exc_value))
    missing = str(tmp_path / "missing")
    threads = app.warm_up(restorer, missing)
    for thread in threads:
        thread.join(timeout=30)
    assert threads and not any(thread.is_alive() for thread in threads) and escaped == []  # ended quietly
    with pytest.raises(WeightsError, match="missing"):  # left for the request that needs the network
        restorer.restore(np.zeros((64, 64, 3), np.uint8), RestoreOptions(version=missing, aligned=True))

    def no_compile(*args: object, **kwargs: object) -> None:
        raise AssertionError("compiled again: the warm-up did not keep its network")

    monkeypatch.setattr(openvino, "compile_network", no_compile)
    faces = restorer.store.face_network(str(folder)).run
    assert isinstance(faces, openvino.OpenVINONetwork)
    assert set(faces._compiled) == {(1, 3, 64, 64)}  # compiled for a one-face batch by the warm-up
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a conversion now would fail, warn, and so raise here
        face = [np.zeros((64, 64, 3), np.uint8)]
        masks, how = stages.face_masks(restorer.store, face, RestoreOptions(), RunLog(None))
    assert how == "parsenet" and masks is not None  # the parser was converted by the warm-up too


def test_openvino_sends_no_usage_statistics(tmp_path: Path) -> None:
    """In a fresh interpreter, so that nothing imported OpenVINO before: ours leaves its telemetry to the
    no-op stand-in; OpenVINO imported plainly would use the real one (so this test can fail)."""
    import os
    import subprocess
    import sys

    convert = (
        "import torch, gfp.openvino as g; "
        "g.compile_network(torch.nn.Conv2d(3, 3, 3), torch.zeros(2, 3, 8, 8)); "
        "from openvino.tools.ovc import convert_impl, telemetry_utils; "
        "print(convert_impl.tm.__name__, telemetry_utils.tm.__name__)"
    )
    plain = "import openvino.tools.ovc.convert_impl as c; print(c.tm.__name__)"
    env = {**os.environ, "HOME": str(tmp_path)}  # no opt-out file of this machine's user

    def run(code: str) -> list[str]:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.split()

    assert run(convert) == ["openvino.tools.ovc.telemetry_stub"] * 2
    assert run(plain) == ["openvino_telemetry"]


def test_restorer_runs_the_face_parser_in_openvino(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parser runs in OpenVINO as in PyTorch; and, as for the generator, a new store (a new process)
    that finds it converted neither reads its weights nor builds it in PyTorch (85 MB of memory for the
    official ParseNet). One test: converting the parser is what takes its time."""
    import gfp.store
    from gfp.archs.parsenet import ParseNet

    torch.manual_seed(0)
    torch.save(ParseNet().state_dict(), tmp_path / "parsing_parsenet.pth")
    compiled: list[str] = []
    real = openvino.compile_network

    def spy(*args: object, **kwargs: object) -> openvino.OpenVINONetwork:
        compiled.append(str(kwargs["name"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(openvino, "compile_network", spy)
    rng = np.random.default_rng(0)
    faces = [rng.integers(0, 256, (512, 512, 3), dtype=np.uint8) for _ in range(2)]
    options = RestoreOptions(use_parse=True)
    masks = {}
    for backend in ("openvino", "torch"):
        restorer = Restorer(tmp_path, device="cpu", backend=backend, bf16=False)
        masks[backend], how = stages.face_masks(restorer.store, faces, options, RunLog(None))
        assert how == "parsenet"
    assert compiled == ["parsing_parsenet.pth"]
    for got, expected in zip(masks["openvino"], masks["torch"], strict=True):
        assert np.abs(got - expected).max() < 1e-3

    def not_built(*args: object, **kwargs: object) -> None:
        raise AssertionError("the PyTorch parser was built")

    monkeypatch.setattr(gfp.store, "model_network", not_built)
    restorer = Restorer(tmp_path, device="cpu", backend="openvino", bf16=False)
    got, how = stages.face_masks(restorer.store, faces, options, RunLog(None))
    assert how == "parsenet" and all(map(np.array_equal, got, masks["openvino"]))
    assert isinstance(restorer.store.parser().run, openvino.OpenVINONetwork)


def _wait_for_conversion(cache: Path, timeout: float = 300.0) -> None:
    """Until no background conversion holds a lock in ``cache`` (the process removes it when done)."""
    import time

    deadline = time.monotonic() + timeout
    while openvino.conversions_running(cache):
        assert time.monotonic() < deadline, "the background conversion did not finish"
        time.sleep(0.2)


def test_a_lock_a_killed_conversion_left_is_not_a_conversion_running(tmp_path: Path) -> None:
    """What a caller waits for (the benchmark): the conversions whose process runs. A lock left by one that
    was killed (its process gone) kept the benchmark waiting forever."""
    import subprocess
    import sys

    assert openvino.conversions_running(tmp_path / "never used") == []
    locks = tmp_path / openvino.SUBDIR / "converting"
    locks.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    (locks / "killed").write_text(f"{socket.gethostname()} {gone.pid}", encoding="utf-8")
    (locks / "running").write_text(f"{socket.gethostname()} {os.getpid()}", encoding="utf-8")
    assert openvino.conversions_running(tmp_path) == [locks / "running"]


def test_a_network_not_yet_converted_runs_in_pytorch_while_another_process_converts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No conversion on the caller's clock: the first restore runs in PyTorch and starts a low-priority
    process that converts; a store that keeps running switches to the converted network, and a new one (a
    new process) finds it in the cache."""
    monkeypatch.setenv(CONVERT_ENV, "background")
    monkeypatch.setattr(openvino, "RECHECK_S", 0.0)

    def no_conversion_here(*args: object, **kwargs: object) -> None:
        raise AssertionError("converted in the caller's process")

    monkeypatch.setattr(openvino, "compile_network", no_conversion_here)
    folder = save_tiny_generator(tmp_path / "tiny")
    options = RestoreOptions(version=str(folder), aligned=True, upscale=1, bg_upsampler="none")
    face = _aligned_face(tiny_config().out_size)
    expected = Restorer(device="cpu", backend="torch", bf16=False).restore(face, options).restored_faces[0]

    restorer = Restorer(device="cpu", backend="openvino", bf16=False)
    first = restorer.restore(face, options).restored_faces[0]
    np.testing.assert_array_equal(first, expected)  # PyTorch's own function
    switching = restorer.store.face_network(options.version).run
    assert isinstance(switching, openvino.Switching)
    _wait_for_conversion(tmp_path / "cache")
    later = restorer.restore(face, options).restored_faces[0]
    assert isinstance(switching.converted, openvino.OpenVINONetwork)  # switched without a restart
    assert np.abs(later.astype(int) - expected.astype(int)).max() <= 1
    fresh = Restorer(device="cpu", backend="openvino", bf16=False).store.face_network(options.version).run
    assert isinstance(fresh, openvino.OpenVINONetwork)  # the next process uses the conversion at once


def test_a_running_store_starts_a_conversion_that_died_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long-running app whose background conversion was killed asks for it again when it looks for the
    converted network (it polled the cache for good, in PyTorch)."""
    monkeypatch.setenv(CONVERT_ENV, "background")
    monkeypatch.setattr(openvino, "RECHECK_S", 0.0)
    asked: list[str] = []
    monkeypatch.setattr(openvino, "cached_network", lambda *args, **kwargs: None)
    monkeypatch.setattr(openvino, "convert_in_background", lambda path, *_, **__: asked.append(path) or True)
    folder = save_tiny_generator(tmp_path / "tiny")
    switching = Restorer(device="cpu", backend="openvino", bf16=False).store.face_network(str(folder)).run
    assert isinstance(switching, openvino.Switching) and len(asked) == 1
    switching(_faces(1, tiny_config().out_size))
    assert len(asked) == 2 and switching.converted is None


def _replaceable(tmp_path: Path) -> tuple[Path, Path, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a live generator folder, a replacement's weights file, faces, the live and the replacement's
    PyTorch restorations of them)."""
    live = save_tiny_generator(tmp_path / "live", seed=0)
    other = save_tiny_generator(tmp_path / "other", seed=1)
    x = _faces(1, tiny_config().out_size)
    with torch.no_grad():
        restored = [ModelStore(placement=Placement()).face_network(str(f)).run(x) for f in (live, other)]
    return live, other / "model.safetensors", x, *restored


def test_weights_replaced_after_they_were_read_are_not_taken_for_their_conversion(tmp_path: Path) -> None:
    """A file replaced (a new checkpoint moved into place) between the store reading it and converting
    what it read: the conversion is remembered for the file as it was read, so the next process, which
    finds the new file, does not run the old weights."""
    live, replacement, x, expected, replaced = _replaceable(tmp_path)
    store = ModelStore(placement=Placement(backend="openvino"))  # converts before the first call
    store.generator_config(str(live))  # read first, as the CLI does to say early what is wrong
    os.replace(replacement, live / "model.safetensors")
    assert _rel(store.face_network(str(live)).run(x), expected) < 1e-5
    fresh = ModelStore(placement=Placement(backend="openvino")).face_network(str(live)).run
    assert isinstance(fresh, openvino.OpenVINONetwork)
    assert _rel(fresh(x), replaced) < 1e-5


def test_a_running_store_does_not_switch_to_the_conversion_of_a_replacing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file replaced while a store runs it in PyTorch (a checkpoint written over the one a folder is
    being restored with): the store keeps the weights it read, not switching part way through to the
    conversion that another process made of the new file."""
    monkeypatch.setenv(CONVERT_ENV, "background")
    monkeypatch.setattr(openvino, "RECHECK_S", 0.0)
    monkeypatch.setattr(openvino, "convert_in_background", lambda *args, **kwargs: True)
    live, replacement, x, expected, _ = _replaceable(tmp_path)
    switching = ModelStore(placement=Placement(backend="openvino")).face_network(str(live)).run
    assert isinstance(switching, openvino.Switching)
    os.replace(replacement, live / "model.safetensors")
    ModelStore(placement=Placement(backend="openvino"), convert="now").face_network(str(live))
    with torch.no_grad():
        assert torch.equal(switching(x), expected)
    assert switching.converted is None


def test_a_converter_started_for_a_file_that_changed_since_converts_nothing_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The background converter of a file replaced after its caller read it marks the caller's conversion
    failed (the caller runs PyTorch, and does not start it again and again), converting nothing for it."""
    source = save_tiny_generator(tmp_path / "tiny")
    size = tiny_config().out_size
    cache = tmp_path / "cache"
    memo = openvino._memo(cache / openvino.SUBDIR, source, "faces", torch.zeros(2, 3, size, size), (0,))
    time.sleep(0.05)  # past the file system clock's tick, so the change time differs
    (source / "config.json").write_text((source / "config.json").read_text())
    lock, failed = (cache / openvino.SUBDIR / folder / memo.name for folder in ("converting", "failed"))
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    monkeypatch.setattr(openvino, "_convert", lambda *args: pytest.fail("converted other weights"))
    shape = f"2x3x{size}x{size}"
    args = [
        "gfp.store:conversion_network",
        "faces",
        str(source),
        shape,
        "0",
        str(cache),
        str(lock),
        str(failed),
    ]
    with pytest.raises(RuntimeError, match="changed"):
        openvino._convert_main(args)
    assert "changed after the caller read them" in failed.read_text() and not lock.exists()


def test_a_parser_not_yet_converted_is_looked_for_in_the_cache_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store looks for the parser's conversion before reading its weights, and not again when it is
    not there: the PyTorch parser then serves while another process converts it."""
    from gfp.archs.parsenet import ParseNet

    monkeypatch.setenv(CONVERT_ENV, "background")
    looked: list[str] = []
    monkeypatch.setattr(openvino, "cached_network", lambda source, *args, **kwargs: looked.append(source))
    monkeypatch.setattr(openvino, "convert_in_background", lambda *args, **kwargs: True)
    torch.save(ParseNet().state_dict(), tmp_path / "parsing_parsenet.pth")
    parser = Restorer(tmp_path, device="cpu", backend="openvino", bf16=False).store.parser(required=True)
    assert isinstance(parser.run, openvino.Switching)
    assert looked == [str(tmp_path / "parsing_parsenet.pth")]


def test_a_parser_file_that_does_not_load_is_unavailable_not_an_openvino_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Converting now builds the PyTorch parser first: weights that do not load make it unavailable (the
    photo is pasted without parsing, said so), with no warning that OpenVINO failed."""
    import warnings

    from gfp.store import Unavailable

    monkeypatch.setenv(CONVERT_ENV, "now")
    (tmp_path / "parsing_parsenet.pth").write_bytes(b"PK\x03\x04" + bytes(100))  # a cut-short download
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = Restorer(tmp_path, device="cpu", backend="openvino", bf16=False).store.parser()
    assert isinstance(got, Unavailable) and "not a readable PyTorch checkpoint" in got.reason
    assert not [w for w in caught if "OpenVINO" in str(w.message)], [str(w.message) for w in caught]


def test_one_background_conversion_per_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One conversion per network at a time; the lock of a converter that is gone (killed: its pid no
    longer runs, or the lock is old) is taken over at once, not after half an hour; a conversion that failed
    is not tried again for a day; a file where the locks go means no conversion, not "one is running"."""
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs
    started: list[list[str]] = []

    def popen(args: list[str], **kwargs: object) -> object:
        started.append(args)
        pid = os.getpid() if len(started) == 1 else gone.pid
        return type("Process", (), {"pid": pid, "wait": lambda self: 0})()

    monkeypatch.setattr(subprocess, "Popen", popen)
    source = tmp_path / "weights.pth"
    source.write_bytes(b"x")
    example = torch.zeros(2, 3, 8, 8)
    for _ in range(2):  # a second store (another request, another process) finds the first one's lock
        assert openvino.convert_in_background(source, "faces", example, (0,), tmp_path)
    assert len(started) == 1 and started[0][-10:-8] == ["-m", "gfp.openvino"]
    lock = next((tmp_path / openvino.SUBDIR / "converting").iterdir())
    assert not lock.stat().st_mode & 0o111  # a plain file (os.open's default mode is executable)
    old = lock.stat().st_mtime - openvino.STALE_LOCK_S - 1
    os.utime(lock, (old, old))  # its process was killed long ago: the lock is taken over
    assert openvino.convert_in_background(source, "faces", example, (0,), tmp_path)
    assert len(started) == 2  # this one's process is gone at once (the out-of-memory killer, say)
    assert openvino.convert_in_background(source, "faces", example, (0,), tmp_path)
    assert len(started) == 3

    failed = Path(started[-1][-1])  # where the converter says that it failed
    failed.parent.mkdir(parents=True)
    failed.write_text("RuntimeError: cannot convert")
    lock.unlink()
    assert not openvino.convert_in_background(source, "faces", example, (0,), tmp_path)
    old = failed.stat().st_mtime - openvino.FAILED_RETRY_S - 1
    os.utime(failed, (old, old))
    assert openvino.convert_in_background(source, "faces", example, (0,), tmp_path)
    assert len(started) == 4

    blocked = tmp_path / "blocked"
    (blocked / openvino.SUBDIR).mkdir(parents=True)
    (blocked / openvino.SUBDIR / "converting").write_text("a file in the way")
    assert not openvino.convert_in_background(source, "faces", example, (0,), blocked)
    assert len(started) == 4


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_a_background_conversion_that_ended_leaves_no_zombie_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The converter is collected when it ends: a long-running caller (the app) kept it as a zombie."""
    import subprocess

    started: list[subprocess.Popen[bytes]] = []
    popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(popen(*a, **k)) or started[-1])
    source = save_tiny_generator(tmp_path / "tiny")
    example = torch.zeros(2, 3, tiny_config().out_size, tiny_config().out_size)
    # an unknown role: the converter fails at once (marked failed), which is enough to see it collected
    assert openvino.convert_in_background(source, "no-such-role", example, (0,), tmp_path / "cache")
    pid = started[0].pid
    deadline = time.monotonic() + 120
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, "the ended converter was not collected: " + (
            "a zombie" if openvino._zombie(pid) else "still running"
        )
        time.sleep(0.2)


def test_a_process_that_ends_first_waits_for_prepare(tmp_path: Path) -> None:
    """A process whose work ends before its networks are prepared (no face found, a quick error) waits for
    the preparing threads: tearing the interpreter down under a running OpenVINO compilation aborts it."""
    import subprocess
    import sys
    import textwrap

    marker = tmp_path / "prepared"
    script = textwrap.dedent(
        f"""
        import time
        from gfp.pipeline import Restorer, RestoreOptions
        from gfp.store import ModelStore

        def slow(self, spec):
            time.sleep(1.0)
            open({str(marker)!r}, "w").close()
            raise RuntimeError("left to the call that needs it")

        ModelStore.face_network = slow
        Restorer(device="cpu", backend="torch").prepare(RestoreOptions(aligned=True))
        """
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert marker.exists()  # the thread ran to its end before the process exited
