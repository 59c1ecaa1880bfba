"""Safe loading: checkpoints are read without running pickled code; bad files fail with clear errors."""

from __future__ import annotations

import pathlib
from pathlib import Path

import pytest
import torch
from _zoo_helpers import save_tiny_generator, tiny_config, tiny_generator
from safetensors.torch import save_file

from gfp.loading import CheckpointError, UnsafeCheckpointError, WeightsNotFoundError, load_state_dict


class _TouchOnLoad:
    """Unpickling this calls ``Path.touch(marker)``: a harmless stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _malicious(tmp_path: Path, legacy: bool) -> tuple[Path, Path]:
    marker = tmp_path / "payload-ran"
    path = tmp_path / ("legacy.pth" if legacy else "evil.pth")
    checkpoint = {"params_ema": {"w": torch.zeros(2)}, "extra": _TouchOnLoad(marker)}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    return path, marker


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickled_code_payload_is_refused_and_never_runs(tmp_path: Path, legacy: bool) -> None:
    path, marker = _malicious(tmp_path, legacy)
    with pytest.raises(UnsafeCheckpointError, match="refused to load") as err:
        load_state_dict(path)
    assert str(path) in str(err.value) and "was executed" in str(err.value)
    assert not marker.exists()


def test_the_payload_is_real(tmp_path: Path) -> None:
    """Control for the test above: an unsafe load of the same file does run the payload."""
    path, marker = _malicious(tmp_path, legacy=False)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_plain_pickle_of_tensors_loads_and_unwraps(tmp_path: Path) -> None:
    weights = {"a.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.ones(2)}
    torch.save(weights, tmp_path / "plain.pth")
    torch.save({"params_ema": weights, "params": {"a.weight": torch.zeros(1)}}, tmp_path / "wrapped.pth")
    for name in ("plain.pth", "wrapped.pth"):
        loaded = load_state_dict(tmp_path / name)
        assert loaded.keys() == weights.keys()
        assert all(torch.equal(loaded[k], v) for k, v in weights.items())


def test_safetensors_file_and_folder(tmp_path: Path) -> None:
    weights = {"w": torch.randn(3, 3)}
    save_file(weights, tmp_path / "model.safetensors")
    assert torch.equal(load_state_dict(tmp_path / "model.safetensors")["w"], weights["w"])
    assert torch.equal(load_state_dict(tmp_path)["w"], weights["w"])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("garbage.pth", b"this is not a checkpoint" * 10, "not a readable PyTorch checkpoint"),
        ("empty.pth", b"", "not a readable PyTorch checkpoint"),
        ("broken.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage", "not a readable safetensors"),
    ],
    ids=["garbage", "empty", "safetensors"],
)
def test_unreadable_files_fail_clearly(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as err:
        load_state_dict(path)
    assert name in str(err.value)


@pytest.mark.parametrize("name", ["GFPGANv1.4.pth", "model.safetensors"])
def test_a_saved_web_page_or_text_is_named_as_such(tmp_path: Path, name: str) -> None:
    """A server's error page saved under a weights name is said to be one, not the unpickler's riddle."""
    path = tmp_path / name
    for content, kind in (
        (b"\n<!DOCTYPE html>\n<html>Not Found</html>", "a web page"),
        (b"404: Not Found\n", "a text"),
        (b"cannot find that file\n", "a text"),  # "c" starts a pickle GLOBAL: the unpickler calls it unsafe
    ):
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=f"{name} is not a readable .*: it is {kind}") as err:
            load_state_dict(path)
        cause = "(a failed download can save a server's error page under the file's name)"
        assert str(err.value).endswith(cause)  # the cure is added where the file is known (loading._read)


def test_checkpoint_without_a_state_dict_is_rejected(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "model_weights": {"w": torch.zeros(1)}}, tmp_path / "trainer.pth")
    with pytest.raises(CheckpointError, match="not a state dict of tensors.*epoch"):
        load_state_dict(tmp_path / "trainer.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_state_dict(tmp_path / "list.pth")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_state_dict(tmp_path / "nope.pth")


@pytest.mark.shared
@pytest.mark.parametrize(
    ("file_name", "some_key"),
    [
        ("detection_mobilenet0.25_Final.pth", "body.stage1.0.0.weight"),
        ("realesr-animevideov3.pth", "body.0.weight"),
    ],
)
def test_real_official_files_load_with_weights_only(shared_data: Path, file_name: str, some_key: str) -> None:
    state_dict = load_state_dict(shared_data / "weights" / file_name)
    assert some_key in state_dict and all(isinstance(v, torch.Tensor) for v in state_dict.values())


def test_unwraps_identity_checkpoints_and_dataparallel_prefixes(tmp_path: Path) -> None:
    """The MobileFaceNet checkpoint keeps its weights under net_state_dict; DataParallel adds module."""
    weights = {"module.conv.weight": torch.ones(2, 2), "module.conv.bias": torch.zeros(2)}
    path = tmp_path / "identity.ckpt"
    torch.save({"epoch": 3, "net_state_dict": weights}, path)
    assert sorted(load_state_dict(path)) == ["conv.bias", "conv.weight"]
    mixed = tmp_path / "mixed.pth"
    torch.save({"module.a": torch.ones(1), "b": torch.ones(1)}, mixed)
    assert sorted(load_state_dict(mixed)) == ["b", "module.a"]  # only a prefix every key shares is dropped


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_both_torch_save_formats_load_the_zip_one_memory_mapped(
    tmp_path: Path, legacy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.pth"
    weights = {"conv.weight": torch.randn(2, 3), "conv.bias": torch.arange(2.0)}
    torch.save({"params_ema": weights}, path, _use_new_zipfile_serialization=not legacy)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("mmap", False))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = load_state_dict(path, mapped=True)
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    # mapped where the format allows (no values read for a converted network); pre-1.6 files read whole
    assert calls == ([True, False] if legacy else [True])
    calls.clear()  # unasked, read whole: what a network keeps must not be the file's pages
    assert load_state_dict(path).keys() == weights.keys() and calls == [False]


@pytest.mark.parametrize("name", ["model.safetensors", "GFPGANv1.4.pth"])
def test_a_generators_file_is_opened_once_to_read_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Reading a generator opens its file once: our safetensors' tensors and the config its header carries
    come from one handle, and the look for a saved web page is only taken when a file does not load."""
    import builtins

    import gfp.weights.files
    from gfp.loading import read_generator

    config = tiny_config()
    folder = save_tiny_generator(tmp_path / "tiny", config)
    path = tmp_path / name
    if name.endswith(".pth"):
        torch.save({"params_ema": tiny_generator(config).state_dict()}, path)
    else:
        (folder / "model.safetensors").rename(path)  # out of its folder: the embedded config gives the layout
    opened: list[str] = []

    def counted(real):  # noqa: ANN001, ANN202
        def open_(file, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if Path(str(file)) == path:
                opened.append(real.__name__)
            return real(file, *args, **kwargs)

        open_.__name__ = real.__name__
        return open_

    monkeypatch.setattr(builtins, "open", counted(builtins.open))
    monkeypatch.setattr(gfp.weights.files, "safe_open", counted(gfp.weights.files.safe_open))
    state_dict, found_config, _ = read_generator(str(path))
    assert found_config == config and state_dict
    assert len(opened) == 1, opened
