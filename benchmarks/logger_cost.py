"""What logging costs: the same fine-tuning with logger none, [tensorboard], [mlflow] and both, interleaved.

Each setting runs REPEATS times, in turn (none, tb, mlflow, both, none, ...), so drift of the machine
hits all alike; prior model and snapshot are cached by the first run. Printed per setting:

- fine-tune wall time (median, min-max) and its ratio to logging off, and that difference per log interval
  (on a shared 2-core VM the run-to-run spread is often larger than the cost at log_every=10: the
  tracking thread's own time below is the precise number; --log-every 1 makes the wall-clock cost visible);
- the training loop's own time per interval spent handing the record over (queued);
- each tracker's time per interval on the tracking thread, its start-up and its closing work
  (config, final metrics, files), from the run folder's tracking.json.

    python benchmarks/logger_cost.py [--steps 600] [--log-every 10] [--repeats 3] [--threads 2]

Results go to outputs/bench/logger_cost/<stamp>/ (run folders and logger_cost.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"off": None, "tensorboard": "[tensorboard]", "mlflow": "[mlflow]", "both": "[tensorboard,mlflow]"}


def run(out: Path, name: str, i: int, args: argparse.Namespace) -> dict:
    run_dir = out / f"{name}-{i}"
    cmd = [sys.executable, "-m", "mixcd_cli.cli", "train", "experiment=fmnist", "sampler=mixcd",
           f"trainer.mix_ratio={args.ratio}", f"trainer.steps={args.steps}", f"trainer.log_every={args.log_every}",
           f"threads={args.threads}", "seed=1", f"hydra.run.dir={run_dir}", f"paths.output_dir={out / 'outputs'}",
           f"paths.cache_dir={ROOT / 'outputs' / 'cache'}"]
    if SETTINGS[name]:
        cmd.append(f"logger={SETTINGS[name]}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ, "MIXCD_PROGRESS": "0"})
    if proc.returncode:
        sys.exit(f"{name} run {i} failed: {proc.stderr.strip().splitlines()[-1]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    tracking = json.loads((run_dir / "tracking.json").read_text()) if SETTINGS[name] else {}
    return {"finetune_s": metrics["wall_time"]["finetune"], "pre_acc": metrics["pre_acc"], "tracking": tracking}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ratio", type=float, default=0.0625)
    args = parser.parse_args()
    out = ROOT / "outputs" / "bench" / "logger_cost" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    intervals = args.steps // args.log_every
    results: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for i in range(args.repeats):
        for name in SETTINGS:
            results[name].append(run(out, name, i, args))
            print(f"  {name} #{i}: fine-tune {results[name][-1]['finetune_s']:.2f} s", flush=True)
    accs = {r["pre_acc"] for rs in results.values() for r in rs}
    base = statistics.median(r["finetune_s"] for r in results["off"])
    summary = {"steps": args.steps, "log_every": args.log_every, "intervals": intervals, "repeats": args.repeats,
               "threads": args.threads, "identical_results": len(accs) == 1, "settings": {}}
    print(f"\n{args.steps} steps, a log interval every {args.log_every} ({intervals} intervals), "
          f"{args.repeats} runs each, threads={args.threads}")
    print(f"{'logger':<12} {'fine-tune s (min-max)':>22} {'ratio':>7} {'Δ ms/interval':>14} {'queued µs/int':>14}  "
          "tracking thread per tracker: ms/interval, start s, closing s")
    for name, rs in results.items():
        wall = statistics.median(r["finetune_s"] for r in rs)
        delta_ms = (wall - base) / intervals * 1e3
        queued = statistics.median(r["tracking"].get("queued_seconds", 0.0) for r in rs) / intervals * 1e6 \
            if SETTINGS[name] else 0.0
        per: dict[str, dict[str, float]] = {}
        for tracker in sorted(rs[0]["tracking"].get("cost", {})):
            costs = [r["tracking"]["cost"][tracker] for r in rs]
            per[tracker] = {"interval_ms": statistics.median(c["interval_s"] / max(c["intervals"], 1) for c in costs)
                            * 1e3, "start_s": statistics.median(c["start_s"] for c in costs),
                            "closing_s": statistics.median(c["other_s"] for c in costs)}
        shown = "; ".join(f"{t}: {p['interval_ms']:.2f} ms, {p['start_s']:.2f} s, {p['closing_s']:.2f} s"
                          for t, p in per.items()) or "-"
        spread = f"{wall:.2f} ({min(r['finetune_s'] for r in rs):.1f}-{max(r['finetune_s'] for r in rs):.1f})"
        print(f"{name:<12} {spread:>22} {wall / base:>7.3f} {delta_ms:>14.2f} {queued:>14.1f}  {shown}")
        summary["settings"][name] = {"finetune_s_median": wall, "ratio_to_off": wall / base,
                                     "delta_ms_per_interval": delta_ms, "queued_us_per_interval": queued,
                                     "trackers": per, "finetune_s": [r["finetune_s"] for r in rs]}
    print(f"same metrics with and without logging: {summary['identical_results']}")
    (out / "logger_cost.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {out / 'logger_cost.json'}")


if __name__ == "__main__":
    main()
