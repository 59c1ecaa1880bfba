"""GPU benchmark, one script for a lent GPU machine; it also runs on a CPU, skipping the CUDA-only parts.

1. Generator: faces/s of ours at each batch size in fp32, bf16 (autocast) and fp16 (half weights, what
   ``--half`` runs; timed only when its output holds: finite and within --min-db of float32), and of the
   official ``GFPGANv1Clean`` at fp32 in the same run. Each precision's cost is printed in dB against
   strict float32 (TF32 off), on the aligned faces of the shared data (faces/lq) when present, clamped to
   [-1, 1] as the pipeline does. Peak CUDA memory per row. Full-size v1.4 layout, seeded random weights
   (speed does not depend on the values), identical on both sides.
   With ``--variants``, the fastest precision that holds (fp16 on CUDA, bf16 on a CPU) is also timed in
   channels-last memory format, with cuDNN autotuning (``cudnn.benchmark``, CUDA only) and under
   ``torch.compile`` (each with its dB), at --variant-batches: the levers for the 600 faces/s target; each
   lever named adds to the ones before it. ``--profile`` prints the kernels that take the time of one batch.
2. Whole photos: photos/s of our ``Restorer`` (fp32, and fp16 on CUDA) and of the official
   ``GFPGANer.enhance`` on the same photos, weights and background network (tests/_official_pipeline.py),
   with the PSNR of each of ours against the official image. Then ``python -m gfp`` over the same photos in
   a new process on the device (``--half`` on CUDA): exit status, time with start-up, PSNR.

The app on the device is checked by its own tests: ``GFP_TEST_DEVICE=cuda python -m pytest -q
tests/test_app.py tests/test_app_video.py`` serves it there and calls it through gradio_client and MCP.

    python benchmarks/gpu.py                                   # cuda if available, else cpu
    python benchmarks/gpu.py --batches 1 8 64 --repeat 5 --json gpu.json
    python benchmarks/gpu.py --device cpu --batches 1 --photos codeformer_04.jpg --background none
    python benchmarks/gpu.py --variants channels_last cudnn_benchmark compile --profile --skip photos

Times are medians of --repeat runs after one warm-up. On a shared machine they are not results.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

import gfp  # noqa: E402, F401  (torchvision shim before basicsr/gfpgan imports)

DEFAULT_PHOTOS = ("codeformer_04.jpg", "codeformer_05.jpg", "gfpgan_10045.png")
GPU_BATCHES = (1, 2, 4, 8, 16, 32, 64)
CPU_BATCHES = (1, 2)
OFFICIAL_CONFIG = dict(
    out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None, fix_decoder=False,
    num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True,
)  # fmt: skip


def generator_forward(generator: torch.nn.Module, x: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """Restored faces as float32, in bf16 autocast when ``bf16`` (the weights stay float32)."""
    from gfp.precision import bf16_autocast

    with torch.inference_mode(), bf16_autocast(bf16, x.device.type):
        image, _ = generator(x, return_rgb=False)
    return image.float()


def _data_dir() -> Path:
    return Path(os.environ.get("GFP_TEST_DATA") or ROOT.parent / "shared" / "data")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], object], repeat: int, device: torch.device) -> float:
    """Median wall time of ``fn`` over ``repeat`` runs after one warm-up run."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _psnr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR over [-1, 1] (peak-to-peak 2) of the clamped images; -inf when ``out`` is not finite."""
    if not torch.isfinite(out).all():
        return -math.inf
    a, b = out.double().clamp(-1, 1), ref.double().clamp(-1, 1)
    mse = torch.mean((a - b) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def _faces(count: int) -> torch.Tensor:
    """``count`` aligned 512-px faces as RGB in [-1, 1]: the shared data's faces/lq, else seeded noise."""
    import cv2

    files = sorted((_data_dir() / "faces" / "lq").glob("*.png"))[:count]
    if not files:
        print("no faces/lq in the shared data: using seeded random inputs")
        return torch.rand(count, 3, 512, 512, generator=torch.Generator().manual_seed(0)) * 2 - 1
    faces = []
    for f in files:
        bgr = cv2.resize(cv2.imread(str(f), cv2.IMREAD_COLOR), (512, 512), interpolation=cv2.INTER_LINEAR)
        faces.append(torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1).float() / 127.5 - 1)
    return torch.stack(faces)


