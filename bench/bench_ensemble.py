"""Ensembles (``ml.training.ensemble_members``): do they help out of sample, and what do they cost?

Same rows as bench_families (EveryFewHours's trades on the planted 1h market and on the ten
../shared 5m pairs), plus the market of tests/test_ensemble.py: two planted edges of
different shapes (a saturating mean reversion and an intraday drift linear in cos(hour)),
6 pairs x 20,000 1h candles, a trade every 6 hours. One training per market over the default families, ``TRIALS`` trials,
``ensemble_members`` 4: the best trial of each default family is refitted on the
purged folds for its out-of-fold predictions, and an average or a stack is used only when it
beats the best single model by 2 SE there. Reported: which candidate was chosen, the
cross-fitted out-of-fold log losses, the test-block log loss of the model used against the
best member alone (calibrated the same way on the same block; the ratio), and the seconds the
ensemble step added to the training.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.bench_families import both_markets, labelled, project, study
from bench.common import emit
from ml.synth import write_market

TRIALS = 16
MEMBERS = 4  # every default family: the top 3 by loss were three tree families on "two edges"


def rows_for(market: str, folder: Path, timeframe: str) -> list[dict]:
    summary, seconds = study(folder, timeframe, "ensemble", ensemble_members=MEMBERS, trials=TRIALS)
    ens = summary["ensemble"]
    cross = ens.get("cross_fit_log_loss", {})
    best_member = ens.get("best_member_test_log_loss", ens["test_log_loss"])  # single chosen: the same model
    refused = ", ".join(f"{c} {w}" for c, w in ens.get("inverting", {}).items())
    return [{
        "figure": f"{market}: ensemble of {', '.join(m['family'] for m in ens['members'])} "
                  f"({summary['rows']['test']:,} test trades)",
        "value": f"chose {ens['chosen']}; test log loss {ens['test_log_loss']:.4f}",
        "reference": f"best member alone {best_member:.4f}; out-of-fold cross-fit "
                     + ", ".join(f"{c} {v:.4f}" for c, v in cross.items())
                     + (f"; refused (weights <= 0): {refused}" if refused else "")
                     + f"; ensemble step {ens['seconds']:.0f} s of {seconds:.0f} s",
        "ratio": round(ens["test_log_loss"] / best_member, 4), "goal": "report", "met": None}]


def two_edges(folder: Path) -> Path:
    pairs = [f"E{i}/BTC" for i in range(6)]
    project(folder, pairs, "1h", 'df["date"].dt.hour % 6 == 0')
    write_market(folder / "user_data" / "data" / "binance", pairs, "1h", 20000, "planted", seed=0, strength=0.6,
                 hour_drift=0.6)
    return labelled(folder, "1h")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = rows_for("two edges", two_edges(Path(tmp) / "two-edges"), "1h")
    emit("ensemble", rows + both_markets(rows_for))


if __name__ == "__main__":
    main()
