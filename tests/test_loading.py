"""gfp.loading: the model zoo, where weights are found, downloads, the Hub, generators and devices.

Networks are tiny (out_size 64/128, narrow channels); downloads go to a local HTTP server in a thread.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import re
from pathlib import Path

import pytest
import torch
from _zoo_helpers import FileServer, save_tiny_generator, serve, tiny_config, tiny_generator
from conftest import free_port

from gfp import loading, registry
from gfp.archs import UnknownArchitectureError, detect_config
from gfp.devices import Placement
from gfp.loading import (
    MODEL_ZOO,
    CheckpointError,
    ChecksumMismatchError,
    DownloadError,
    WeightsError,
    WeightsNotFoundError,
    load_generator,
    load_network,
    load_state_dict,
    prepare_for_inference,
    resolve_weights,
    save_pretrained,
    select_device,
)

OFFICIAL = {  # zoo name -> release URL, as published by TencentARC / xinntao
    "v1": "https://github.com/TencentARC/GFPGAN/releases/download/v0.1.0/GFPGANv1.pth",
    "v1.2": "https://github.com/TencentARC/GFPGAN/releases/download/v0.2.0/GFPGANCleanv1-NoCE-C2.pth",
    "v1.3": "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.3.pth",
    "v1.4": "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth",
    "retinaface_resnet50": "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
    "retinaface_mobile0.25": "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_mobilenet0.25_Final.pth",
    "parsenet": "https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth",
    "RealESRGAN_x2plus": "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.1/RealESRGAN_x2plus.pth",
    "realesr-general-x4v3": "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.5.0/realesr-general-x4v3.pth",
    "realesr-animevideov3": "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.5.0/realesr-animevideov3.pth",
}
PINNED = {  # issue 8: sha256 and size pinned independently by several public projects
    "v1.2": ("29e25ee90c170f4231163f4c83df6b59c968b73f3ce00cb884015ae005db083c", None),
    "v1.3": ("c953a88f2727c85c3d9ae72e2bd4846bbaf59fe6972ad94130e23e7017524a70", 348_632_874),
    "v1.4": ("e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad", 348_632_874),
    "realesr-general-x4v3": ("8dc7edb9ac80ccdc30c3a5dca6616509367f05fbc184ad95b731f05bece96292", 4_885_111),
}


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache and no weights folder from the environment."""
    monkeypatch.setenv("GFP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GFP_WEIGHTS_DIR", raising=False)
    return tmp_path / "cache"


def _checkpoint_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _point_at(monkeypatch: pytest.MonkeyPatch, name: str, url: str, body: bytes | None, **changes) -> None:
    """Make zoo entry ``name`` download from ``url``; by default its sha256 is that of ``body``."""
    if body is not None:
        changes.setdefault("sha256", hashlib.sha256(body).hexdigest())
        changes.setdefault("size", len(body))
    monkeypatch.setitem(MODEL_ZOO, name, dataclasses.replace(MODEL_ZOO[name], url=url, **changes))


def _closed_port_url(path: str) -> str:
    return f"http://127.0.0.1:{free_port()}{path}"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- the zoo ------------------------------------------------------------------------------------------


def test_zoo_lists_official_releases_and_generator_configs() -> None:
    gfp_kinds = ("generator", "detector", "parser", "upsampler")  # train/ registers the other kinds
    assert {e.name for kind in gfp_kinds for e in registry.entries(kind)} == set(OFFICIAL)
    for name, url in OFFICIAL.items():
        entry = MODEL_ZOO[name]
        assert entry.url == url and url.endswith("/" + entry.file_name)
        assert entry.sha256 is None or len(entry.sha256) == 64
        if entry.sha256 is None:
            assert "not verified" in entry.note
    assert MODEL_ZOO["v1"].config.arch == "v1" and MODEL_ZOO["v1"].config.channel_multiplier == 1
    for name in ("v1.2", "v1.3", "v1.4"):
        config = MODEL_ZOO[name].config
        assert (config.arch, config.channel_multiplier, config.out_size) == ("clean", 2, 512)
        assert config.different_w and config.sft_half and config.input_is_latent


def test_pinned_checksums_and_the_one_unverified_generator() -> None:
    for name, (sha256, size) in PINNED.items():
        assert (MODEL_ZOO[name].sha256, MODEL_ZOO[name].size) == (sha256, size), name
    assert MODEL_ZOO["v1"].sha256 is None and "not verified" in MODEL_ZOO["v1"].note


@pytest.mark.parametrize("name", ["v1", "v1.2", "v1.3", "v1.4"])
def test_zoo_configs_are_what_the_official_checkpoints_detect_as(name: str) -> None:
    """load_generator rejects a zoo file whose detected layout differs, so the two must agree exactly.

    The official networks are built (on the meta device, no memory) the way the official inference
    script builds them for each version; their state dicts have the released checkpoints' keys and shapes.
    """
    from gfpgan.archs.gfpganv1_arch import GFPGANv1
    from gfpgan.archs.gfpganv1_clean_arch import GFPGANv1Clean

    official = GFPGANv1 if name == "v1" else GFPGANv1Clean
    options = {"out_size": 512, "num_style_feat": 512, "num_mlp": 8, "decoder_load_path": None}
    options |= {"fix_decoder": False, "input_is_latent": True, "different_w": True, "sft_half": True}
    with torch.device("meta"):
        state_dict = official(channel_multiplier=1 if name == "v1" else 2, **options).state_dict()
    assert detect_config(state_dict) == MODEL_ZOO[name].config


