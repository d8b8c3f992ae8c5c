"""Sample weights of the training rows (``ml.training.sample_weight``): none, balanced, return.

Same rows as bench_families (EveryFewHours's trades on the planted 1h market and on the ten
../shared 5m pairs); LightGBM, ``bench_families.TRIALS`` trials, the same seed, one study per weighting.
The calibrator is fitted unweighted in every case. Reported on the untouched test block:
log loss (the ratio is against ``none``), AUC, and the EV gate's trades and mean realised
return per trade (what a gated strategy would have earned per trade on that block).
"""

from __future__ import annotations

from pathlib import Path

from bench.bench_families import both_markets, study
from bench.common import emit

KINDS = ("none", "balanced", "return")


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value * 100:+.2f}%"  # no gated trades: NaN


def rows_for(market: str, folder: Path, timeframe: str) -> list[dict]:
    results = {kind: study(folder, timeframe, f"w-{kind}", families=["lightgbm"], sample_weight=kind)
               for kind in KINDS}
    reference = results["none"][0]["test"]["log_loss"]
    rows = []
    for kind, (summary, seconds) in results.items():
        test = summary["test"]
        rows.append({
            "figure": f"{market}: sample_weight {kind} ({summary['rows']['test']:,} test trades)",
            "value": f"test log loss {test['log_loss']:.4f}, AUC {test['auc']:.3f}; EV gate "
                     f"{test['ev_gate_trades']} trades, {_pct(test['ev_gate_mean_return'])}/trade",
            "reference": f"none: {reference:.4f}; base rate {test['base_rate']:.3f}; all signals "
                         f"{_pct(test['all_signals_mean_return'])}/trade; {seconds:.0f} s",
            "ratio": round(test["log_loss"] / reference, 4), "goal": "report", "met": None})
    return rows


def main() -> None:
    emit("weights", both_markets(rows_for))


if __name__ == "__main__":
    main()
