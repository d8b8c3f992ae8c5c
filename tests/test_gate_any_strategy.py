"""Gate someone else's strategy in one line: freqtrade's own SampleStrategy, unmodified.

The market is synthetic with a known edge that has nothing to do with SampleStrategy's
rule: an intraday drift (``hour_drift``), up in the early UTC hours and down in the late
ones, on an otherwise unpredictable price. Trades SampleStrategy opens before the good
hours win more often; hour-of-day features can learn that from its own trades.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import freqtrade
import numpy as np
import pandas as pd
import pytest
from freqtrade.data.btanalysis.bt_fileutils import load_backtest_stats

from ml.synth import write_market
from tests.conftest import REPO, run_ftml, write_config

pytestmark = pytest.mark.slow
SAMPLE = Path(freqtrade.__file__).parent / "templates" / "sample_strategy.py"
PAIRS = ["ETH/BTC", "LTC/BTC", "XMR/BTC", "DASH/BTC", "ETC/BTC", "ZEC/BTC"]
TRAIN_RANGE, LATER = "20240105-20240815", "20240816-"  # 80,000 5m candles end 2024-10-04
GATED_FILE = "from ml.gate import MLGate\nfrom sample_strategy import SampleStrategy\n\n\n" \
             "class SampleStrategyML(MLGate, SampleStrategy):\n    pass\n"


def sample_project(root: Path, market: str = "null", hour_drift: float = 0.2, candles: int = 80_000) -> Path:
    (root / "strategies").mkdir(parents=True)
    shutil.copy(SAMPLE, root / "strategies" / "sample_strategy.py")  # unmodified
    (root / "strategies" / "SampleStrategyML.py").write_text(GATED_FILE)
    exchange = {**json.loads((REPO / "config.json").read_text())["exchange"], "pair_whitelist": PAIRS}
    # ev_margin 0.004: SampleStrategy wins ~90% of its trades by +1% and loses the rest by
    # -10% (its stoploss); a margin keeps the gate to trades whose EV clearly covers that.
    ml = {"tracking": {"mode": "disabled"}, "registry": {"path": str(root / "registry")},
          "features": {"higher_timeframes": ["1h"]}, "gate": {"ev_margin": 0.004},
          "training": {"trials": 6, "families": ["lightgbm", "logistic"]}}
    write_config(root / "config.json", exchange=exchange, strategy_path=str(root / "strategies"), timeframe="5m",
                 ml=ml, max_open_trades=5)
    write_market(root / "user_data" / "data" / "binance", PAIRS, "5m", candles, market, seed=5,
                 hour_drift=hour_drift)
    return root


def ftml_ok(root: Path, *args: str):
    done = run_ftml(*args, cwd=root)
    assert done.returncode == 0, (args, done.stderr[-3000:])
    return done


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, dict]:
    root = sample_project(tmp_path_factory.mktemp("sample"))
    done = ftml_ok(root, "train", "-c", "config.json", "--strategy", "SampleStrategyML", "--timerange", TRAIN_RANGE)
    return root, json.loads(done.stdout.splitlines()[-1])


def test_sample_strategy_trains_on_its_own_trades(sample):
    root, trained = sample
    assert trained["model"] == "SampleStrategy"  # named after the user's class, not the gated one
    assert trained["verdict"] == "edge", trained["reasons"]
    bundle = json.loads((Path(trained["bundle"]) / "bundle.json").read_text())
    assert bundle["label_source"] == "trades" and bundle["strategy"] == "SampleStrategy"
    assert bundle["sides"] == ["long"] and bundle["signal"] is None
    outcome = bundle["outcome_returns"]["long"]
    assert outcome["win"] > 0 > outcome["loss"]  # measured, not barriers: SampleStrategy has none
    # A second training reuses the label backtest and says so.
    again = ftml_ok(root, "train", "-c", "config.json", "--strategy", "SampleStrategy", "--timerange", TRAIN_RANGE,
                    "--trials", "1", "--no-register")
    assert "using the cache" in again.stderr


def test_gated_sample_strategy_after_the_training_period(sample):
    root, trained = sample
    version = str(trained["registered"]["version"])
    ftml_ok(root, "registry", "validate", "SampleStrategy", version, "-c", "config.json")
    ftml_ok(root, "registry", "promote", "SampleStrategy", version, "-c", "config.json")
    (root / "bt").mkdir()
    ftml_ok(root, "freqtrade", "--offline", "backtesting", "-c", "config.json", "--strategy-list", "SampleStrategyML",
            "SampleStrategy", "--timerange", LATER, "--export", "trades", "--backtest-directory", "bt")
    stats = load_backtest_stats(root / "bt")["strategy"]
    gated, plain = stats["SampleStrategyML"]["trades"], stats["SampleStrategy"]["trades"]
    assert 30 <= len(gated) < len(plain)
    per_trade = {name: np.mean([t["profit_ratio"] for t in trades]) for name, trades in
                 (("gated", gated), ("plain", plain))}
    assert per_trade["gated"] > per_trade["plain"], per_trade
    # Exits are SampleStrategy's own (ROI, its stoploss, its exit signal), never the gate's.
    assert {t["exit_reason"] for t in gated} <= {"roi", "stop_loss", "exit_signal", "force_exit"}
    # Every gated entry is one of the un-gated strategy's signal candles: a stacked run
    # of the plain strategy turns every signal into a trade.
    (root / "stacked").mkdir()
    ftml_ok(root, "freqtrade", "--offline", "backtesting", "-c", "config.json", "--strategy", "SampleStrategy",
            "--timerange", LATER, "--enable-position-stacking", "--max-open-trades", "-1", "--export", "trades",
            "--backtest-directory", "stacked")
    signals = {(t["pair"], t["open_date"]) for t in load_backtest_stats(root / "stacked")["strategy"]["SampleStrategy"]
               ["trades"]}
    assert {(t["pair"], t["open_date"]) for t in gated} <= signals


LABEL_PROBE = '''
from datetime import datetime

import talib.abstract as ta
from freqtrade.strategy import IStrategy


class LabelProbe(IStrategy):
    """ROI table, trailing stop and a custom_exit: exits no fixed barrier describes."""
    INTERFACE_VERSION = 3
    timeframe = "1h"
    minimal_roi = {"0": 0.05, "240": 0.02, "720": 0.0}
    stoploss = -0.06
    trailing_stop = True
    trailing_stop_positive = 0.01
    trailing_stop_positive_offset = 0.025
    trailing_only_offset_is_reached = True
    startup_candle_count = 500  # at least the gate's feature warm-up (480 at 1h), which the label backtest uses

    def populate_indicators(self, df, metadata):
        df["rsi"] = ta.RSI(df, timeperiod=14)
        return df

    def populate_entry_trend(self, df, metadata):
        df.loc[(df["rsi"] < 35) & (df["volume"] > 0), "enter_long"] = 1
        return df

    def populate_exit_trend(self, df, metadata):
        return df

    def custom_exit(self, pair, trade, current_time: datetime, current_rate, current_profit, **kwargs):
        if (current_time - trade.open_date_utc).total_seconds() > 30 * 3600 and current_profit < 0:
            return "stale"
        return None
'''


def test_training_rows_are_exactly_the_strategys_trades(tmp_path):
    """Every row's realised return is the profit_ratio of the trade freqtrade's own CLI
    makes from that signal candle (stacked backtest), for every row."""
    pairs = PAIRS[:3]
    (tmp_path / "strategies").mkdir()
    (tmp_path / "strategies" / "LabelProbe.py").write_text(LABEL_PROBE)
    exchange = {**json.loads((REPO / "config.json").read_text())["exchange"], "pair_whitelist": pairs}
    write_config(tmp_path / "config.json", exchange=exchange, strategy_path=str(tmp_path / "strategies"),
                 ml={"tracking": {"mode": "disabled"}, "training": {"min_samples": 100}})
    write_market(tmp_path / "user_data" / "data" / "binance", pairs, "1h", 6000, "planted", seed=2)
    (tmp_path / "bt").mkdir()
    ftml_ok(tmp_path, "freqtrade", "--offline", "backtesting", "-c", "config.json", "--strategy", "LabelProbe",
            "--enable-position-stacking", "--max-open-trades", "-1", "--dry-run-wallet", "1000000000000",
            "--stake-amount", "1", "--export", "trades", "--backtest-directory", "bt")
    trades = load_backtest_stats(tmp_path / "bt")["strategy"]["LabelProbe"]["trades"]
    freqtrade_profit = {(t["pair"], pd.Timestamp(t["open_date"])): t["profit_ratio"] for t in trades
                        if t["exit_reason"] != "force_exit"}
    assert {"roi", "trailing_stop_loss", "stale"} <= {t["exit_reason"] for t in trades}

    code = ("import json, sys; from ml.config import load; from ml.dataset import build_trade_dataset; "
            "from ml.trade_labels import strategy_trades; "
            "run = strategy_trades('config.json', 'LabelProbe', min_startup=480); d = build_trade_dataset(load('config.json'), run); "
            "print(json.dumps({'rows': [[p, str(t), r, int(y)] for p, t, r, y in "
            "zip(d.pairs, d.times, d.realised, d.y)], 'unresolved': run.unresolved}))")
    done = __import__("subprocess").run([__import__("sys").executable, "-c", code], cwd=tmp_path, capture_output=True,
                                        text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.splitlines()[-1])["rows"]
    assert len(rows) == len(freqtrade_profit) > 100
    for pair, signal, realised, label in rows:
        opened = pd.Timestamp(signal, tz="UTC") + pd.Timedelta("1h")  # filled at the next candle's open
        assert realised == pytest.approx(freqtrade_profit[(pair, opened)], abs=1e-12)
        assert label == int(realised > 0)
