"""Gate someone else's strategy in one line: freqtrade's own SampleStrategy, unmodified.

The market is synthetic with a known edge that has nothing to do with SampleStrategy's
rule: an intraday drift (``hour_drift``), up in the early UTC hours and down in the late
ones, on an otherwise unpredictable price. Trades SampleStrategy opens before the good
hours win more often; hour-of-day features can learn that from its own trades.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import textwrap
from pathlib import Path

import freqtrade
import numpy as np
import pandas as pd
import pytest
from freqtrade.data.btanalysis.bt_fileutils import load_backtest_stats

from ml.config import load
from ml.features import FeatureEngineer
from ml.synth import write_market
from ml.trade_labels import strategy_trades
from tests.conftest import CALIBRATION_GATES_OFF, REPO, run_ftml, write_config

pytestmark = pytest.mark.slow
SAMPLE = Path(freqtrade.__file__).parent / "templates" / "sample_strategy.py"
PAIRS = ["ETH/BTC", "LTC/BTC", "XMR/BTC", "DASH/BTC", "ETC/BTC", "ZEC/BTC"]
SAMPLE_PAIRS = PAIRS[:4]  # SampleStrategy at 5m: 320,000 candles, a few thousand trades
TRAIN_RANGE, LATER = "20240105-20240815", "20240816-"  # 80,000 5m candles end 2024-10-04


def sample_project(root: Path, market: str = "null", hour_drift: float = 0.2, candles: int = 80_000) -> Path:
    (root / "strategies").mkdir(parents=True)
    shutil.copy(SAMPLE, root / "strategies" / "sample_strategy.py")  # unmodified
    exchange = {**json.loads((REPO / "config.json").read_text())["exchange"], "pair_whitelist": SAMPLE_PAIRS}
    # ev_margin 0.004: SampleStrategy wins ~90% of its trades by +1% and loses the rest by
    # -10% (its stoploss); a margin keeps the gate to trades whose EV clearly covers that.
    ml = {"tracking": {"mode": "disabled"}, "registry": {"path": str(root / "registry")},
          "features": {"higher_timeframes": ["1h"]}, "gate": {"ev_margin": 0.004},
          "training": {"trials": 6, "families": ["lightgbm", "logistic"]}}
    write_config(root / "config.json", exchange=exchange, strategy_path=str(root / "strategies"), timeframe="5m",
                 ml=ml, max_open_trades=5)
    write_market(root / "user_data" / "data" / "binance", SAMPLE_PAIRS, "5m", candles, market, seed=5,
                 hour_drift=hour_drift)
    ftml_ok(root, "new-strategy", "-c", "config.json", "--from", "SampleStrategy")  # the one line, written
    gated = (root / "strategies" / "SampleStrategyML.py").read_text()
    assert "from sample_strategy import SampleStrategy" in gated
    assert "class SampleStrategyML(MLGate, SampleStrategy):\n    pass" in gated
    return root


def ftml_ok(root: Path, *args: str):
    done = run_ftml(*args, cwd=root)
    assert done.returncode == 0, (args, done.stderr[-3000:], done.stdout[-3000:])
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
    assert bundle["sides"] == ["long"] and "signal" not in bundle
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
    per_trade = {name: round(float(np.mean([t["profit_ratio"] for t in trades])), 5) for name, trades in
                 (("gated", gated), ("plain", plain))}
    # Measured (4 pairs): gated 73 trades at +0.71% each, plain 205 at -0.55%.
    print("SampleStrategy per trade after training:", per_trade, "trades gated", len(gated), "plain", len(plain))
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


NO_ENTRIES = LABEL_PROBE.replace("class LabelProbe", "class NoEntries").replace(
    'df.loc[(df["rsi"] < 35) & (df["volume"] > 0), "enter_long"] = 1', 'df["enter_long"] = 0')


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    """Six pairs of 1h candles with a planted intraday drift, and two small strategies: LabelProbe and NoEntries."""
    root = tmp_path_factory.mktemp("probe")
    pairs = PAIRS
    (root / "strategies").mkdir()
    (root / "strategies" / "LabelProbe.py").write_text(LABEL_PROBE)
    (root / "strategies" / "NoEntries.py").write_text(NO_ENTRIES)
    exchange = {**json.loads((REPO / "config.json").read_text())["exchange"], "pair_whitelist": pairs}
    write_config(root / "config.json", exchange=exchange, strategy_path=str(root / "strategies"),
                 ml={"tracking": {"mode": "disabled"}, "registry": {"path": str(root / "registry")},
                     "training": {"min_samples": 100, "trials": 2, "families": ["logistic"]}})
    write_market(root / "user_data" / "data" / "binance", pairs, "1h", 6000, "null", seed=2, hour_drift=0.5)
    return root


@pytest.mark.parametrize(("strategy", "args", "expected"), [
    ("Nope", (), "freqtrade cannot load strategy 'Nope'"),
    ("NoEntries", (), "NoEntries made 0 closed trades"),
    ("LabelProbe", ("--timerange", "20240201-20240204"), "need training.min_samples=100"),
])
def test_bad_strategies_are_one_line_exit_2_and_register_nothing(probe, strategy, args, expected):
    done = run_ftml("train", "-c", "config.json", "--strategy", strategy, *args, cwd=probe)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("ftml: error:")]
    assert len(errors) == 1 and expected in errors[0], errors
    assert "Traceback" not in done.stderr
    assert not (probe / "registry" / "registry.json").exists()


ROWS_RANGE = "20240301-20240601"  # a third of the probe's candles: a few hundred trades


def test_training_rows_are_exactly_the_strategys_trades(probe):
    """Every row's realised return is the profit_ratio of the trade freqtrade's own CLI
    makes from that signal candle (stacked backtest, one process), for every row, with the
    label backtest split over three forked processes (groups of pairs)."""
    tmp_path = probe
    (tmp_path / "bt").mkdir()
    ftml_ok(tmp_path, "freqtrade", "--offline", "backtesting", "-c", "config.json", "--strategy", "LabelProbe",
            "--enable-position-stacking", "--max-open-trades", "-1", "--dry-run-wallet", "1000000000000",
            "--stake-amount", "1", "--timerange", ROWS_RANGE, "--export", "trades", "--backtest-directory", "bt")
    trades = load_backtest_stats(tmp_path / "bt")["strategy"]["LabelProbe"]["trades"]
    freqtrade_profit = {(t["pair"], pd.Timestamp(t["open_date"])): t["profit_ratio"] for t in trades
                        if t["exit_reason"] != "force_exit"}
    assert {"roi", "trailing_stop_loss", "stale"} <= {t["exit_reason"] for t in trades}

    code = ("import json, sys; from ml.config import load; from ml.dataset import build_trade_dataset; "
            "from ml.trade_labels import strategy_trades; from ml.features import FeatureEngineer; cfg = load('config.json'); "
            f"run = strategy_trades('config.json', 'LabelProbe', '{ROWS_RANGE}', engineer=FeatureEngineer(cfg.features, '1h')); "
            "d = build_trade_dataset(cfg, run); "
            "print(json.dumps({'rows': [[p, str(t), r, int(y)] for p, t, r, y in "
            "zip(d.pairs, d.times, d.realised, d.y)], 'unresolved': run.unresolved}))")
    done = __import__("subprocess").run([__import__("sys").executable, "-c", code], cwd=tmp_path, capture_output=True,
                                        text=True, timeout=300, env={**os.environ, "FTML_LABEL_WORKERS": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.splitlines()[-1])["rows"]
    assert len(rows) == len(freqtrade_profit) > 100
    for pair, signal, realised, label in rows:
        opened = pd.Timestamp(signal, tz="UTC") + pd.Timedelta("1h")  # filled at the next candle's open
        assert realised == pytest.approx(freqtrade_profit[(pair, opened)], abs=1e-12)
        assert label == int(realised > 0)


def test_a_range_inside_a_longer_cached_run_is_cut_from_it_exactly(probe):
    """A label backtest inside a longer cached one (a walk-forward's steps, cron's scoring
    window) is cut from it: the same trades, to the last column, as running it afresh."""
    config = probe / "config.json"
    strategy_trades(config, "LabelProbe", "20240201-20240701")  # cached and indexed by its range
    inner = strategy_trades(config, "LabelProbe", "20240315-20240501")
    assert inner.cache_hit and "sliced_from" in inner.info, inner.info
    fresh = strategy_trades(config, "LabelProbe", "20240315-20240501", use_cache=False)
    assert not fresh.cache_hit and len(fresh.trades) > 100
    pd.testing.assert_frame_equal(inner.trades, fresh.trades)
    assert inner.unresolved == fresh.unresolved
    assert {"roi", "trailing_stop_loss"} <= set(inner.trades["exit_reason"])  # exits no barrier describes


def test_the_strategys_own_indicators_as_features_pass_freqtrades_bias_checks(probe, tmp_path):
    """ml.features.include_columns adds LabelProbe's own `rsi` to the features: it is in the
    model's inputs and feature set, and lookahead- and recursive-analysis of the gated
    strategy find no bias."""
    root = tmp_path
    shutil.copytree(probe / "strategies", root / "strategies")
    (root / "strategies" / "LabelProbeML.py").write_text(
        "from LabelProbe import LabelProbe\n\nfrom ml.gate import MLGate\n\n\n"
        "class LabelProbeML(MLGate, LabelProbe):\n    pass\n")
    (root / "user_data").symlink_to(probe / "user_data", target_is_directory=True)
    cfg = json.loads((probe / "config.json").read_text())
    cfg["strategy_path"] = str(root / "strategies")
    # ev_margin at its floor: the gate lets (nearly) every entry through, so the checks have trades.
    cfg["ml"] = {**cfg["ml"], "registry": {"path": str(root / "registry")}, "gate": {"ev_margin": -0.05},
                 "features": {"include_columns": ["rsi"]}}
    (root / "config.json").write_text(json.dumps(cfg))
    trained = json.loads(ftml_ok(root, "train", "-c", "config.json", "--strategy", "LabelProbe", "--timerange",
                                 "-20240601").stdout.splitlines()[-1])
    bundle = json.loads((Path(trained["bundle"]) / "bundle.json").read_text())
    assert "rsi" in bundle["feature_names"] and bundle["features"]["include_columns"] == ["rsi"]
    ftml_ok(root, "registry", "promote", "LabelProbe", "1", "-c", "config.json", "--force", "--reason", "bias test")
    done = ftml_ok(root, "freqtrade", "--offline", "lookahead-analysis", "-c", "config.json", "--strategy",
                   "LabelProbeML", "--timerange", "20240615-20240901", "--minimum-trade-amount", "10",
                   "--targeted-trade-amount", "10")  # one backtest per targeted trade
    row = next(ln for ln in done.stdout.splitlines() if "LabelProbeML.py │" in ln)
    cells = [c.strip() for c in row.split("│")[1:-1]]
    assert cells[2] == "No" and cells[4] == "0" and cells[5] == "0" and cells[6] == "", cells
    done = ftml_ok(root, "freqtrade", "--offline", "recursive-analysis", "-c", "config.json", "--strategy",
                   "LabelProbeML", "--timerange", "20240615-20240801", "--pairs", PAIRS[0])
    assert "No lookahead bias on indicators found" in done.stdout + done.stderr


TWO_SIDED = REPO / "tests" / "strategies" / "TwoSided.py"  # long and short; bench/bench_sides.py uses it too
FUTURES_PAIRS = ["ETH/USDT:USDT", "LTC/USDT:USDT", "XRP/USDT:USDT", "ADA/USDT:USDT"]


def test_futures_shorts_are_labelled_and_gated_on_both_sides(tmp_path):
    """Futures, isolated margin, long and short. The planted intraday drift pushes prices up
    in the early UTC hours and down in the late ones, so a short opened before the late
    hours wins more often: its labels must say so, and the gate must filter both sides."""
    root = tmp_path
    (root / "strategies").mkdir()
    shutil.copy(TWO_SIDED, root / "strategies" / "TwoSided.py")
    exchange = {**json.loads((REPO / "config.json").read_text())["exchange"], "pair_whitelist": FUTURES_PAIRS}
    # Binance futures tickers carry no price: freqtrade requires order-book pricing there.
    pricing = {"price_side": "same", "use_order_book": True, "order_book_top": 1}
    write_config(root / "config.json", exchange=exchange, strategy_path=str(root / "strategies"),
                 trading_mode="futures", margin_mode="isolated", stake_currency="USDT", stake_amount=10,
                 dry_run_wallet=1000, entry_pricing=pricing, exit_pricing=pricing,
                 # Calibration gates off: this test is about the sides (measured: the test
                 # block's mean p 0.041 below its hit rate, 2.7 SE; see CALIBRATION_GATES_OFF).
                 ml={"tracking": {"mode": "disabled"}, "registry": {"path": str(root / "registry")},
                     "training": {"trials": 4, "families": ["lightgbm"]}, "gate": CALIBRATION_GATES_OFF})
    write_market(root / "user_data" / "data" / "binance", FUTURES_PAIRS, "1h", 8000, "null", seed=7, hour_drift=0.5,
                 trading_mode="futures", start_price=1.0)
    trained = json.loads(ftml_ok(root, "train", "-c", "config.json", "--strategy", "TwoSided", "--timerange",
                                 "-20241001").stdout.splitlines()[-1])
    bundle = json.loads((Path(trained["bundle"]) / "bundle.json").read_text())
    assert bundle["sides"] == ["long", "short"] and "side_short" in bundle["feature_names"]
    assert set(bundle["outcome_returns"]) == {"long", "short"}
    # Short labels: a short opened at 12-18 UTC (falling hours ahead) wins more often than
    # one opened at 00-06 (rising hours ahead); longs the other way round.
    trades = pd.concat(pd.read_feather(f) for f in (root / "user_data" / "ftml-cache" / "trades").glob("*/trades.feather"))
    hour = pd.to_datetime(trades["open_date"], utc=True).dt.hour
    won = trades["profit_ratio"] > 0
    shorts, longs = trades["is_short"], ~trades["is_short"]
    assert won[shorts & hour.between(12, 17)].mean() > won[shorts & hour.between(0, 5)].mean() + 0.1
    assert won[longs & hour.between(0, 5)].mean() > won[longs & hour.between(12, 17)].mean() + 0.1
    # Long and short, futures: a quarter of the training's label backtest, cut from its
    # cache, and the same quarter backtested afresh with the pairs split over three
    # processes give the same trades.
    engineer = FeatureEngineer(load(root / "config.json").features, "1h")
    cached = strategy_trades(root / "config.json", "TwoSided", "20240701-20241001", engineer=engineer)
    assert cached.cache_hit and "sliced_from" in cached.info, cached.info
    os.environ["FTML_LABEL_WORKERS"] = "3"
    try:
        split = strategy_trades(root / "config.json", "TwoSided", "20240701-20241001", use_cache=False,
                                engineer=engineer)
    finally:
        del os.environ["FTML_LABEL_WORKERS"]
    pd.testing.assert_frame_equal(cached.trades, split.trades)
    assert split.trades["is_short"].any() and (~split.trades["is_short"]).any()

    ftml_ok(root, "new-strategy", "-c", "config.json", "--from", "TwoSided")
    ftml_ok(root, "registry", "validate", "TwoSided", "1", "-c", "config.json")
    ftml_ok(root, "registry", "promote", "TwoSided", "1", "-c", "config.json")
    (root / "bt").mkdir()
    ftml_ok(root, "freqtrade", "--offline", "backtesting", "-c", "config.json", "--strategy-list", "TwoSidedML",
            "TwoSided", "--timerange", "20241005-", "--export", "trades", "--backtest-directory", "bt")
    stats = load_backtest_stats(root / "bt")["strategy"]
    for side in (False, True):
        gated = [t["profit_ratio"] for t in stats["TwoSidedML"]["trades"] if t["is_short"] == side]
        plain = [t["profit_ratio"] for t in stats["TwoSided"]["trades"] if t["is_short"] == side]
        assert 0 < len(gated) < len(plain), (side, len(gated), len(plain))
        assert np.mean(gated) > np.mean(plain), (side, np.mean(gated), np.mean(plain))


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_the_readme_steps_gate_your_own_strategy(probe, tmp_path):
    """The README's "Gate your own strategy", step by step as written, with MyStrategy = a
    copy of LabelProbe and the timeranges moved onto this market's candles."""
    section = readme_section("Gate your own strategy")
    steps = re.findall(r"^\d\. ", section, flags=re.M)
    assert 1 <= len(steps) <= 5
    root = tmp_path
    (root / "strategies").mkdir()
    (root / "strategies" / "MyStrategy.py").write_text(LABEL_PROBE.replace("class LabelProbe", "class MyStrategy"))
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    (root / "strategies" / "MyStrategyML.py").write_text(textwrap.dedent(code))
    (root / "user_data").symlink_to(probe / "user_data", target_is_directory=True)
    cfg = json.loads((probe / "config.json").read_text())
    cfg["strategy_path"] = str(root / "strategies")
    # max_ece 0.1: a few hundred test trades of one strategy measure an ECE around 0.05
    # from sampling noise alone (a fixed ceiling ignores n; issue 12 makes the gate n-aware).
    cfg["ml"] = {**cfg["ml"], "registry": {"path": str(root / "registry")}, "gate": {"max_ece": 0.1}}
    (root / "config.json").write_text(json.dumps(cfg))
    commands = re.findall(r"`(ftml [^`]+)`", section)
    assert [c.split()[1] for c in commands] == ["train", "registry", "registry", "freqtrade"]
    moved = {"20240101-20250501": "-20240601", "20250601-": "20240615-"}
    for command in commands:
        for old, new in moved.items():
            command = command.replace(old, new)
        args = shlex.split(command)[1:]
        if args[0] == "freqtrade":
            (root / "bt").mkdir()
            args += ["--export", "trades", "--backtest-directory", "bt"]
        ftml_ok(root, *args)
    stats = load_backtest_stats(root / "bt")["strategy"]
    assert 0 < stats["MyStrategyML"]["total_trades"] < stats["MyStrategy"]["total_trades"]
