"""Training: 35,000 rows x the default features, 30 Optuna trials with pruning, 2 cores.

Reports wall time, trials pruned and peak RSS for the full run (goal: <= 3 minutes), then
how wall time grows from 35k to 140k rows with a smaller budget (8 trials each), measured
in the same process: the ratio 140k / 35k.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.common import emit
from ml.config import from_dict
from ml.models import available_cores
from ml.synth import write_market
from ml.train import TrainRequest, train

STARTUP_AND_HORIZON = 480 + 24 + 1  # candles per pair that yield no row


def run(rows: int, trials: int, root: Path) -> tuple[dict, float]:
    n_pairs = 6
    candles = rows // n_pairs + STARTUP_AND_HORIZON
    pairs = [f"B{i}/USDT" for i in range(n_pairs)]
    folder = root / f"r{rows}t{trials}"
    write_market(folder / "data", pairs, "1h", candles, "planted", seed=11)
    cfg = from_dict({"training": {"signal": None, "trials": trials, "n_jobs": available_cores()},
                     "tracking": {"mode": "disabled"}})
    req = TrainRequest(folder / "data", pairs, "1h", None, folder / "bundle", f"sqlite:///{folder}/o.db", "bench")
    start = time.perf_counter()
    summary = train(cfg, req)
    return summary, time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        full, full_s = run(35_000, 30, root)
        small, small_s = run(35_000, 8, root)
        large, large_s = run(140_000, 8, root)
    n = sum(full["rows"].values())
    emit("training", [
        {"figure": f"{n:,} rows, 30 trials, all 4 families, {available_cores()} cores",
         "value": f"{full_s:.0f} s wall, {full['trials']['pruned']} of 30 pruned, best {full['family']}",
         "reference": f"goal 180 s; test AUC {full['test']['auc']:.3f}",
         "ratio": round(full_s / 180.0, 2), "goal": "<= 180 s", "met": full_s <= 180},
        {"figure": "growth 35k -> 140k rows (8 trials each)",
         "value": f"{large_s:.0f} s at {sum(large['rows'].values()):,} rows",
         "reference": f"{small_s:.0f} s at {sum(small['rows'].values()):,} rows",
         "ratio": round(large_s / small_s, 2), "goal": "~4x or less (linear in rows)", "met": large_s / small_s <= 4.5},
    ])


if __name__ == "__main__":
    main()