@pytest.mark.parametrize("spec", ["1.4", "v1.4", "V1.4", "GFPGANv1.4", "GFPGANv1.4.pth"])
def test_version_spellings_name_the_same_entry(spec: str) -> None:
    assert loading.zoo_entry(spec) is MODEL_ZOO["v1.4"]


@pytest.mark.shared
def test_shared_copies_against_zoo_hashes(shared_data: Path) -> None:
    """The offline MobileNet copy is the official file; the animevideov3 copy is documented as re-saved."""
    weights = shared_data / "weights"
    mobile = MODEL_ZOO["retinaface_mobile0.25"]
    data = (weights / mobile.file_name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == mobile.sha256 and len(data) == mobile.size
    anime = MODEL_ZOO["realesr-animevideov3"]
    assert hashlib.sha256((weights / anime.file_name).read_bytes()).hexdigest() != anime.sha256
    assert resolve_weights("retinaface_mobile0.25", weights_dir=weights) == weights / mobile.file_name


# --- downloads ----------------------------------------------------------------------------------------


def test_download_shows_progress_verifies_and_then_hits_the_cache(
    monkeypatch: pytest.MonkeyPatch, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = _checkpoint_bytes({"params_ema": tiny_generator(tiny_config()).state_dict()})
    with serve(FileServer(files={"/GFPGANv1.4.pth": body})) as server:
        _point_at(monkeypatch, "v1.4", server.url("/GFPGANv1.4.pth"), body)
        path = resolve_weights("v1.4")
        assert path == isolated / "GFPGANv1.4.pth" and path.read_bytes() == body
        assert "GFPGANv1.4.pth" in capsys.readouterr().err  # the tqdm bar
        assert resolve_weights("1.4") == path
        assert server.count("/GFPGANv1.4.pth") == 1  # the second call never asked the network
    assert _leftovers(isolated) == ["GFPGANv1.4.pth"]


def test_an_empty_file_in_the_cache_is_downloaded_again_and_a_cut_one_is_named(
    monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    """An empty cached file (a copy that failed, a full disk) is no download: it is fetched again, not
    loaded as a broken checkpoint on every run. A checkpoint cut short says so."""
    body = _checkpoint_bytes({"params_ema": tiny_generator(tiny_config()).state_dict()})
    isolated.mkdir()
    (isolated / "GFPGANv1.4.pth").write_bytes(b"")
    with serve(FileServer(files={"/GFPGANv1.4.pth": body})) as server:
        _point_at(monkeypatch, "v1.4", server.url("/GFPGANv1.4.pth"), body)
        assert resolve_weights("v1.4", progress=False).read_bytes() == body
        assert server.count("/GFPGANv1.4.pth") == 1
    (isolated / "cut.pth").write_bytes(body[:0])
    with pytest.raises(
        CheckpointError, match="cut.pth is not a readable PyTorch checkpoint: the file ends early"
    ):
        load_state_dict(isolated / "cut.pth")


def test_a_cached_file_of_the_wrong_size_is_downloaded_again_and_a_broken_one_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolated: Path
) -> None:
    """A cut copy in the cache (a copy or download that died) is not the model: where the entry knows its
    size it is downloaded again, not loaded and failed on every run. A user's weights folder file is never
    replaced or deleted: when it does not load, the error says what its size shows."""
    body = _checkpoint_bytes({"params_ema": tiny_generator(tiny_config()).state_dict()})
    isolated.mkdir()
    cut = isolated / "GFPGANv1.4.pth"
    cut.write_bytes(body[:1000])
    with serve(FileServer(files={"/GFPGANv1.4.pth": body})) as server:
        _point_at(monkeypatch, "v1.4", server.url("/GFPGANv1.4.pth"), body)
        assert resolve_weights("v1.4", progress=False).read_bytes() == body
        assert server.count("/GFPGANv1.4.pth") == 1
    expected = f"has 1000 bytes, not the official file's {len(body)}"
    cut.write_bytes(body[:1000])
    _point_at(monkeypatch, "v1.4", _closed_port_url("/GFPGANv1.4.pth"), body)
    with pytest.raises(WeightsNotFoundError, match=f"{re.escape(str(cut))} {expected} .*not used"):
        resolve_weights("v1.4", progress=False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "GFPGANv1.4.pth").write_bytes(body[:1000])
    with pytest.raises(CheckpointError, match=f"not a readable .*it {expected}.*replace it with GFPGANv1.4"):
        load_generator("v1.4", weights_dir=mine)
    assert (mine / "GFPGANv1.4.pth").read_bytes() == body[:1000]
    monkeypatch.setitem(MODEL_ZOO, "v1.4", dataclasses.replace(MODEL_ZOO["v1.4"], url=None))
    with pytest.raises(CheckpointError, match=f"{re.escape(str(cut))} .*{expected}.*delete it"):
        resolve_weights("v1.4", progress=False)
    (isolated / "GFPGANv1.pth").write_bytes(body[:1000])  # no known size: said when it fails to load
    with pytest.raises(CheckpointError, match="not a readable .*the download cache's copy: delete it"):
        load_generator("v1")
    (isolated / "GFPGANv1.pth").write_bytes(b"<!DOCTYPE html><html>Not Found</html>")  # an error page
    with pytest.raises(CheckpointError, match="it is a web page.*error page") as err:
        load_generator("v1")
    assert str(err.value).count("delete it") == 1, err.value  # one cure, for the cache's copy


def test_without_a_home_folder_downloads_need_gfp_cache_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No HOME and no home folder (some containers): a clear error for what needs the cache, while a
    model found elsewhere still loads (an optional model is then noted as unavailable, see the store)."""
    monkeypatch.delenv("GFP_CACHE_DIR", raising=False)
    monkeypatch.delenv("GFP_WEIGHTS_DIR", raising=False)

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    with pytest.raises(WeightsError, match="no home folder to keep downloaded models in: set GFP_CACHE_DIR"):
        resolve_weights("v1.4")
    folder = save_tiny_generator(tmp_path / "tiny")
    assert resolve_weights(str(folder)) == folder
    from gfp.store import ModelStore, Unavailable

    parser = ModelStore().optional("parsenet")  # the restore goes on without it, noted
    assert isinstance(parser, Unavailable) and "set GFP_CACHE_DIR" in parser.reason


def test_checksum_mismatch_deletes_the_download(monkeypatch: pytest.MonkeyPatch, isolated: Path) -> None:
    body = b"not the official bytes" * 100
    with serve(FileServer(files={"/parsing_parsenet.pth": body})) as server:
        _point_at(monkeypatch, "parsenet", server.url("/parsing_parsenet.pth"), None)
        with pytest.raises(ChecksumMismatchError, match="deleted") as err:
            resolve_weights("parsenet", progress=False)
    assert MODEL_ZOO["parsenet"].sha256 in str(err.value)
    assert hashlib.sha256(body).hexdigest() in str(err.value)
    assert _leftovers(isolated) == []


def test_size_is_checked_when_only_the_size_is_known(monkeypatch: pytest.MonkeyPatch, isolated: Path) -> None:
    body = b"x" * 1000
    with serve(FileServer(files={"/f.pth": body})) as server:
        _point_at(monkeypatch, "realesr-general-x4v3", server.url("/f.pth"), None, sha256=None, size=999)
        with pytest.raises(ChecksumMismatchError, match="1000 bytes, expected 999"):
            resolve_weights("realesr-general-x4v3", progress=False)
    assert _leftovers(isolated) == []


def test_an_unverified_download_that_is_a_web_page_is_not_kept(
    monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    """GFPGANv1.pth has neither a known sha256 nor size: an error page a server sends with status 200 must
    not be cached as it (every later run would load it and fail); a real checkpoint still downloads."""
    page = b"<!DOCTYPE html><html><body>Rate limit exceeded</body></html>"
    body = _checkpoint_bytes({"params_ema": tiny_generator(tiny_config("v1")).state_dict()})
    with serve(FileServer(files={"/page.pth": page, "/v1.pth": body})) as server:
        _point_at(monkeypatch, "v1", server.url("/page.pth"), None)
        with pytest.raises(ChecksumMismatchError, match="no PyTorch checkpoint in it: it is a web page"):
            resolve_weights("v1", progress=False)
        assert _leftovers(isolated) == []
        _point_at(monkeypatch, "v1", server.url("/v1.pth"), None)
        assert resolve_weights("v1", progress=False).read_bytes() == body


def test_interrupted_download_leaves_no_file(monkeypatch: pytest.MonkeyPatch, isolated: Path) -> None:
    body = bytes(range(256)) * 4096
    with serve(FileServer(files={"/x2.pth": body}, truncate={"/x2.pth": len(body) // 3})) as server:
        _point_at(monkeypatch, "RealESRGAN_x2plus", server.url("/x2.pth"), body)
        with pytest.raises(DownloadError, match="interrupted") as err:
            resolve_weights("RealESRGAN_x2plus", progress=False)
    assert "RealESRGAN_x2plus.pth" in str(err.value)
    assert _leftovers(isolated) == []  # neither the final name nor a temp file


def test_an_unverified_download_cut_short_without_a_length_is_not_kept(
    monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    """A server that gives no Content-Length ends the body by closing the connection, so a cut looks like
    the end; GFPGANv1.pth has no known sha256 or size to tell, but a zip checkpoint without its end is no
    checkpoint: not kept for every later run to fail on."""
    body = _checkpoint_bytes({"params_ema": tiny_generator(tiny_config("v1")).state_dict()})
    files = {"/cut.pth": body[: len(body) // 2], "/v1.pth": body}
    with serve(FileServer(files=files, unsized=set(files))) as server:
        _point_at(monkeypatch, "v1", server.url("/cut.pth"), None)
        with pytest.raises(ChecksumMismatchError, match="only the start of a PyTorch checkpoint"):
            resolve_weights("v1", progress=False)
        assert _leftovers(isolated) == []
        _point_at(monkeypatch, "v1", server.url("/v1.pth"), None)
        assert resolve_weights("v1", progress=False).read_bytes() == body


def test_a_killed_downloads_temporary_file_is_removed_by_the_next_download(
    monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    """A killed process runs no cleanup: its temporary file would stay in the cache for good. The next
    download of that file removes it, but not one a live download holds (locked) or has just begun, nor the
    temporary file of another name that begins with this one's (RealESRGAN_x2plus.pth.bak)."""
    import os
    import time

    fcntl = pytest.importorskip("fcntl")
    body = bytes(range(256)) * 64
    isolated.mkdir()
    old = time.time() - 3600
    parts = {
        name: isolated / f".RealESRGAN_x2plus.pth.{name}.part"
        for name in ("0dead000", "1111aaaa", "2222bbbb", "bak.3333cccc")
    }
    for name, part in parts.items():
        part.write_bytes(b"half a download")
        if name != "2222bbbb":
            os.utime(part, (old, old))
    with open(parts["1111aaaa"], "rb") as live, serve(FileServer(files={"/x2.pth": body})) as server:
        fcntl.flock(live, fcntl.LOCK_EX)
        _point_at(monkeypatch, "RealESRGAN_x2plus", server.url("/x2.pth"), body)
        assert resolve_weights("RealESRGAN_x2plus", progress=False).read_bytes() == body
    kept = [parts[name].name for name in ("1111aaaa", "2222bbbb", "bak.3333cccc")]
    assert _leftovers(isolated) == sorted([*kept, "RealESRGAN_x2plus.pth"])


def test_a_killed_downloads_temporary_file_is_removed_once_the_cache_has_the_file(
    monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    """A download run again at once after one was killed finds the killed one's file too new to remove, and
    then no download of that file follows: the cache's next use of the file removes it."""
    import os
    import time

    body = bytes(range(256)) * 64
    isolated.mkdir()
    (isolated / "RealESRGAN_x2plus.pth").write_bytes(body)
    part = isolated / ".RealESRGAN_x2plus.pth.0dead000.part"
    part.write_bytes(b"half a download")
    _point_at(monkeypatch, "RealESRGAN_x2plus", _closed_port_url("/x2.pth"), body)
    assert resolve_weights("RealESRGAN_x2plus", progress=False).read_bytes() == body
    assert part.exists()  # new: its writer may be alive
    old = time.time() - 3600
    os.utime(part, (old, old))
    assert resolve_weights("RealESRGAN_x2plus", progress=False).read_bytes() == body
    assert _leftovers(isolated) == ["RealESRGAN_x2plus.pth"]


def test_offline_error_names_the_file_every_place_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolated: Path
) -> None:
    url = _closed_port_url("/GFPGANv1.3.pth")
    _point_at(monkeypatch, "v1.3", url, None)
    (tmp_path / "mine").mkdir()  # (a folder that is missing is said to be missing: see test_cli)
    monkeypatch.setenv("GFP_WEIGHTS_DIR", str(tmp_path / "mine"))
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weights("v1.3", progress=False)
    message = str(err.value)
    for needed in (
        "GFPGANv1.3.pth",
        str(tmp_path / "mine" / "GFPGANv1.3.pth"),
        str(isolated / "GFPGANv1.3.pth"),
        url,
        "GFP_WEIGHTS_DIR",
        "weights_dir",
        "path",
    ):
        assert needed in message, needed
    assert _leftovers(isolated) == []


def test_a_cache_that_is_a_file_is_said_and_no_download_is_tried(
    monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    """GFP_CACHE_DIR naming a file: it was called a missing file in it, a download was made and failed,
    and the error said to copy the weights to that file."""
    isolated.write_bytes(b"not a folder")
    with serve(FileServer(files={"/v1.3.pth": b"never sent"})) as server:
        _point_at(monkeypatch, "v1.3", server.url("/v1.3.pth"), None)
        with pytest.raises(WeightsNotFoundError) as err:
            resolve_weights("v1.3", progress=False)
        assert server.requests == []
    message = str(err.value)
    assert f"{isolated} is a file, not a folder" in message and "not tried" in message
    assert f"copy it to {isolated}" not in message and "copy it to a folder GFP_CACHE_DIR names" in message


def test_a_cache_that_cannot_be_searched_is_passed_over(
    monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    """GFP_CACHE_DIR naming a folder the user may not search: looking for a file in it raised PermissionError,
    not a WeightsError, so a missing optional model (the face parser) failed every photo."""
    isolated.mkdir()
    is_file = Path.is_file

    def not_searchable(path: Path) -> bool:  # as a folder without execute permission answers stat
        if isolated in path.parents:
            raise PermissionError(13, "Permission denied", str(path))
        return is_file(path)

    monkeypatch.setattr(Path, "is_file", not_searchable)
    _point_at(monkeypatch, "v1.3", _closed_port_url("/v1.3.pth"), None)
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weights("v1.3", progress=False)
    assert f"{isolated / MODEL_ZOO['v1.3'].file_name} cannot be looked at (" in str(err.value)


def test_http_error_is_reported_as_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(FileServer()) as server:
        _point_at(monkeypatch, "v1", server.url("/missing.pth"), None)
        with pytest.raises(WeightsNotFoundError, match="HTTP 404"):
            resolve_weights("v1", progress=False)


# --- local resolution ---------------------------------------------------------------------------------


def test_weights_dir_argument_beats_env_which_beats_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolated: Path
) -> None:
    _point_at(monkeypatch, "v1.4", _closed_port_url("/never"), None, size=None)  # any size goes
    folders = {name: tmp_path / name for name in ("arg", "env")}
    for folder in [*folders.values(), isolated]:
        folder.mkdir()
        (folder / "GFPGANv1.4.pth").write_bytes(b"x")
    monkeypatch.setenv("GFP_WEIGHTS_DIR", str(folders["env"]))
    assert resolve_weights("v1.4", weights_dir=folders["arg"]) == folders["arg"] / "GFPGANv1.4.pth"
    assert resolve_weights("GFPGANv1.4.pth", weights_dir=folders["arg"]) == folders["arg"] / "GFPGANv1.4.pth"
    assert resolve_weights("v1.4") == folders["env"] / "GFPGANv1.4.pth"
    monkeypatch.delenv("GFP_WEIGHTS_DIR")
    assert resolve_weights("v1.4") == isolated / "GFPGANv1.4.pth"


def test_explicit_paths_and_unknown_names(tmp_path: Path) -> None:
    ckpt = tmp_path / "anything.pth"
    ckpt.write_bytes(b"x")
    assert resolve_weights(str(ckpt)) == ckpt
    assert resolve_weights(ckpt) == ckpt
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve_weights(tmp_path / "missing.pth")
    with pytest.raises(
        WeightsNotFoundError, match="unknown model .v9.*generator: v1.4, v1.3, v1.2, v1; detector: "
    ):
        resolve_weights("v9")
    url = "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth"
    with pytest.raises(WeightsNotFoundError, match=re.escape(url) + ": a URL is not downloaded as a model"):
        resolve_weights(url)  # once "weights file https:/github.com/... does not exist"


# --- generators ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "multiplier", "out_size"), [("v1", 1, 64), ("clean", 1, 64), ("clean", 2, 64), ("clean", 2, 128)]
)
def test_load_generator_recognises_each_official_layout(
    tmp_path: Path, arch: str, multiplier: int, out_size: int
) -> None:
    config = tiny_config(arch, multiplier, out_size)
    original = tiny_generator(config)
    path = tmp_path / "trained.pth"
    torch.save({"params_ema": original.state_dict()}, path)
    generator, found = load_generator(str(path))
    assert found == config
    assert not generator.training
    loaded = generator.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in original.state_dict().items())


def test_params_ema_is_preferred_over_params(tmp_path: Path) -> None:
    config = tiny_config()
    ema, raw = tiny_generator(config, seed=1).state_dict(), tiny_generator(config, seed=2).state_dict()
    key = "final_linear.weight"
    assert not torch.equal(ema[key], raw[key])
    torch.save({"params": raw, "params_ema": ema}, tmp_path / "both.pth")
    torch.save({"params": raw}, tmp_path / "raw.pth")
    assert torch.equal(load_generator(tmp_path / "both.pth")[0].state_dict()[key], ema[key])
    assert torch.equal(load_generator(tmp_path / "raw.pth")[0].state_dict()[key], raw[key])


def test_plain_safetensors_file_is_recognised(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    config = tiny_config("v1")
    save_file(tiny_generator(config).state_dict(), tmp_path / "g.safetensors")
    assert load_generator(tmp_path / "g.safetensors")[1] == config


def test_weights_that_do_not_fit_are_said_in_one_short_line(tmp_path: Path) -> None:
    """torch's refusal names every key (46 KB for int tensors): the error counts them and names the first
    of each kind instead. A config file's null is named too, not a comparison of None with an int."""
    import json

    from safetensors.torch import load_file, save_file

    def variant(name: str, change) -> Path:  # noqa: ANN001
        folder = save_tiny_generator(tmp_path / name)
        save_file(change(load_file(folder / "model.safetensors")), folder / "model.safetensors")
        return folder

    cases = {
        variant("ints", lambda sd: {k: v.to(torch.int32) for k, v in sd.items()}): (
            r"\d+ tensor\(s\) not copyable \(first conv_body_first.weight: Only Tensors of floating point"
        ),
        variant("renamed", lambda sd: {k + "x": v for k, v in list(sd.items())[:40]}): (
            r"\d+ missing key\(s\) \(conv_body_first.weight, conv_body_first.bias, .*\); 40 unexpected"
        ),
        variant("cut", lambda sd: sd | {"conv_body_first.bias": sd["conv_body_first.bias"][:1]}): (
            r"1 tensor\(s\) of another shape \(first conv_body_first.bias: torch.Size\(\[1\]\) in the file, "
        ),
    }
    for folder, message in cases.items():
        with pytest.raises(CheckpointError, match=message) as err:
            load_generator(str(folder))
        assert len(str(err.value)) < 600 and "\n" not in str(err.value), folder.name
    folder = save_tiny_generator(tmp_path / "null")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"channel_multiplier": None}))
    with pytest.raises(CheckpointError, match="channel_multiplier must be a whole number, got None"):
        load_generator(str(folder))


