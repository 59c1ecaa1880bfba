"""Benchmark our background tiler (gfp.background) against realesrgan's RealESRGANer.

Both run the same network on the same image with the same tile settings. Time: one subprocess holds
both, warms each up, then times them in alternation so both see the same background load (this
machine may be shared); the median is printed with the ratio RealESRGANer / ours (> 1: ours is
faster). Memory: one subprocess per implementation, peak above the level before its warm-up
(resident memory sampled every ms on CPU, allocated device memory on CUDA). Also printed: the largest
output difference between the two.

    python benchmarks/background.py                      # real realesr-animevideov3, CPU
    python benchmarks/background.py --model RealESRGAN_x2plus --size 96x72   # seeded random weights
    python benchmarks/background.py --device cuda --size 1024x768 --tiles 0 400 --alpha

Weights: realesr-animevideov3 from GFP_TEST_DATA/weights (or ../shared/data/weights); other zoo models
get seeded random weights (speed and memory do not depend on the values).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ("realesrgan", "ours")
sys.path.insert(0, str(ROOT))


def _data_dir() -> Path:
    return Path(os.environ.get("GFP_TEST_DATA") or ROOT.parent / "shared" / "data")


def _network(model: str, state_file: Path):
    """The zoo network with real weights when available offline, else seeded random ones (saved once)."""
    import torch

    from gfp import registry

    net = registry.build(registry.MODEL_ZOO[model])
    real = _data_dir() / "weights" / f"{model}.pth"
    if real.is_file():
        state = torch.load(real, map_location="cpu", weights_only=True)
        net.load_state_dict(state.get("params_ema", state.get("params", state)), strict=True)
    else:
        torch.manual_seed(0)
        for p in net.parameters():  # small weights keep the random network's output in a sane range
            torch.nn.init.normal_(p, std=0.02)
    if not state_file.exists():
        torch.save({"params": net.state_dict()}, state_file)
    return net.eval()


def _image(size: str, alpha: bool) -> np.ndarray:
    import cv2

    w, h = (int(v) for v in size.lower().split("x"))
    photos = sorted((_data_dir() / "photos").glob("*.jpg"))
    if photos:
        img = cv2.resize(cv2.imread(str(photos[0])), (w, h), interpolation=cv2.INTER_AREA)
    else:
        rng = np.random.default_rng(0)
        img = cv2.resize(rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8), (w, h))
    if alpha:
        img = np.dstack([img, np.linspace(0, 255, w, dtype=np.uint8)[None].repeat(h, 0)])
    return img


class _RssPeak:
    """Peak resident memory while inside the ``with`` block, sampled every millisecond (CPU runs).

    ``ru_maxrss`` cannot be used: loading the model already set a higher peak than some runs reach.
    """

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self._page

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    def __enter__(self) -> _RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def _runner(impl: str, args: argparse.Namespace, device) -> Callable[[], np.ndarray]:
    """A zero-argument function upscaling the benchmark image with one implementation."""
    from gfp import registry
    from gfp.background import BackgroundUpsampler
    from gfp.devices import Placement

    scale = registry.MODEL_ZOO[args.model].supports.scale
    net = _network(args.model, Path(args.state_file))
    img = _image(args.size, args.alpha)
    if impl == "ours":
        up = BackgroundUpsampler(
            {scale: net}, tile=args.tile, pre_pad=args.pre_pad, placement=Placement(device)
        )
        return lambda: up.upsample(img, args.outscale)
    from realesrgan import RealESRGANer

    ref = RealESRGANer(
        scale=scale,
        model_path=args.state_file,
        model=net,
        tile=args.tile,
        tile_pad=10,
        pre_pad=args.pre_pad,
        device=device,
    )

    def run() -> np.ndarray:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per tile
            return ref.enhance(img, outscale=args.outscale)[0]

    return run


def worker(args: argparse.Namespace) -> None:
    """Prints a JSON line. "time": both implementations in this process, warmed up, then timed in
    alternation (so both see the same background load). "ours"/"realesrgan": peak memory of one run.
    """
    import torch

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.worker == "time":
        runs = {impl: _runner(impl, args, device) for impl in IMPLS}
        outputs = {impl: run() for impl, run in runs.items()}  # warm-up: kernels chosen per shape
        times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
        for _ in range(args.repeat):
            for impl, run in runs.items():
                start = time.perf_counter()
                run()
                if cuda:
                    torch.cuda.synchronize()
                times[impl].append(time.perf_counter() - start)
        a, b = (outputs[impl] for impl in IMPLS)
        diff = int(np.abs(a.astype(np.int64) - b).max()) if a.shape == b.shape else f"{a.shape} vs {b.shape}"
        print(json.dumps({"times": times, "diff": diff}))
        return
    run = _runner(args.worker, args, device)
    # Memory counts from before the warm-up, so what an implementation keeps between calls
    # (RealESRGANer holds the last input and output on itself) counts as well.
    base = torch.cuda.memory_allocated(device) if cuda else _RssPeak().peak
    run()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    with _RssPeak() as rss:
        run()
        if cuda:
            torch.cuda.synchronize()
    print(json.dumps({"peak": (torch.cuda.max_memory_allocated(device) if cuda else rss.peak) - base}))


def _measure(args: argparse.Namespace, what: str, tile: int, state_file: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", what, "--tile", str(tile), "--state-file", str(state_file)]
    cmd += ["--model", args.model, "--size", args.size, "--device", args.device, "--repeat", str(args.repeat)]
    cmd += ["--outscale", str(args.outscale), "--pre-pad", str(args.pre_pad)]
    cmd += ["--alpha"] if args.alpha else []
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{what} tile={tile} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="realesr-animevideov3")
    parser.add_argument("--size", default="192x144", help="input WxH")
    parser.add_argument("--tiles", type=int, nargs="+", default=[0, 64])
    parser.add_argument("--pre-pad", type=int, default=0)
    parser.add_argument("--outscale", type=float, default=None, help="default: the model's native scale")
    parser.add_argument("--alpha", action="store_true", help="BGRA input (the network also runs on alpha)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per implementation")
    parser.add_argument("--worker", choices=["time", *IMPLS], help=argparse.SUPPRESS)
    parser.add_argument("--tile", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--state-file", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import gfp  # noqa: F401  (torchvision shim before realesrgan/basicsr)
    from gfp import registry

    if args.outscale is None:
        args.outscale = float(registry.MODEL_ZOO[args.model].supports.scale)
    if args.worker:
        worker(args)
        return

    print(
        f"model {args.model}, input {args.size}{' BGRA' if args.alpha else ''}, outscale {args.outscale:g}, "
        f"pre_pad {args.pre_pad}, device {args.device}, {args.repeat} run(s) each, torch threads "
        f"{__import__('torch').get_num_threads()}"
    )
    print(
        f"{'tile':>6} {'RealESRGANer s':>15} {'ours s':>10} {'ratio':>7} {'peak MB theirs':>15} "
        f"{'peak MB ours':>13} {'max |diff|':>10}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        state_file = Path(tmp) / "net.pth"
        for tile in args.tiles:
            timed = _measure(args, "time", tile, state_file)
            t_theirs, t_ours = (float(np.median(timed["times"][impl])) for impl in IMPLS)
            m_theirs, m_ours = (_measure(args, impl, tile, state_file)["peak"] / 2**20 for impl in IMPLS)
            print(
                f"{tile:>6} {t_theirs:>15.3f} {t_ours:>10.3f} {t_theirs / t_ours:>7.2f} "
                f"{m_theirs:>15.1f} {m_ours:>13.1f} {timed['diff']!s:>10}"
            )


if __name__ == "__main__":
    main()
