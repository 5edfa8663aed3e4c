"""Print an Optuna sweep's best parameters as Hydra overrides (`make tune-mixcd-confirm` reruns them).

    python scripts/best_overrides.py outputs/tune/<stamp>      # → sampler.num_bins=8 sampler.decay=0.98...
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: best_overrides.py SWEEP_FOLDER")
    results = Path(sys.argv[1]) / "optimization_results.yaml"
    if not results.is_file():
        sys.exit(f"{results} not found: run `make tune-mixcd` first (the search writes it when it ends)")
    best = OmegaConf.load(results).best_params
    print(" ".join(f"{key}={value}" for key, value in best.items()))


if __name__ == "__main__":
    main()