def test_unknown_layout_is_rejected_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "detector.pth"
    torch.save({"body.conv1.weight": torch.zeros(8, 3, 3, 3)}, path)
    with pytest.raises(UnknownArchitectureError, match="detector.pth.*conv_body_first"):
        load_generator(path)


@pytest.mark.parametrize(
    ("name", "what"),
    [("retinaface_mobile0.25", "RetinaFace detector"), ("realesr-animevideov3", "Real-ESRGAN upsampler")],
)
def test_a_registered_networks_file_given_as_the_generator_is_named(
    tmp_path: Path, name: str, what: str
) -> None:
    """A detector or upsampler file given as the model (-v, --model): the error says what it is."""
    path = tmp_path / MODEL_ZOO[name].file_name
    torch.save(registry.build(MODEL_ZOO[name]).state_dict(), path)
    family = registry.family_of(MODEL_ZOO[name]).name
    said = f"{path.name}: not a GFPGAN generator: it is a {what} file (family {family})"
    with pytest.raises(UnknownArchitectureError, match=re.escape(said) + "$"):
        load_generator(path)


def test_zoo_name_loads_the_zoo_layout_and_rejects_another(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tiny_config("clean", 2)
    torch.save({"params_ema": tiny_generator(config).state_dict()}, tmp_path / "GFPGANv1.4.pth")
    with pytest.raises(CheckpointError, match="is not GFPGAN v1.4"):
        load_generator("1.4", weights_dir=tmp_path)
    monkeypatch.setitem(MODEL_ZOO, "v1.4", dataclasses.replace(MODEL_ZOO["v1.4"], config=config))
    assert load_generator("1.4", weights_dir=tmp_path)[1] == config


# --- published format and the Hub ---------------------------------------------------------------------


def test_save_pretrained_round_trip(tmp_path: Path) -> None:
    config = tiny_config("clean", 2, 128)
    original = tiny_generator(config)
    folder = save_pretrained(original, config, tmp_path / "export", card="# my model\n")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    meta = json.loads((folder / "config.json").read_text())
    assert meta["format"] == "gfp-generator" and meta["format_version"] == 1 and meta["out_size"] == 128
    generator, found = load_generator(folder)
    assert found == config and not generator.training
    loaded = generator.state_dict()
    assert loaded.keys() == original.state_dict().keys()  # noise buffers included
    assert all(torch.equal(loaded[k], v) for k, v in original.state_dict().items())


def test_our_safetensors_file_out_of_its_folder_keeps_a_layout_its_weights_do_not_show(
    tmp_path: Path,
) -> None:
    """input_is_latent has no weights of its own: -v FOLDER/model.safetensors (or the file copied out of its
    folder) must load the layout the folder's config.json says, from the config the file carries, not the
    default one that computes other faces with exit 0."""
    config = dataclasses.replace(tiny_config(), input_is_latent=False)
    assert detect_config(tiny_generator(config).state_dict()) != config  # the weights alone cannot tell
    folder = save_pretrained(tiny_generator(config), config, tmp_path / "export")
    alone = tmp_path / "elsewhere" / "mine.safetensors"
    alone.parent.mkdir()
    alone.write_bytes((folder / "model.safetensors").read_bytes())
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    reference, _ = load_generator(folder)
    for path in (folder / "model.safetensors", alone):
        generator, found = load_generator(path)
        assert found == config, path
        with torch.no_grad():
            assert torch.equal(generator(x)[0], reference(x)[0]), path


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"arch": "clean"}, "not a gfp-generator config"),
        ({"format": "gfp-generator", "format_version": 9}, "newer"),
    ],
)
def test_foreign_or_newer_config_is_rejected(tmp_path: Path, meta: dict, message: str) -> None:
    folder = save_pretrained(tiny_generator(tiny_config()), tiny_config(), tmp_path / "m")
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message):
        load_generator(folder)


