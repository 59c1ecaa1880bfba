"""ONNX export: onnxruntime reproduces the PyTorch generator on the same weights (both archs).

Tiny seeded random generators, saved as an official-layout checkpoint and exported through the command
line, so loading, the ``gfp export-onnx`` dispatch and the exporter are all exercised.
"""

from __future__ import annotations

import contextlib
import errno
import json
import signal
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import gfp
from gfp.archs import GeneratorConfig, build_generator
from gfp.cli import main as gfp_main

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

# onnxruntime's kernels round differently from PyTorch's; measured max relative error ~2e-6.
TOLERANCE = 1e-5
CONFIGS = {
    "clean": GeneratorConfig(
        arch="clean", out_size=32, channel_multiplier=2, narrow=0.125, num_style_feat=64
    ),
    "v1": GeneratorConfig(arch="v1", out_size=32, channel_multiplier=1, narrow=0.125, num_style_feat=64),
}


def _generator(config: GeneratorConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_generator(config).eval()
    with torch.no_grad():  # noise strengths start at zero: make the stored noise part of the output
        for name, param in net.named_parameters():
            if (
                name.startswith("stylegan_decoder.style_convs.")
                and name.endswith(".weight")
                and param.ndim == 1
            ):
                param.fill_(0.3)
    return net


def _run(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": x.numpy()})[0]


def _rel_err(out: np.ndarray, ref: torch.Tensor) -> float:
    return float(np.abs(out - ref.numpy()).max() / ref.abs().max().item())


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_onnxruntime_reproduces_pytorch_with_a_dynamic_batch(arch, tmp_path, capsys):
    config = CONFIGS[arch]
    net = _generator(config)
    checkpoint = tmp_path / "tiny.pth"
    torch.save({"params_ema": net.state_dict()}, checkpoint)
    out_file = tmp_path / "tiny.onnx"
    assert gfp_main(["export-onnx", str(checkpoint), str(out_file), "--dynamic-batch"]) == 0
    assert f"wrote {out_file}" in capsys.readouterr().out
    # the file says what made it (a user with ten .onnx files), and holds the weights once
    meta = {p.key: p.value for p in onnx.load(str(out_file)).metadata_props}
    assert meta["gfp.model"] == str(checkpoint) and json.loads(meta["gfp.config"]) == config.to_dict()
    assert meta["gfp.version"] == gfp.__version__ and "[-1, 1]" in meta["gfp.io"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx", "tiny.pth"]
    for batch in (1, 3):
        torch.manual_seed(batch)
        x = torch.rand(batch, 3, config.out_size, config.out_size) * 2 - 1
        with torch.no_grad():
            ref, _ = net(x, return_rgb=False)
        out = _run(out_file, x)
        assert out.shape == tuple(ref.shape)
        err = _rel_err(out, ref)
        print(f"{arch} batch {batch}: onnxruntime vs PyTorch max rel err {err:.1e}")
        assert err <= TOLERANCE


def test_fixed_batch_export(tmp_path):
    from gfp.onnx import export_onnx

    config = CONFIGS["clean"]
    net = _generator(config)
    modes_before = [m.modulation_mode for m in net.modules() if hasattr(m, "modulation_mode")]
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. "Exporting a model while it is in training mode"
        path = export_onnx(net, tmp_path / "fixed.onnx", config.out_size, batch_size=2)
    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="a-file is a file, not a folder"):
        export_onnx(net, tmp_path / "a-file" / "x.onnx", config.out_size)
    for opset in (12, 99, True):  # the exporter would write opset 18 and succeed
        with pytest.raises(ValueError, match="opset must be 18"):
            export_onnx(net, tmp_path / "other.onnx", config.out_size, opset=opset)
    assert not (tmp_path / "other.onnx").exists()
    assert [m.modulation_mode for m in net.modules() if hasattr(m, "modulation_mode")] == modes_before
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, 3, 32, 32]
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ref, _ = net(x, return_rgb=False)
    assert _rel_err(_run(path, x), ref) <= TOLERANCE


def test_export_errors_are_one_line(tmp_path, capsys, offline):
    assert gfp_main(["export-onnx", str(tmp_path / "missing.pth"), str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gfp export-onnx: error:") and "\n" not in err
    not_a_generator = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1, 1, 1, 1)}, not_a_generator)
    assert gfp_main(["export-onnx", str(not_a_generator), str(tmp_path / "x.onnx")]) == 2
    assert "not a GFPGAN" in capsys.readouterr().err
    for bad in (["--batch-size", "0"], ["--opset", "11"], ["--opset", "99"]):  # 99: it wrote opset 18
        with pytest.raises(SystemExit) as exc:
            gfp_main(["export-onnx", str(not_a_generator), str(tmp_path / "x.onnx"), *bad])
        assert exc.value.code == 2
    assert "--opset must be 18 to" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
    # missing registry weights: where it looked and how to provide them, not a dangling "Looked in:"
    assert gfp_main(["export-onnx", "1.4", str(tmp_path / "x.onnx"), "--weights-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Looked in:\n  - weights folder" in err and "To provide it:" in err


def _checkpoint(tmp_path):
    checkpoint = tmp_path / "tiny.pth"
    torch.save({"params_ema": _generator(CONFIGS["clean"]).state_dict()}, checkpoint)
    return checkpoint


def test_a_failed_write_keeps_the_earlier_file(tmp_path, capsys, monkeypatch):
    """A full disk midway through writing the .onnx: an error, the earlier export as it was, no half file
    (it was truncated and left half-written under the final name)."""
    checkpoint, out_file = _checkpoint(tmp_path), tmp_path / "kept.onnx"
    out_file.write_bytes(b"the earlier export")

    def full_disk(proto, path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(proto.SerializeToString()[:1000])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save", full_disk)
    assert gfp_main(["export-onnx", str(checkpoint), str(out_file)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert out_file.read_bytes() == b"the earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.onnx", "tiny.pth"]


def test_an_output_that_cannot_be_written_is_refused_before_the_export(tmp_path, capsys, monkeypatch):
    """A folder as OUT: said at once, not after the export (20 s and 2 GB of memory for a 512 px model)."""
    checkpoint = _checkpoint(tmp_path)
    (tmp_path / "folder.onnx").mkdir()

    def no_export(*args, **kwargs):
        raise AssertionError("exported for an output that cannot be written")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    assert gfp_main(["export-onnx", str(checkpoint), str(tmp_path / "folder.onnx")]) == 2
    assert "cannot write" in capsys.readouterr().err


def _interrupted_then_finished(*args, **kwargs):
    """What PyTorch's exporter did with a Ctrl-C during tracing: one capture strategy failed, the next one
    finished the export."""
    with contextlib.suppress(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
    return SimpleNamespace(
        model=SimpleNamespace(metadata_props={}), save=lambda path, **kw: path.write_bytes(b"onnx")
    )


def _interrupted_then_failed(*args, **kwargs):
    """Or: the Ctrl-C broke a lazy import inside it, which it reported as a failed export."""
    try:
        signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt:
        message = "Failed to export the model with torch.export. \x1b[96mThis is step 1/3\x1b[0m"
        raise RuntimeError(message) from AttributeError("module 'torch._dynamo' has no attribute 'exc'")


@pytest.mark.parametrize("export", [_interrupted_then_finished, _interrupted_then_failed])
def test_ctrl_c_during_the_export_stops_it(export, tmp_path, capsys, monkeypatch):
    checkpoint, out_file = _checkpoint(tmp_path), tmp_path / "x.onnx"
    out_file.write_bytes(b"the earlier export")
    monkeypatch.setattr(torch.onnx, "export", export)
    assert gfp_main(["export-onnx", str(checkpoint), str(out_file)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "export failed" not in err
    assert out_file.read_bytes() == b"the earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pth", "x.onnx"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_exporter_errors_are_said_without_terminal_colours(tmp_path, capsys, monkeypatch):
    def failing(*args, **kwargs):
        raise RuntimeError("Failed to export the model with torch.export. \x1b[96mThis is step 1/3\x1b[0m")

    monkeypatch.setattr(torch.onnx, "export", failing)
    assert gfp_main(["export-onnx", str(_checkpoint(tmp_path)), str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert "export failed: Failed to export the model with torch.export. This is step 1/3" in err
    assert "\x1b" not in err and not (tmp_path / "x.onnx").exists()


def test_python_m_gfp_onnx_says_an_interruption_in_one_line(tmp_path, capsys, monkeypatch):
    """``python -m gfp.onnx`` has no gfp CLI around it: Ctrl-C gave a traceback of the exporter's insides."""
    from gfp.onnx import main as onnx_main

    monkeypatch.setattr(torch.onnx, "export", _interrupted_then_failed)
    out_file = tmp_path / "x.onnx"
    try:
        status = onnx_main([str(_checkpoint(tmp_path)), str(out_file)], prog="python -m gfp.onnx")
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped python -m gfp.onnx (a traceback)")
    assert status == 130 and not out_file.exists()
    err = capsys.readouterr().err.strip()
    assert err == f"python -m gfp.onnx: interrupted; nothing was written to {out_file}"
