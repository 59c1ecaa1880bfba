"""Shared fixtures and helpers: offline data, no network, the PyTorch backend, the official fused activation
on CPU, the detector the tests run, weights folders, and the app served for a test module.

Tests import the constants and helpers (``from conftest import MOBILE, make_weights``); the fixtures come
by name.
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest
import torch
from _zoo_helpers import save_blind_detector, save_tiny_generator, shared_data_dir
from torch import Tensor
from torch.nn import functional as F

import gfp  # noqa: F401  (installs the torchvision shim before any test imports basicsr)
from gfp.registry import MODEL_ZOO

if TYPE_CHECKING:
    import gradio_client

DETECTOR = "retinaface_mobile0.25"
"""The face detector the tests run (RetinaFace MobileNet-0.25: small and fast on a CPU)."""
MOBILE = MODEL_ZOO[DETECTOR].file_name
"""Its weights file (detection_mobilenet0.25_Final.pth): the real one is in the shared data."""


@pytest.fixture(autouse=True, scope="session")
def pytorch_backend_by_default() -> Iterator[None]:
    """Tests run the networks in PyTorch, the reference, unless they ask for another backend (the OpenVINO
    tests and the parity test name it; converting every tiny model would only slow the suite down). Set for
    the whole session, so that module-scoped fixtures (the app server) are built with it too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GFP_BACKEND", "torch")
        yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Real offline data (../shared/data); tests that need it skip on a fresh clone without it."""
    path = shared_data_dir()
    if not (path / "README.md").is_file():
        pytest.skip("offline test data not present (set GFP_TEST_DATA or provide ../shared/data)")
    return path


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No downloads: an empty cache, no weights folder from the environment, a network that always fails."""
    monkeypatch.setenv("GFP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GFP_WEIGHTS_DIR", raising=False)

    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("offline test")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


def _reference_fused_leaky_relu(
    x: Tensor, bias: Tensor | None, negative_slope: float = 0.2, scale: float = 2**0.5
) -> Tensor:
    """StyleGAN2's fused op by definition: leaky_relu(x + bias) * sqrt(2)."""
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, negative_slope) * scale


@pytest.fixture
def official_fused_act_on_cpu(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """basicsr's fused bias + leaky ReLU needs a compiled CUDA extension; inside a test, use its formula so
    the official StyleGAN2 layers run on CPU as oracles. Returns ``basicsr.archs.stylegan2_arch``."""
    import basicsr.archs.stylegan2_arch as sg2
    import basicsr.ops.fused_act.fused_act as fused

    monkeypatch.setattr(fused, "fused_leaky_relu", _reference_fused_leaky_relu)
    monkeypatch.setattr(sg2, "fused_leaky_relu", _reference_fused_leaky_relu)
    return sg2


def shared_detector() -> Path | None:
    """The real MobileNet-0.25 weights from the shared data, or None on a fresh clone."""
    path = shared_data_dir() / "weights" / MOBILE
    return path if path.is_file() else None


def make_weights(
    folder: Path, detector: Path | None = None, *, random_detector: bool = False, links: Iterable[Path] = ()
) -> Path:
    """A weights folder for small pipeline runs; returns ``folder``.

    It holds the seeded tiny generator at ``folder / "tiny"`` (published format: what ``-v``/``--model``
    take) and :data:`MOBILE`: a link to ``detector``; without one, a "blind" detector that never finds a
    face, or with ``random_detector`` a seeded random one that finds arbitrary faces. ``links`` are more
    files linked under their own names (not copied).
    """
    folder.mkdir(parents=True, exist_ok=True)
    save_tiny_generator(folder / "tiny")
    if detector is not None:
        (folder / MOBILE).symlink_to(detector)
    elif random_detector:
        from gfp.registry import build_detector

        torch.manual_seed(1)
        torch.save(build_detector(DETECTOR).state_dict(), folder / MOBILE)
    else:
        save_blind_detector(folder / MOBILE)
    for path in links:
        (folder / path.name).symlink_to(path)
    return folder


# --- the app, served -----------------------------------------------------------------------------------

MAX_PIXELS = 30_000
"""The test app's pixel budget: the 160x160 example (25600 px) fits, a 200x200 input is downscaled."""


def free_port() -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """The app served in this process on a free port, as a user or a client sees it.

    Its weights: the tiny generator (offered first, by its folder's name), a model that is never there
    ("gone.pth"), and the real MobileNet-0.25 when the shared data is present, else a seeded random one
    (then face counts are arbitrary, so tests assert sizes, formats and behaviour, not faces).
    """

    def __init__(self, weights: Path, real_detector: bool, **overrides: Any) -> None:
        from gfp.app.settings import AppSettings
        from gfp.app.ui import build_app, launch

        self.weights = weights
        self.real_detector = real_detector
        defaults = {
            "models": (str(weights / "tiny"), str(weights / "gone.pth")),  # the second one is never there
            "weights_dir": str(weights),
            "port": free_port(),
            "device": os.environ.get("GFP_TEST_DEVICE", "cpu"),  # cuda on a lent GPU: the app served there
            "detector": DETECTOR,
            "background": "none",
            "max_pixels": MAX_PIXELS,
        }
        self.settings = AppSettings(**(defaults | overrides))
        self.demo = build_app(self.settings)
        launch(self.demo, self.settings, prevent_thread_lock=True, quiet=True)
        self.url = f"http://127.0.0.1:{self.settings.port}/"

    @property
    def model(self) -> str:
        """The default model as the dropdown and API name it (the tiny generator's folder name)."""
        return Path(self.settings.models[0]).name

    def client(self) -> gradio_client.Client:
        """A fresh gradio_client for this server."""
        import gradio_client

        return gradio_client.Client(self.url, verbose=False)

    def close(self) -> None:
        """Stop serving."""
        self.demo.close()


def start_server(tmp: Path, **overrides: Any) -> Server:
    """Make the weights folder in ``tmp`` and serve the app with ``overrides`` of its settings; the caller
    closes it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    real = shared_detector()
    return Server(make_weights(tmp, real, random_detector=True), real is not None, **overrides)


@pytest.fixture(scope="module")
def server_settings() -> dict[str, Any]:
    """The app settings a test module's server changes from :class:`Server`'s defaults: a module that needs
    others overrides this fixture."""
    return {}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, server_settings: dict[str, Any]) -> Iterator[Server]:
    """The app served for one test module (closed after it), with the module's ``server_settings``."""
    srv = start_server(tmp_path_factory.mktemp("app-weights"), **server_settings)
    yield srv
    srv.close()
