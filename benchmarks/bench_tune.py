"""Benchmark: `tune` on the synthetic config, 8 trials, with the pruner on and off.

Both variants run in one temporary working directory (study storage and MLflow store), as two
studies, on the same feature cache: the first builds it, so the encoder runs once per image in
all. Prints one JSON line.

    python benchmarks/bench_tune.py [--trials 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

from polypseg.config import load_config
from polypseg.tuning.spec import load_spec
from polypseg.tuning.study import tune

ROOT = Path(__file__).resolve().parent.parent


def run(pruner: str, trials: int) -> dict:
    config = load_config(ROOT / "experiments" / "synthetic.toml")
    spec = load_spec(ROOT / "studies" / "decoder_search.toml", config)
    spec = dataclasses.replace(spec, pruner={**spec.pruner, "name": pruner})
    start = time.perf_counter()
    result = tune(config, spec, trials, study_name=f"bench-{pruner}", progress=False)
    wall = time.perf_counter() - start
    return {
        "wall_s": round(wall, 1),
        "trials_per_hour": round(trials / wall * 3600),
        "complete": result.counts["COMPLETE"],
        "pruned": result.counts["PRUNED"],
        "failed": result.counts["FAIL"],
        "best_val_dice": round(result.best.value, 4) if result.best else None,
        "images_encoded": result.images_encoded,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    figures = {"trials": args.trials, "epochs_per_trial": 15}
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ["POLYPSEG_CACHE"] = str(Path(tmp) / "cache")  # the first variant encodes
        try:
            figures["pruner_median"] = run("median", args.trials)
            figures["pruner_none"] = run("none", args.trials)
        finally:
            os.chdir(cwd)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
