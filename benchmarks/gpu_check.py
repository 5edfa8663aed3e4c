"""GPU check: fine-tuning throughput of timm resnet18 (224 px and 32 px) with none / random / mixcd,
snapshot inference against plain inference, and GPU utilisation. Needs CUDA; no Hydra, no dataset.

    PYTHONPATH=. python3 benchmarks/gpu_check.py [--steps 100] [--compile]

Data are generated in memory and kept on the GPU, so the sampler's per-step host→device traffic
is its index tensor. Ratios compare step times measured in this one process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from mixcd_cli.data import BatchTransform, Task
from mixcd_cli.metrics import Ledger
from mixcd_cli.models import create_model
from mixcd_cli.samplers import PoolInfo, create_sampler
from mixcd_cli.sources import ArraySource, make_synthetic
from mixcd_cli.training import FineTuner, Rehearsal, TrainSettings, predict_task


class Utilisation:
    """Mean GPU utilisation from nvidia-smi, sampled every 0.2 s while active."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=2).stdout
                self.samples.append(float(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.2)

    def __enter__(self) -> Utilisation:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def task_on(device: torch.device, n: int, classes: list[int], seed: int) -> Task:
    src = make_synthetic(train=True, num_classes=10, image_size=32, channels=3, n_train=n, data_seed=seed)
    src = ArraySource(src.data.to(device), src.targets, src.mean, src.std)
    index = torch.nonzero(torch.isin(src.targets, torch.tensor(classes))).flatten()
    return Task("synthetic", src, index, src.targets[index], 10, {})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="cuda", help="cpu only for a smoke test of this script")
    parser.add_argument("--pool", type=int, default=40_000)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        assert torch.cuda.is_available(), "gpu_check needs CUDA"
        torch.backends.cudnn.benchmark = True
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    name_of = torch.cuda.get_device_name(0) if cuda else "cpu"
    print(f"device: {name_of}, torch {torch.__version__}")
    pool, ft = task_on(device, args.pool, [0, 1, 2, 3, 4], 1), task_on(device, args.pool, [5, 6, 7, 8, 9], 2)
    n = len(pool)
    g = torch.Generator().manual_seed(0)
    info = PoolInfo(classes=pool.targets, correct0=torch.rand(n, generator=g) < 0.8, loss0=torch.rand(n, generator=g),
                    conf0=torch.rand(n, generator=g))
    b = round(args.ratio * args.batch)
    results: dict = {"device": name_of, "torch": torch.__version__, "batch": args.batch,
                     "rehearsal_batch": b, "steps": args.steps, "train": {}, "snapshot": {}}
    for size in (224, 32):
        transform = BatchTransform(pool.source.mean, pool.source.std, size if size != 32 else None)
        for name in ("none", "random", "mixcd"):
            model = create_model("timm", 3, {"shared": 10}, name="resnet18")
            sampler = create_sampler(name, info, b if name != "none" else 0, seed=0)
            settings = TrainSettings(steps=args.steps, batch_size=args.batch,
                                     rehearsal_batch=b if name != "none" else 0, lr=0.01, amp="bf16",
                                     channels_last=True, log_every=10**9, checkpoint_every=0,
                                     compile=args.compile)
            warm = TrainSettings(**{**settings.__dict__, "steps": 10})
            rehearsal = Rehearsal(sampler, pool, "shared", info.correct0)
            FineTuner(model, ft, "shared", transform, device, warm, Ledger(), rehearsal).run()
            sync()
            with Utilisation() if cuda else nullcontext(Utilisation()) as util:
                t0 = time.perf_counter()
                FineTuner(model, ft, "shared", transform, device, settings, Ledger(), rehearsal).run()
                sync()
                dt = time.perf_counter() - t0
            per = args.batch + (b if name != "none" else 0)
            results["train"][f"{size}px/{name}"] = {"ms_per_step": 1e3 * dt / args.steps,
                                                    "samples_per_s": per * args.steps / dt, "gpu_util": util.mean}
            r = results["train"][f"{size}px/{name}"]
            print(f"{size:>3}px {name:<7} {r['ms_per_step']:8.2f} ms/step {r['samples_per_s']:9.0f} samples/s "
                  f"util {r['gpu_util'] if r['gpu_util'] is not None else float('nan'):5.1f}%")
        ms = {k.split("/")[1]: v["ms_per_step"] for k, v in results["train"].items() if k.startswith(f"{size}px")}
        print(f"{size:>3}px step-time ratios: mixcd/random {ms['mixcd'] / ms['random']:.3f}, "
              f"random/none {ms['random'] / ms['none']:.3f}")
        model = create_model("timm", 3, {"shared": 10}, name="resnet18").to(device)
        model = model.to(memory_format=torch.channels_last)
        predict_task(model, pool, "shared", transform, device, 1024, amp="bf16")  # warm-up
        sync()
        t0 = time.perf_counter()
        predict_task(model, pool, "shared", transform, device, 1024, amp="bf16")
        sync()
        snap = n / (time.perf_counter() - t0)
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            t0 = time.perf_counter()
            for start in range(0, n, 1024):
                rows = torch.arange(start, min(n, start + 1024))
                model(transform(pool.inputs(rows)).contiguous(memory_format=torch.channels_last))
            sync()
            plain = n / (time.perf_counter() - t0)
        results["snapshot"][f"{size}px"] = {"snapshot_samples_per_s": snap, "plain_samples_per_s": plain,
                                            "ratio": snap / plain}
        print(f"{size:>3}px snapshot {snap:9.0f} samples/s vs plain inference {plain:9.0f} (ratio {snap / plain:.3f})")
    out = Path(os.environ.get("OUT", "."))
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
