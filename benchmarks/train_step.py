"""What one training step of a config costs on this machine: making a batch (the loader's work) and the
generator step (forward, losses, backward, Adam, EMA), apart, on one thread.

A time-budgeted recipe (``train.time_budget_min``) trains as many steps as these two allow: the loader runs
beside the step in a worker process when there is a core for it, and in series with it when there is not.
The batches are made first, in this process (no worker), and each is timed; then the steps run on them,
and each step after the first ``--warmup`` is timed. Medians are printed. Run it on two checkouts to see
what a change bought; other work on the machine slows both figures.

    python benchmarks/train_step.py                                 # train/configs/cpu.yml, shared faces
    python benchmarks/train_step.py --config train/configs/cpu.yml loss.identity_from=0  # identity steps
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.config import load_config  # noqa: E402
from train.train import Trainer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="train/configs/cpu.yml", help="training YAML (default: %(default)s)")
    p.add_argument("--data", default="../shared/data/faces/hq", help="folder of aligned faces (data.train)")
    p.add_argument("--batches", type=int, default=8, help="batches to make and step on (default 8)")
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the timing (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as cpu.yml trains)")
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    args = p.parse_args(argv)
    if args.batches <= args.warmup:
        p.error("--batches must be above --warmup")
    if not Path(args.data).is_dir():
        p.error(f"no folder of faces at {args.data} (give --data)")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as out:
        overrides = [f"data.train={args.data}", f"output_dir={out}", "data.num_workers=0", *args.overrides]
        trainer = Trainer(load_config(args.config, overrides))
        stream = iter(trainer._loader())
        next(stream)  # the first batch also decodes and caches its faces
        batches, made = [], []
        for _ in range(args.batches):
            start = time.perf_counter()
            batches.append(next(stream))
            made.append(time.perf_counter() - start)
        stepped = []
        for k, batch in enumerate(batches):
            start = time.perf_counter()
            trainer.train_step(batch)
            if k >= args.warmup:
                stepped.append(time.perf_counter() - start)
    batch_s, step_s = statistics.median(made), statistics.median(stepped)
    print(f"config {args.config} {' '.join(args.overrides)}; {torch.get_num_threads()} thread(s)")
    print(f"making a batch   {batch_s:.3f} s (median of {len(made)})")
    print(f"generator step   {step_s:.3f} s (median of {len(stepped)})")
    print(f"in series        {batch_s + step_s:.3f} s a step = {1 / (batch_s + step_s):.2f} it/s")
    print(f"loader beside it {max(batch_s, step_s):.3f} s a step = {1 / max(batch_s, step_s):.2f} it/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