def _hub_files(folder: Path, repo: str) -> dict[str, bytes]:
    return {f"/{repo}/resolve/main/{p.name}": p.read_bytes() for p in folder.iterdir()}


def test_hub_repo_downloads_through_the_hf_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    config = tiny_config("v1")
    published = save_pretrained(tiny_generator(config), config, tmp_path / "pub")
    with serve(FileServer(files=_hub_files(published, "someone/tiny-gfpgan"))) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.base_url)
        generator, found = load_generator("someone/tiny-gfpgan")
        weights_path = "/someone/tiny-gfpgan/resolve/main/model.safetensors"
        assert server.count(weights_path) == 1
        assert (tmp_path / "hf" / "models--someone--tiny-gfpgan").is_dir()
        assert found == config
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
        assert load_generator("someone/tiny-gfpgan")[1] == config  # served from the HF cache
        assert server.count(weights_path) == 1


def test_hub_repo_missing_everywhere_explains_how_to_provide_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    with serve(FileServer()) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.base_url)
        with pytest.raises(WeightsNotFoundError) as err:
            resolve_weights("someone/absent", weights_dir=tmp_path / "w", progress=False)
    message = str(err.value)
    for needed in (
        "someone/absent",
        str(tmp_path / "w" / "someone" / "absent"),
        server.base_url,
        "hf download",
    ):
        assert needed in message, needed