def _generators(device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(ours, official) with the same seeded random weights, eval, on ``device``."""
    from gfpgan.archs.gfpganv1_clean_arch import GFPGANv1Clean

    from gfp.archs import GeneratorConfig, build_generator

    torch.manual_seed(0)
    official = GFPGANv1Clean(**OFFICIAL_CONFIG).eval().requires_grad_(False)
    ours = build_generator(GeneratorConfig()).eval().requires_grad_(False)
    ours.load_state_dict(official.state_dict(), strict=True)
    return ours.to(device), official.to(device)


def _strict_fp32(enabled: bool) -> None:
    """TF32 off (strict float32) or back to PyTorch's defaults for convs and matmuls on CUDA."""
    torch.backends.cudnn.allow_tf32 = not enabled
    torch.backends.cuda.matmul.allow_tf32 = False


def bench_generator(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Precision cost and faces/s of ours (fp32/bf16/fp16) and the official network (fp32)."""
    from gfp.precision import cpu_has_native_bf16

    cuda = device.type == "cuda"
    ours, official = _generators(device)
    half = None
    if cuda:
        import copy

        half = copy.deepcopy(ours).half()
    else:
        print("fp16: skipped (CUDA only: float16 convolutions are not a CPU path)")
        print(f"bf16 on this CPU: {'native' if cpu_has_native_bf16() else 'emulated (slower than fp32)'}")

    runners: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "ours fp32": lambda x: generator_forward(ours, x),
        "ours bf16": lambda x: generator_forward(ours, x, bf16=True),
        "official fp32": lambda x: official(x, return_rgb=False, randomize_noise=False)[0],
    }
    if half is not None:
        runners["ours fp16"] = lambda x: generator_forward(half, x.half())
    faces = _faces(args.precision_faces).to(device)
    with torch.inference_mode():
        _strict_fp32(True)
        ref = torch.cat([generator_forward(ours, faces[i : i + 1]) for i in range(len(faces))])
        _strict_fp32(False)
        print(f"\nprecision cost vs strict fp32 on {len(faces)} face(s), batch 1 (PSNR, [-1, 1] clamped)")
        costs = {}
        for name, run in runners.items():
            out = torch.cat([run(faces[i : i + 1]).float() for i in range(len(faces))])
            costs[name] = _psnr_db(out, ref)
            print(f"  {name:15} {costs[name]:7.2f} dB")
    if half is not None and costs["ours fp16"] < args.min_db:
        print(f"  ours fp16 does not hold (< {args.min_db:g} dB or not finite): not timed")
        del runners["ours fp16"]

    print(f"\n{'generator':15} {'batch':>5} {'s/batch':>9} {'faces/s':>9} {'peak MiB':>9}")
    rows = []
    for name, run in runners.items():
        for batch in args.batches:
            x = faces[torch.arange(batch) % len(faces)]
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                with torch.inference_mode():
                    seconds = _median_time(lambda x=x, run=run: run(x), args.repeat, device)
            except torch.cuda.OutOfMemoryError:
                print(f"{name:15} {batch:>5} out of memory: larger batches skipped")
                break
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else float("nan")
            row = {"net": name, "batch": batch, "seconds": seconds, "faces_per_s": batch / seconds}
            rows.append(row | {"peak_mib": peak, "db_vs_fp32": costs[name]})
            print(f"{name:15} {batch:>5} {seconds:9.4f} {batch / seconds:9.2f} {peak:9.0f}")
            sys.stdout.flush()
    if args.variants:
        rows += bench_variants(args, device, ours, half, faces, ref)
    if args.profile:
        fastest = "ours fp16" if "ours fp16" in runners else "ours bf16"
        profile_generator(args, device, runners[fastest], faces)
    return rows


VARIANTS = ("channels_last", "cudnn_benchmark", "compile")


def _variant_runners(
    args: argparse.Namespace, ours: torch.nn.Module, half: torch.nn.Module | None
) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The fastest precision that holds (fp16 weights on CUDA, else bf16 autocast) with each asked-for
    lever, each on top of the ones before: channels-last memory format, cuDNN autotuning (CUDA only), then
    that network under ``torch.compile``."""
    import copy

    net, tag = (copy.deepcopy(half), "fp16") if half is not None else (copy.deepcopy(ours), "bf16")
    bf16 = half is None
    fmt = torch.contiguous_format

    def forward(net: torch.nn.Module, fmt: torch.memory_format) -> Callable[[torch.Tensor], torch.Tensor]:
        dtype = next(net.parameters()).dtype

        def run(x: torch.Tensor) -> torch.Tensor:
            return generator_forward(net, x.to(dtype=dtype, memory_format=fmt), bf16=bf16)

        return run

    runners = {}
    if "channels_last" in args.variants:
        tag, fmt = f"{tag} CL", torch.channels_last
        for tensor in [*net.parameters(), *net.buffers()]:  # 4-D ones: the modulated weights are 5-D
            if tensor.dim() == 4:
                tensor.data = tensor.data.contiguous(memory_format=fmt)
        runners[f"ours {tag}"] = forward(net, fmt)
    if "cudnn_benchmark" in args.variants and half is None:
        print("cudnn_benchmark: skipped (CUDA only)")
    elif "cudnn_benchmark" in args.variants:
        tag = f"{tag} tuned"
        runners[f"ours {tag}"] = _autotuned(forward(net, fmt))
    if "compile" in args.variants:
        compiled = forward(torch.compile(net, mode=args.compile_mode, dynamic=False), fmt)
        runners[f"ours {tag} compiled"] = _autotuned(compiled) if tag.endswith("tuned") else compiled
    return runners


def _autotuned(run: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``run`` with cuDNN timing its convolution algorithms for each new input shape and keeping the
    fastest (``torch.backends.cudnn.benchmark``; off by default, where a heuristic picks)."""

    def tuned(x: torch.Tensor) -> torch.Tensor:
        torch.backends.cudnn.benchmark = True
        try:
            return run(x)
        finally:
            torch.backends.cudnn.benchmark = False

    return tuned


def bench_variants(args: argparse.Namespace, device: torch.device, ours, half, faces, ref) -> list[dict]:
    """faces/s at --variant-batches and dB against strict fp32 (on the batch's first faces) of each lever
    of _variant_runners. The first call of each batch size is untimed; for a compiled network it compiles
    (printed)."""
    runners = _variant_runners(args, ours, half)
    print(f"\nlevers (torch.compile mode {args.compile_mode!r}; first call untimed)")
    print(f"{'generator':24} {'batch':>5} {'s/batch':>9} {'faces/s':>9} {'dB':>6} {'1st call s':>10}")
    rows = []
    for name, run in runners.items():
        for batch in args.variant_batches:
            x = faces[torch.arange(batch) % len(faces)]
            with torch.inference_mode():
                start = time.perf_counter()
                out = run(x)[: len(faces)].float()
                _sync(device)
                first = time.perf_counter() - start
                seconds = _median_time(lambda x=x, run=run: run(x), args.repeat, device)
            db = _psnr_db(out, ref[: len(out)])
            rows.append({"net": name, "batch": batch, "seconds": seconds, "faces_per_s": batch / seconds})
            rows[-1] |= {"db_vs_fp32": db, "first_call_s": first}
            print(f"{name:24} {batch:>5} {seconds:9.4f} {batch / seconds:9.2f} {db:6.1f} {first:10.1f}")
            sys.stdout.flush()
    return rows


def profile_generator(args: argparse.Namespace, device: torch.device, run, faces: torch.Tensor) -> str:
    """The operators and kernels that take the time of one batch of ``args.profile_batch`` faces."""
    from torch.profiler import ProfilerActivity, profile

    x = faces[torch.arange(args.profile_batch) % len(faces)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode():
        run(x)
        _sync(device)
        with profile(activities=activities) as prof:
            run(x)
            _sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=args.profile_rows)
    print(f"\nprofile of one batch of {args.profile_batch} ({key}):\n{table}")
    return table


def bench_photos(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Whole photos/s: ours (fp32, fp16 on CUDA) and the official GFPGANer on the same photos and weights."""
    import cv2
    from _official_pipeline import make_weights, official_restorer, our_options, psnr

    from gfp.pipeline import Restorer

    data = _data_dir()
    photos = [data / "photos" / name for name in args.photos]
    missing = [p.name for p in photos if not p.is_file()]
    if missing or not (data / "weights").is_dir():
        print(f"\nwhole photos: skipped (shared data missing: {', '.join(missing) or 'weights'})")
        return []
    images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in photos]
    background = False if args.background == "none" else args.background
    folder = make_weights(Path(tempfile.mkdtemp(prefix="gfp-gpu-bench-")) / "weights", data)
    options = our_options(folder, args.upscale, background)
    sides: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    ours = Restorer(weights_dir=folder, device=str(device))
    sides["ours fp32"] = lambda img: ours.restore(img, options).image
    if device.type == "cuda":
        ours_half = Restorer(weights_dir=folder, device=str(device), half=True)
        sides["ours fp16"] = lambda img: ours_half.restore(img, options).image
    else:
        print("\nours fp16 (--half): skipped (CUDA only)")
    official = official_restorer(folder, args.upscale, background, device=device)

    def run_official(img: np.ndarray) -> np.ndarray:
        with contextlib.redirect_stdout(io.StringIO()):  # RealESRGANer prints a line per tile
            return official.enhance(img, paste_back=True)[2]

    sides["official fp32"] = run_official

    outputs: dict[str, list[np.ndarray]] = {}
    for name, run in sides.items():
        run(images[0])  # warm-up: loads, kernels chosen per shape
        outputs[name] = []
    seconds = dict.fromkeys(sides, 0.0)
    for img in images:  # alternate the sides photo by photo so they share the machine's load
        for name, run in sides.items():
            start = time.perf_counter()
            outputs[name].append(run(img))
            _sync(device)
            seconds[name] += time.perf_counter() - start
    print(
        f"\nwhole photos: {len(images)} ({', '.join(args.photos)}), x{args.upscale:g}, "
        f"background {args.background}, detector retinaface_mobile0.25, seeded random GFPGAN/ParseNet"
    )
    print(f"{'pipeline':15} {'s total':>9} {'photos/s':>9} {'min PSNR vs official':>21}")
    rows = []
    for name in sides:
        worst = None
        if name != "official fp32":
            worst = min(psnr(a, b) for a, b in zip(outputs[name], outputs["official fp32"], strict=True))
        rows.append({"pipeline": name, "seconds": seconds[name], "photos_per_s": len(images) / seconds[name]})
        rows[-1]["min_psnr_vs_official"] = worst
        shown = "-" if worst is None else f"{worst:.2f}"
        print(f"{name:15} {seconds[name]:9.2f} {len(images) / seconds[name]:9.3f} {shown:>21}")
    rows.append(_cli_check(args, device, photos, folder, options, outputs["official fp32"]))
    return rows


def _cli_check(args, device: torch.device, photos: list[Path], folder: Path, options, official) -> dict:
    """``python -m gfp`` once over the photos on ``device`` (``--half`` on CUDA), in a new process as a
    user runs it: its exit status, wall time, and the PSNR of its images against the official ones."""
    import subprocess

    import cv2
    from _official_pipeline import psnr

    out = Path(tempfile.mkdtemp(prefix="gfp-gpu-cli-"))
    (out / "in").mkdir()
    for photo in photos:
        (out / "in" / photo.name).symlink_to(photo)
    cmd = [sys.executable, "-m", "gfp", "-i", str(out / "in"), "-o", str(out / "out"), "-v", options.version]
    cmd += ["--weights-dir", str(folder), "--detector", options.detector, "-s", f"{args.upscale:g}"]
    cmd += ["--bg_upsampler", options.bg_upsampler, "--ext", "png", "--device", str(device)]
    cmd += ["--half"] if device.type == "cuda" else []
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    values = []
    for photo, ref in zip(photos, official, strict=True):
        got = cv2.imread(str(out / "out" / "restored_imgs" / f"{photo.stem}.png"), cv2.IMREAD_COLOR)
        values.append(psnr(got, ref) if got is not None and got.shape == ref.shape else -math.inf)
    flags = " ".join(cmd[cmd.index("--device") :])
    print(
        f"\nCLI ({flags}): exit {proc.returncode}, {seconds:.1f} s with start-up, min PSNR vs official ",
        end="",
    )
    print(f"{min(values):.2f} dB")
    if proc.returncode:
        print(proc.stderr[-2000:])
    return {
        "pipeline": f"cli {flags}",
        "exit": proc.returncode,
        "seconds": seconds,
        "min_psnr_vs_official": min(values),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="generator batch sizes")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (default: %(default)s)")
    p.add_argument("--precision-faces", type=int, default=4, help="faces for the dB figures")
    p.add_argument("--min-db", type=float, default=40.0, help="fp16 holds above this (default: %(default)s)")
    p.add_argument("--photos", nargs="+", default=list(DEFAULT_PHOTOS), help="photo names in shared data")
    p.add_argument(
        "--background",
        default="realesr-general-x4v3",
        choices=["none", "realesr-animevideov3", "realesr-general-x4v3"],
        help="background network on both sides (default: %(default)s, the official Space's)",
    )
    p.add_argument("--upscale", type=float, default=2)
    p.add_argument("--variants", nargs="*", choices=VARIANTS, default=[], help="levers to time (see above)")
    p.add_argument("--variant-batches", type=int, nargs="+", default=[16, 64], help="their batch sizes")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode (default: %(default)s)")
    p.add_argument("--profile", action="store_true", help="print the kernels that take a batch's time")
    p.add_argument("--profile-batch", type=int, default=16, help="batch size profiled (default: %(default)s)")
    p.add_argument("--profile-rows", type=int, default=25, help="rows of the profile table")
    p.add_argument("--skip", choices=["generator", "photos"], nargs="*", default=[], help="parts to skip")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu.py: error: CUDA is not available here; use --device cpu")
    if device.type != "cuda":
        print("no CUDA device: running the CPU parts only (fp16 and CUDA memory figures skipped)")
    args.batches = args.batches or list(GPU_BATCHES if device.type == "cuda" else CPU_BATCHES)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device {device} = {name}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    results: dict[str, object] = {"device": name, "torch": torch.__version__}
    if "generator" not in args.skip:
        results["generator"] = bench_generator(args, device)
    if "photos" not in args.skip:
        results["photos"] = bench_photos(args, device)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
