"""Benchmark our background tiler (gfp.background) against realesrgan's RealESRGANer.

Both run the same network on the same image with the same tile settings; each measurement runs in a
fresh subprocess so that peak memory is its own: peak RSS growth over the loaded state (CPU) or peak
allocated device memory (CUDA). Prints wall time per run, the ratio RealESRGANer / ours (> 1: ours is
faster), peak memory, and the largest output difference between the two.

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
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _data_dir() -> Path:
    return Path(os.environ.get("GFP_TEST_DATA") or ROOT.parent / "shared" / "data")


def _network(model: str, state_file: Path):
    """The zoo network with real weights when available offline, else seeded random ones (saved once)."""
    import torch

    from gfp.background import BACKGROUND_MODELS

    net = BACKGROUND_MODELS[model].build()
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


def _peak_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(args: argparse.Namespace) -> None:
    """One implementation, one setting, in this process; prints a JSON line."""
    import torch

    from gfp.background import BACKGROUND_MODELS, BackgroundUpsampler

    device = torch.device(args.device)
    scale = BACKGROUND_MODELS[args.model].scale
    net = _network(args.model, Path(args.state_file))
    img = _image(args.size, args.alpha)
    if args.worker == "ours":
        up = BackgroundUpsampler(
            {scale: net}, tile=args.tile, tile_pad=10, pre_pad=args.pre_pad, device=device
        )
        up.network(scale)

        def run() -> np.ndarray:
            return up.upsample(img, args.outscale)
    else:
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

    times = []
    if device.type == "cuda":
        run()  # warm-up (cuDNN autotuning, allocator); on CPU the first run is measured like the rest
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    base = 0 if device.type == "cuda" else _peak_bytes(device)
    for _ in range(args.repeat):
        start = time.perf_counter()
        out = run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = _peak_bytes(device) - base
    np.save(args.output, out)
    print(json.dumps({"times": times, "peak": peak}))


def _measure(args: argparse.Namespace, impl: str, tile: int, state_file: Path, output: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--tile", str(tile), "--state-file", str(state_file)]
    cmd += ["--output", str(output), "--model", args.model, "--size", args.size, "--device", args.device]
    cmd += ["--outscale", str(args.outscale), "--repeat", str(args.repeat), "--pre-pad", str(args.pre_pad)]
    cmd += ["--alpha"] if args.alpha else []
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{impl} tile={tile} failed:\n{done.stderr[-3000:]}")
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
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--worker", choices=["ours", "realesrgan"], help=argparse.SUPPRESS)
    parser.add_argument("--tile", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--state-file", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import gfp  # noqa: F401  (torchvision shim before realesrgan/basicsr)
    from gfp.background import BACKGROUND_MODELS

    if args.outscale is None:
        args.outscale = float(BACKGROUND_MODELS[args.model].scale)
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
            theirs = _measure(args, "realesrgan", tile, state_file, Path(tmp) / "theirs.npy")
            ours = _measure(args, "ours", tile, state_file, Path(tmp) / "ours.npy")
            a, b = np.load(Path(tmp) / "theirs.npy"), np.load(Path(tmp) / "ours.npy")
            diff = (
                int(np.abs(a.astype(np.int64) - b).max())
                if a.shape == b.shape
                else f"shape {a.shape}!={b.shape}"
            )
            t_theirs, t_ours = float(np.median(theirs["times"])), float(np.median(ours["times"]))
            print(
                f"{tile:>6} {t_theirs:>15.3f} {t_ours:>10.3f} {t_theirs / t_ours:>7.2f} "
                f"{theirs['peak'] / 2**20:>15.1f} {ours['peak'] / 2**20:>13.1f} {diff!s:>10}"
            )


if __name__ == "__main__":
    main()
