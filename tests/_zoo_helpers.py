"""Test helpers: where the shared data is, tiny models, and a local server standing in for GitHub releases
and the HF Hub. (Fixtures built on them live in conftest.py.)"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

from gfp.archs import GeneratorConfig, build_generator
from gfp.loading import save_pretrained

HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def shared_data_dir() -> Path:
    """The offline data: ``$GFP_TEST_DATA``, else ``../shared/data`` beside the project (may be absent)."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    return Path(os.environ.get("GFP_TEST_DATA") or default)


def tiny_config(arch: str = "clean", channel_multiplier: int = 1, out_size: int = 64) -> GeneratorConfig:
    """A generator config small enough to build and save in a fraction of a second on CPU."""
    return GeneratorConfig(
        arch=arch,
        out_size=out_size,
        channel_multiplier=channel_multiplier,
        narrow=0.125,
        num_style_feat=32,
        num_mlp=2,
    )


def tiny_generator(config: GeneratorConfig, seed: int = 0) -> torch.nn.Module:
    """A seeded, randomly initialised generator for ``config``."""
    torch.manual_seed(seed)
    return build_generator(config)


def save_tiny_generator(folder: Path, config: GeneratorConfig | None = None, seed: int = 0) -> Path:
    """The seeded tiny generator in our published format at ``folder`` (what ``-v``/``--model`` take)."""
    config = config or tiny_config()
    return save_pretrained(tiny_generator(config, seed), config, folder)


@dataclass
class FileServer:
    """Serves ``files`` (URL path → bytes); records every request; can cut a response short.

    ``truncate[path] = n`` sends the full Content-Length but only ``n`` bytes, then drops the connection;
    paths in ``unsized`` are sent without a Content-Length (the body ends where the connection closes).
    Every response carries the headers ``hf_hub_download`` needs (X-Repo-Commit, ETag), so the same server
    also plays a Hugging Face Hub endpoint for ``/{repo}/resolve/{revision}/{file}`` paths.
    """

    files: dict[str, bytes] = field(default_factory=dict)
    truncate: dict[str, int] = field(default_factory=dict)
    unsized: set[str] = field(default_factory=set)
    requests: list[tuple[str, str]] = field(default_factory=list)
    base_url: str = ""

    def url(self, path: str) -> str:
        return self.base_url + path

    def count(self, path: str, method: str = "GET") -> int:
        return sum(1 for m, p in self.requests if m == method and p == path)


def _handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _head(self) -> bytes | None:
            server.requests.append((self.command, self.path))
            body = server.files.get(self.path)
            if body is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            self.send_response(200)
            if self.path not in server.unsized:
                self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
            self.send_header("X-Repo-Commit", HUB_COMMIT)
            self.end_headers()
            return body

        def do_HEAD(self) -> None:  # noqa: N802  (http.server API)
            self._head()

        def do_GET(self) -> None:  # noqa: N802  (http.server API)
            body = self._head()
            if body is None:
                return
            cut = server.truncate.get(self.path)
            self.wfile.write(body if cut is None else body[:cut])
            self.wfile.flush()
            if cut is not None:
                self.close_connection = True

    return Handler


@contextmanager
def serve(server: FileServer) -> Iterator[FileServer]:
    """Run ``server`` on 127.0.0.1 (free port) in a thread for the duration of the block."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    httpd.daemon_threads = True
    server.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def save_blind_detector(path: Path) -> Path:
    """A MobileNet-0.25 RetinaFace whose class heads always say "background": it never finds a face."""
    from gfp.registry import build_detector

    torch.manual_seed(0)
    net = build_detector("retinaface_mobile0.25")
    for head in net.ClassHead:
        torch.nn.init.zeros_(head.conv1x1.weight)
        head.conv1x1.bias.data = torch.tensor([10.0, -10.0]).repeat(head.conv1x1.out_channels // 2)
    torch.save(net.state_dict(), path)
    return path
