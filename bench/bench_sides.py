"""Shorts: one model with the side as a feature, against one model per side.

Two futures markets (8 pairs x 12,000 1h candles each) and the long-and-short TwoSided
strategy (tests/strategies/TwoSided.py: long after an RSI dip, short after a spike):

* "one side": a planted reversion that acts only below the EMA (``below_only``): longs
  opened after a dip have an edge, shorts opened after a spike have none;
* "both sides": a planted intraday drift that both sides' trades show.

The rows are the strategy's own trades (``ml.trade_labels``), split in time 60 / 20 / 20
(train / unused / test), and the same LightGBM settings fit (a) one model on both sides
with ``side_short`` and (b) one model per side without it. Reported per market and side:
test log loss of (a) against (b) as a ratio (below 1: the single model predicts better),
and the AUCs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import lightgbm as lgb
import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from bench.common import emit
from bench.project import ROOT
from ml.config import from_dict
from ml.dataset import build_trade_dataset
from ml.features import FeatureEngineer
from ml.gate import SIDE_FEATURE
from ml.synth import write_market
from ml.trade_labels import strategy_trades

PAIRS = ["ETH/USDT:USDT", "LTC/USDT:USDT", "XRP/USDT:USDT", "ADA/USDT:USDT", "DOT/USDT:USDT", "LINK/USDT:USDT",
         "BNB/USDT:USDT", "SOL/USDT:USDT"]
PARAMS = {"n_estimators": 300, "learning_rate": 0.03, "num_leaves": 15, "min_child_samples": 50, "subsample": 0.8,
          "subsample_freq": 1, "colsample_bytree": 0.8, "n_jobs": 1, "verbose": -1, "random_state": 0}


MARKETS = {"one side": {"market": "planted", "below_only": True},
           "both sides": {"market": "null", "hour_drift": 0.5}}


def project(root: Path, market: dict) -> Path:
    (root / "strategies").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "strategies" / "TwoSided.py", root / "strategies")
    cfg = json.loads((ROOT / "config.json").read_text())
    pricing = {"price_side": "same", "use_order_book": True, "order_book_top": 1}
    cfg.update(strategy_path=str(root / "strategies"), user_data_dir=str(root / "user_data"), trading_mode="futures",
               margin_mode="isolated", stake_currency="USDT", stake_amount=10, dry_run_wallet=1000,
               entry_pricing=pricing, exit_pricing=pricing)
    cfg["exchange"]["pair_whitelist"] = PAIRS
    cfg["ml"] = {"tracking": {"mode": "disabled"}}
    (root / "config.json").write_text(json.dumps(cfg))
    process = {k: v for k, v in market.items() if k != "market"}
    write_market(root / "user_data" / "data" / "binance", PAIRS, "1h", 12_000, market["market"], seed=11,
                 trading_mode="futures", start_price=1.0, **process)
    return root


def fit_predict(X_train, y_train, X_test) -> np.ndarray:
    return lgb.LGBMClassifier(**PARAMS).fit(X_train, y_train).predict_proba(X_test)[:, 1]


def compare(name: str, market: dict) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        root = project(Path(tmp), market)
        cfg = from_dict({"tracking": {"mode": "disabled"}})
        run = strategy_trades(root / "config.json", "TwoSided", engineer=FeatureEngineer(cfg.features, "1h"))
        data = build_trade_dataset(cfg, run)
    n = len(data)
    train, test = np.arange(int(0.6 * n)), np.arange(int(0.8 * n), n)
    X, y, sides = data.X.to_numpy(), data.y, data.sides
    pooled = fit_predict(X[train], y[train], X[test])
    without_side = [c for c in data.X.columns if c != SIDE_FEATURE]
    rows = []
    for side in ("long", "short"):
        tr, te = train[sides[train] == side], test[sides[test] == side]
        own = fit_predict(data.X.iloc[tr][without_side].to_numpy(), y[tr], data.X.iloc[te][without_side].to_numpy())
        one = pooled[sides[test] == side]
        loss_one, loss_own = log_loss(y[te], one), log_loss(y[te], own)
        rows.append({"figure": f"{name} has an edge; {side}: test log loss, one model (side as a feature) / "
                               f"one model per side ({len(te)} test trades)",
                     "value": f"{loss_one:.4f} (AUC {roc_auc_score(y[te], one):.3f})",
                     "reference": f"{loss_own:.4f} (AUC {roc_auc_score(y[te], own):.3f})",
                     "ratio": round(loss_one / loss_own, 3), "goal": "<= 1 (keep one model)",
                     "met": loss_one <= loss_own})
    return rows


def main() -> None:
    emit("sides", [row for name, market in MARKETS.items() for row in compare(name, market)])


if __name__ == "__main__":
    main()