def test_a_hub_repo_without_a_network_is_looked_up_in_the_cache_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """When the Hub's host has no address (no network), the library is not left to retry each file five
    times (about 50 s of "Retrying in 8s"): only its cache is asked, and the error says why."""
    import huggingface_hub
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.invalid")  # .invalid never resolves (RFC 2606)
    asked: list[bool] = []
    real = huggingface_hub.hf_hub_download

    def download(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        asked.append(kwargs.get("local_files_only", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(WeightsNotFoundError, match=r"no connection \(cannot look up hub.invalid\)"):
        resolve_weights("someone/absent", progress=False)
    assert asked == [True]


def test_invalid_hub_repo_id_is_reported_not_raised_raw() -> None:
    with pytest.raises(WeightsNotFoundError, match="someone/a--b.*HFValidationError"):
        resolve_weights("someone/a--b", progress=False)


def test_hub_repo_in_weights_dir_needs_no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_ENDPOINT", _closed_port_url(""))
    config = tiny_config()
    save_pretrained(tiny_generator(config), config, tmp_path / "w" / "someone" / "tiny")
    monkeypatch.setenv("GFP_WEIGHTS_DIR", str(tmp_path / "w"))
    assert load_generator("someone/tiny")[1] == config


# --- devices ------------------------------------------------------------------------------------------


def test_select_device() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device().type in {"cpu", "cuda", "mps"}
    assert select_device("auto") == select_device(None)
    for bad in ("gpu0", "tpu", "xla"):
        with pytest.raises(ValueError, match="device"):
            select_device(bad)
    with pytest.raises(ValueError, match="CUDA"):
        select_device(f"cuda:{torch.cuda.device_count()}")


def test_load_network_places_helper_networks_and_rejects_misfits(tmp_path: Path) -> None:
    source = torch.nn.Conv2d(3, 4, 3)
    torch.save({"params": source.state_dict()}, tmp_path / "conv.pth")
    net = load_network(
        torch.nn.Conv2d(3, 4, 3), tmp_path / "conv.pth", placement=Placement.decide("cpu", half=True)
    )
    assert torch.equal(net.weight, source.weight)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert net.weight.dtype == torch.float32  # float16 is only used off the CPU
    with pytest.raises(CheckpointError, match="does not fit Conv2d"):
        load_network(torch.nn.Conv2d(3, 8, 3), tmp_path / "conv.pth")


def test_placement_is_decided_by_select_device_and_narrowed_per_network() -> None:
    with pytest.raises(ValueError, match="CUDA"):
        Placement.decide(f"cuda:{torch.cuda.device_count()}")
    cpu = Placement.decide("cpu", half=True, bf16=True, backend="torch")
    assert cpu.dtype == torch.float32 and cpu.bf16  # float16 only off the CPU
    gpu = Placement(torch.device("cuda"), torch.float16)  # as decided on a GPU with half
    f32_only = registry.Supports(precisions=(torch.float32,))
    assert gpu.for_model(f32_only).dtype == torch.float32
    assert gpu.for_model(registry.Supports(precisions=registry.HALF_OK)).dtype == torch.float16
    assert not cpu.for_model(registry.Supports(precisions=registry.HALF_OK)).bf16
    both = (registry.Supports(precisions=registry.BF16_OK), f32_only)
    assert not cpu.for_model(*both).bf16  # networks run together: the precision all of them take
    net = prepare_for_inference(torch.nn.Linear(2, 2), cpu.for_model(f32_only))
    assert not net.training and net.weight.dtype == torch.float32


@pytest.mark.parametrize(("arch", "half"), [("clean", False), ("clean", True), ("v1", False)])
def test_generators_load_without_random_init_and_compute_what_was_saved(
    tmp_path: Path, arch: str, half: bool
) -> None:
    """Built without random fills and given the file's tensors: every tensor real, float32, same function
    (fp16 files are cast up; the v1 layout's resampling kernels, absent from files, are built normally)."""
    config = tiny_config(arch)
    saved = tiny_generator(config, seed=3).eval()
    if half:
        saved.load_state_dict({k: v.half().float() for k, v in saved.state_dict().items()})
        folder = save_pretrained(copy.deepcopy(saved).half(), config, tmp_path / "model")  # as export --half
    else:
        folder = tmp_path / "model.pth"
        torch.save({"params_ema": saved.state_dict()}, folder)
    rng = torch.get_rng_state()
    net, _ = load_generator(folder)
    assert torch.equal(torch.get_rng_state(), rng) == (arch == "clean")  # v1 is built again, normally
    tensors = [*net.parameters(), *net.buffers()]
    assert not any(t.is_meta for t in tensors) and {t.dtype for t in tensors} == {torch.float32}
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(net(x)[0], saved(x)[0])


def test_load_model_takes_the_weights_without_random_initialisation(tmp_path: Path) -> None:
    from gfp.archs.parsenet import ParseNet
    from gfp.archs.retinaface import build_retinaface

    torch.manual_seed(0)
    nets = {"parsenet": ParseNet(), "retinaface_mobile0.25": build_retinaface("mobile0.25")}
    for name, saved in nets.items():
        torch.save(saved.state_dict(), tmp_path / registry.MODEL_ZOO[name].file_name)
    for name, saved in nets.items():
        rng = torch.get_rng_state()
        net = loading.load_model(name, tmp_path)
        assert torch.equal(torch.get_rng_state(), rng), name  # no random number was drawn
        for (key, got), expected in zip(net.state_dict().items(), saved.state_dict().values(), strict=True):
            assert torch.equal(got, expected), key


def test_loading_the_pipeline_networks_imports_no_oracle_package(tmp_path: Path) -> None:
    """Building networks without their random fills must not go through the meta device either: its first
    normal_ or division imports torch._dynamo (1.6 s), as torchvision, facexlib and basicsr cost more."""
    import subprocess
    import sys

    from gfp.archs.parsenet import ParseNet
    from gfp.archs.retinaface import build_retinaface

    torch.save(ParseNet().state_dict(), tmp_path / registry.MODEL_ZOO["parsenet"].file_name)
    detector = registry.MODEL_ZOO["retinaface_resnet50"].file_name
    torch.save(build_retinaface("resnet50").state_dict(), tmp_path / detector)
    torch.save(registry.build(registry.MODEL_ZOO["realesr-general-x4v3"]).state_dict(), tmp_path / "bg.pth")
    torch.save({"params_ema": tiny_generator(tiny_config(), seed=0).state_dict()}, tmp_path / "gen.pth")
    code = (
        "import sys; from gfp import loading; w = sys.argv[1]; "
        "loading.load_generator(w + '/gen.pth'); loading.read_generator(w + '/gen.pth'); "
        "[loading.load_model(n, w) for n in ('parsenet', 'retinaface_resnet50', w + '/bg.pth')]; "
        "print(*(m in sys.modules for m in ('torch._dynamo', 'torchvision', 'facexlib', 'basicsr')))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False"] * 4


def test_unfilled_skips_random_fills_in_its_own_thread_only() -> None:
    import threading

    from gfp.archs.unfilled import unfilled

    inside, leave = threading.Event(), threading.Event()
    drawn: list[torch.Tensor] = []

    def build_unfilled() -> None:
        with unfilled():
            rng = torch.get_rng_state()
            conv = torch.nn.Conv2d(3, 8, 3)  # kaiming_uniform_ and uniform_ skipped
            drawn.append(torch.randn(4))  # a random factory: uninitialised instead
            assert torch.equal(torch.get_rng_state(), rng) and conv.weight.shape == (8, 3, 3, 3)
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=build_unfilled)
    thread.start()
    assert inside.wait(10)
    torch.manual_seed(0)
    here = torch.randn(4)  # this thread still draws while the other is inside
    leave.set()
    thread.join()
    torch.manual_seed(0)
    assert torch.equal(here, torch.randn(4)) and len(drawn) == 1


def test_the_conversion_mode_is_checked_only_where_openvino_uses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from gfp.store import CONVERT_ENV, ModelStore

    monkeypatch.setenv(CONVERT_ENV, "bogus")
    assert ModelStore(placement=Placement(backend="torch")).placement.backend == "torch"
    with pytest.raises(ValueError, match=r"mode 'bogus' \(env GFP_OPENVINO_CONVERT\): use background"):
        ModelStore(placement=Placement(backend="openvino"))
    with pytest.raises(ValueError, match="unknown conversion mode 'later': use background or now"):
        ModelStore(placement=Placement(backend="openvino"), convert="later")


@pytest.mark.parametrize("backend", ["torch", "openvino"])
@pytest.mark.parametrize("published", [False, True], ids=["pth", "safetensors"])
def test_a_loaded_generator_keeps_its_weights_when_its_file_is_rewritten_in_place(
    tmp_path: Path, backend: str, published: bool
) -> None:
    """`cp new.pth live.pth` rewrites the file in place: a network holding memory-mapped pages of it would
    change its weights (or die of SIGBUS, were the file cut shorter)."""
    from gfp.store import ModelStore

    config = tiny_config()
    if published:
        spec = save_tiny_generator(tmp_path / "live", config, seed=0)
        live = spec / "model.safetensors"
        other = save_tiny_generator(tmp_path / "new", config, seed=1) / "model.safetensors"
    else:
        spec = live = tmp_path / "live.pth"
        other = tmp_path / "new" / "live.pth"  # (torch.save records the file's name)
        other.parent.mkdir()
        torch.save({"params_ema": tiny_generator(config, seed=0).state_dict()}, live)
        torch.save({"params_ema": tiny_generator(config, seed=1).state_dict()}, other)
    assert live.stat().st_size == other.stat().st_size  # same layout: rewritten without a size change
    net = ModelStore(placement=Placement(backend=backend)).generator(spec).run
    x = torch.rand(1, 3, config.out_size, config.out_size) * 2 - 1
    before = net(x)[0]
    with open(live, "r+b") as f:
        f.write(other.read_bytes())
    assert torch.equal(net(x)[0], before)


def test_a_link_pointed_elsewhere_later_builds_no_second_network(tmp_path: Path) -> None:
    """Specs are resolved once per store, and so are the real paths networks are kept under: `ln -sfn new
    live` under a running app kept the old network and built a second one beside it."""
    from gfp.store import ModelStore

    link = tmp_path / "live"
    link.symlink_to(save_tiny_generator(tmp_path / "a", seed=0))
    store = ModelStore(placement=Placement(backend="torch"))
    first = store.generator(str(link))
    link.unlink()
    link.symlink_to(save_tiny_generator(tmp_path / "b", seed=1))
    assert store.generator(str(link)) is first
    assert sum(key[0] == "generator" for key in store._items) == 1
