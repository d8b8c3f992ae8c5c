"""ML-gated strategies through real freqtrade (offline runner) and freqtrade's live-loop API."""

from __future__ import annotations

import json
import re
import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from freqtrade.configuration import Configuration
from freqtrade.data.btanalysis.bt_fileutils import load_backtest_stats
from freqtrade.data.history import load_pair_history
from freqtrade.enums import RunMode
from freqtrade.resolvers import StrategyResolver

from ml.registry import open_registry
from tests.conftest import CALIBRATION_GATES_OFF, REPO, run_ftml, write_config

pytestmark = pytest.mark.slow
PAIRS = [f"P{i}/BTC" for i in range(8)]
TRAIN_RANGE = "20240101-20250501"
LATER = "20250601-20251001"  # after every candle the model saw
MODEL = "TrendPullback"  # a strategy's model is named after the strategy


def make_project(root: Path, market: str, seed: int, ml: dict | None = None, hour_drift: float = 0.5) -> Path:
    """Eight pairs of 1h candles; ``hour_drift`` plants an intraday drift, an edge that the
    example strategies' own trades show (0: a market nothing can predict)."""
    ml_section = {"tracking": {"mode": "disabled"},
                  "training": {"strategy": "TrendPullback", "trials": 6, "families": ["lightgbm", "logistic"]},
                  "registry": {"path": str(root / "registry")}} | (ml or {})
    write_config(root / "config.json", ml=ml_section, max_open_trades=50,
                 exchange={**json.loads((REPO / "config.json").read_text())["exchange"], "pair_whitelist": PAIRS})
    done = run_ftml("data", "synth", "-c", "config.json", "--candles", "16000", "--market", market,
                    "--seed", str(seed), "--hour-drift", str(hour_drift), cwd=root)
    assert done.returncode == 0, done.stderr
    return root


def ftml_ok(root: Path, *args: str):
    done = run_ftml(*args, cwd=root)
    assert done.returncode == 0, (args, done.stderr[-3000:])
    return done


def backtest(root: Path, export: str, *args: str, strategies=("TrendPullbackML", "TrendPullback")):
    (root / export).mkdir(exist_ok=True)
    done = run_ftml("freqtrade", "--offline", "backtesting", "-c", "config.json", "--strategy-list", *strategies,
                    "--export", "trades", "--backtest-directory", export, *args, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_backtest_stats(root / export)["strategy"], done.stdout + done.stderr


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """Planted intraday drift; TrendPullback's model trained on its own trades of 2024-01 ..
    2025-05, validated and promoted."""
    # ev_margin 0.005: the gate keeps trades whose EV clearly covers the fees and noise.
    # Calibration gates off: this module tests the gate's mechanics (see CALIBRATION_GATES_OFF).
    root = make_project(tmp_path_factory.mktemp("planted"), "null", 4,
                        ml={"gate": {"ev_margin": 0.005, **CALIBRATION_GATES_OFF}})
    trained = json.loads(ftml_ok(root, "train", "-c", "config.json", "--timerange", TRAIN_RANGE).stdout.splitlines()[-1])
    assert trained["model"] == MODEL and trained["verdict"] == "edge", trained["reasons"]
    ftml_ok(root, "registry", "validate", MODEL, "1", "-c", "config.json")
    ftml_ok(root, "registry", "promote", MODEL, "1", "-c", "config.json")
    return root


def load_strategy(root: Path, name: str, runmode=RunMode.BACKTEST, **ml_overrides):
    config = Configuration.from_files([str(root / "config.json")])
    config["strategy"] = name
    config["runmode"] = runmode
    for key, value in ml_overrides.items():
        config["ml"][key] = {**config["ml"].get(key, {}), **value}
    strategy = StrategyResolver.load_strategy(config)
    strategy.ft_bot_start()
    return strategy


def test_gated_beats_its_twin_after_the_training_period(planted):
    stats, log = backtest(planted, "bt_planted", "--timerange", LATER)
    gated, twin = stats["TrendPullbackML"], stats["TrendPullback"]
    assert 0 < gated["total_trades"] < twin["total_trades"]
    mean = {k: np.mean([t["profit_ratio"] for t in s["trades"]]) for k, s in (("gated", gated), ("twin", twin))}
    assert mean["gated"] > mean["twin"]
    # Every gated entry had ml_ev > ev_margin on its signal candle (recomputed independently).
    strategy = load_strategy(planted, "TrendPullbackML")
    assert {t["exit_reason"] for t in gated["trades"]} <= {"roi", "stop_loss", "time_exit", "force_exit"}
    margin = strategy.ev_margin.value
    by_pair = {}
    for trade in gated["trades"]:
        pair = trade["pair"]
        if pair not in by_pair:
            candles = load_pair_history(pair, "1h", planted / "user_data" / "data" / "binance")
            by_pair[pair] = strategy.advise_indicators(candles, {"pair": pair}).set_index("date")
        signal_candle = pd.Timestamp(trade["open_date"]) - pd.Timedelta("1h")
        row = by_pair[pair].loc[signal_candle]
        assert row["base_signal"] and row["ml_ev"] > margin, (pair, signal_candle, row["ml_ev"])
        assert not trade["enter_tag"]  # the strategy's own tag (it sets none), kept
    assert "In-sample guard" not in log  # the whole range is after training


def test_in_sample_guard_blocks_training_candles_and_says_so(planted):
    stats, log = backtest(planted, "bt_insample", "--timerange", "20241201-20250801",
                          strategies=("TrendPullbackML",))
    manifest = open_registry(planted / "registry").production(MODEL)
    limit = pd.Timestamp(manifest["train_end"]) + pd.Timedelta("1h") * 12
    opens = [pd.Timestamp(t["open_date"]) for t in stats["TrendPullbackML"]["trades"]]
    assert opens and min(opens) > limit
    assert "In-sample guard:" in log and "no entries there" in log


def add_revision(store: Path, fit_end: str, a: float = 1.0, b: float = 0.0) -> dict:
    """A calibration revision of the production model (as ftml recalibrate records one)."""
    reg = open_registry(store)
    entry = reg.production(MODEL)
    base = json.loads((store / entry["path"] / "calibrator.json").read_text())
    text = json.dumps({"method": "revised", "a": a, "b": b, "base": base})
    return reg.add_calibration(MODEL, entry["id"], text, {"fit_end": fit_end}, reason="test")


def test_lookahead_and_recursive_analysis_of_gated_strategies(planted, tmp_path):
    """With a recalibrated model: the revision's calibrator is what scores the candles."""
    store = tmp_path / "registry"
    shutil.copytree(planted / "registry", store)
    add_revision(store, "2025-05-20T00:00:00+00:00", a=1.1, b=0.05)
    cfg = json.loads((planted / "config.json").read_text())
    cfg["ml"]["registry"] = {"path": str(store)}
    (tmp_path / "recalibrated.json").write_text(json.dumps(cfg))
    config = str(tmp_path / "recalibrated.json")
    for name in ("TrendPullbackML",):
        done = run_ftml("freqtrade", "--offline", "lookahead-analysis", "-c", config, "--strategy", name,
                        "--timerange", "20250601-20250901", "--minimum-trade-amount", "10",
                        "--targeted-trade-amount", "20", cwd=planted)
        assert done.returncode == 0, done.stderr[-3000:]
        row = next(ln for ln in done.stdout.splitlines() if f"{name}.py │" in ln)
        cells = [c.strip() for c in row.split("│")[1:-1]]
        assert cells[2] == "No" and cells[4] == "0" and cells[5] == "0" and cells[6] == "", cells
        assert "(calibration r1)" in done.stdout + done.stderr  # the revision was in use
        done = run_ftml("freqtrade", "--offline", "recursive-analysis", "-c", config, "--strategy", name,
                        "--timerange", "20250601-20250701", "--pairs", "P0/BTC", cwd=planted)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "No lookahead bias on indicators found" in done.stdout + done.stderr


def test_a_calibration_revision_is_hot_reloaded_and_moves_the_in_sample_guard(planted, tmp_path, caplog):
    store, strategy, p_old = live_copy(planted, tmp_path)
    assert strategy.model.revision is None and 0 < p_old < 1
    # A revision that shifts the base rate up by 1 in logit: every probability rises.
    add_revision(store, "2025-06-30T00:00:00+00:00", b=1.0)
    nxt = strategy.analyze_ticker(live_frames(planted, "P1/BTC", "2025-07-01 01:00"), {"pair": "P1/BTC"})
    assert strategy.model.version == 1 and strategy.model.revision == 1
    p_new = nxt["ml_proba"].iloc[-2]  # the same candle as p_old, scored by the revision
    assert p_new == pytest.approx(1 / (1 + (1 - p_old) / p_old * np.exp(-1.0)), abs=1e-4)
    assert "(calibration r1)" in caplog.text
    # The guard now covers the revision's fit window: candles up to its fit_end + embargo.
    assert strategy.model.train_end == pd.Timestamp("2025-06-30", tz="UTC")
    assert nxt.loc[nxt["date"] <= pd.Timestamp("2025-06-30 12:00", tz="UTC"), "ml_blocked"].all()
    assert not nxt["ml_blocked"].iloc[-1]
    # Rolled back: the training calibrator again, on the next candle.
    open_registry(store).rollback_calibration(MODEL, "test")
    back = strategy.analyze_ticker(live_frames(planted, "P1/BTC", "2025-07-01 02:00"), {"pair": "P1/BTC"})
    assert strategy.model.revision is None and back["ml_proba"].iloc[-3] == pytest.approx(p_old, abs=1e-4)
    # A revision file changed after it was recorded: the gate closes, nothing is traded.
    add_revision(store, "2025-06-30T00:00:00+00:00", b=0.5)
    revision_file = store / MODEL / "v1" / "calibrator.r2.json"
    revision_file.write_text(revision_file.read_text().replace("0.5", "5.0"))
    closed = strategy.analyze_ticker(live_frames(planted, "P1/BTC", "2025-07-01 03:00"), {"pair": "P1/BTC"})
    assert strategy.model is None and not closed["enter_long"].fillna(0).any()
    assert "sha256 mismatch" in caplog.text


@pytest.mark.parametrize("breakage", ["no_model", "corrupt", "feature_mismatch", "constant", "other_strategy"])
def test_fails_closed_with_one_log_line(planted, tmp_path, breakage):
    root = tmp_path
    shutil.copy(planted / "config.json", root / "config.json")
    cfg = json.loads((root / "config.json").read_text())
    (root / "user_data").symlink_to(planted / "user_data", target_is_directory=True)
    if breakage == "no_model":
        cfg["ml"]["registry"]["path"] = str(root / "empty_registry")
        expected = "No production model 'TrendPullback'"
    else:
        shutil.copytree(planted / "registry", root / "registry")
        cfg["ml"]["registry"]["path"] = str(root / "registry")
        if breakage == "corrupt":
            entry = open_registry(root / "registry").production(MODEL)
            model = next((root / "registry" / entry["path"]).glob("model.*"))
            data = bytearray(model.read_bytes())
            data[-10] ^= 0xFF
            model.write_bytes(bytes(data))
            expected = "sha256 mismatch"
        elif breakage == "feature_mismatch":
            cfg["ml"]["features"] = {"periods": [6, 14, 30]}
            expected = "features.periods"
        else:  # a well-formed version the gate must still refuse
            reg = open_registry(root / "registry")
            copy = root / "bundle_copy"
            shutil.copytree(root / "registry" / reg.production(MODEL)["path"], copy)
            if breakage == "constant":
                (copy / "calibrator.json").write_text(json.dumps({"method": "constant", "p": 0.9}))
                expected = "constant calibrator"
            else:
                manifest = json.loads((copy / "bundle.json").read_text())
                (copy / "bundle.json").write_text(json.dumps({**manifest, "strategy": "MeanReversion"}))
                expected = "was trained on the trades of 'MeanReversion'"
            version = reg.register(copy, MODEL)["id"]
            reg.promote(MODEL, version, force=True, reason=breakage)
    (root / "config.json").write_text(json.dumps(cfg))
    (root / "bt").mkdir()
    # One month after training: ~100 signals of the un-gated strategy on these 8 pairs.
    done = run_ftml("freqtrade", "--offline", "backtesting", "-c", "config.json", "--strategy", "TrendPullbackML",
                    "--timerange", "20250601-20250701", "--export", "trades", "--backtest-directory", "bt", cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert load_backtest_stats(root / "bt")["strategy"]["TrendPullbackML"]["total_trades"] == 0
    log = done.stdout + done.stderr
    closed = [ln for ln in log.splitlines() if "ML gate closed" in ln]
    assert len(closed) == 1 and expected in closed[0], closed


def test_hyperopt_tunes_ev_margin_offline(planted):
    done = run_ftml("freqtrade", "--offline", "hyperopt", "-c", "config.json", "--strategy", "TrendPullbackML",
                    "--hyperopt-loss", "SharpeHyperOptLoss", "--spaces", "buy", "--epochs", "5", "-j", "1",
                    "--random-state", "7", "--timerange", "20250601-20250801", "--disable-param-export", cwd=planted)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    # ev_margin takes 31 values: freqtrade skips an epoch whose draw repeats an earlier one.
    saved = int(re.search(r"(\d+) epochs? saved", log).group(1))
    skipped = re.search(r"(\d+) epochs? skipped due to duplicate parameters", log)
    assert saved >= 2 and saved + (int(skipped.group(1)) if skipped else 0) == 5, log[-2000:]
    assert "ev_margin" in log


def test_hyperopt_of_exits_warns_and_reports_what_a_backtest_with_its_parameters_gives(planted, tmp_path):
    """Tuning roi/stoploss of a gated strategy: one warning that the model learned from other
    exits, and the profit hyperopt reports is the profit of a backtest with those exits
    (they once differed: 1.82% vs 0.52% per trade, when the gate replaced the exits)."""
    done = run_ftml("freqtrade", "--offline", "hyperopt", "-c", "config.json", "--strategy", "TrendPullbackML",
                    "--hyperopt-loss", "SharpeHyperOptLoss", "--spaces", "roi", "stoploss", "--epochs", "4", "-j", "1",
                    "--timerange", "20250601-20250801", "--disable-param-export", cwd=planted)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "hyperopt tunes the exits of TrendPullback (spaces roi, stoploss)" in done.stdout + done.stderr
    results = max((planted / "user_data" / "hyperopt_results").glob("*.fthypt"), key=lambda p: p.stat().st_mtime)
    best = [json.loads(line) for line in results.read_text().splitlines() if json.loads(line)["is_best"]][-1]
    tuned = best["params_details"]
    config = json.loads((planted / "config.json").read_text())
    config.update(minimal_roi=tuned["roi"], stoploss=tuned["stoploss"]["stoploss"])
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "bt").mkdir()
    done = run_ftml("freqtrade", "--offline", "backtesting", "-c", str(tmp_path / "config.json"), "--strategy",
                    "TrendPullbackML", "--timerange", "20250601-20250801", "--export", "trades",
                    "--backtest-directory", str(tmp_path / "bt"), cwd=planted)
    assert done.returncode == 0, done.stderr[-3000:]
    stats = load_backtest_stats(tmp_path / "bt")["strategy"]["TrendPullbackML"]
    assert stats["total_trades"] == best["results_metrics"]["total_trades"] > 0
    assert stats["profit_total"] == pytest.approx(best["results_metrics"]["profit_total"], rel=1e-9)
    log = done.stdout + done.stderr
    assert "TrendPullback exits differently from the trades TrendPullback v1 learned from (minimal_roi" in log


def test_plot_dataframe_shows_the_gates_probabilities_and_refused_signals(planted):
    strategy = load_strategy(planted, "TrendPullbackML")
    frame = live_frames(planted, "P1/BTC", "2025-08-01", candles=2000)
    analysed = strategy.analyze_ticker(frame, {"pair": "P1/BTC"})
    refused = analysed["ml_rejected_long"].notna()
    assert refused.sum() > 0 and (analysed.loc[refused, "enter_long"] == 0).all()
    assert (analysed.loc[refused, "ml_rejected_long"] == analysed.loc[refused, "close"]).all()
    # as documented: a backtest exports the trades, plot-dataframe draws them with the signals
    backtest(planted, "user_data/backtest_results", "--timerange", "20250601-20250801", strategies=("TrendPullbackML",))
    done = run_ftml("freqtrade", "--offline", "plot-dataframe", "-c", "config.json", "--strategy", "TrendPullbackML",
                    "--timerange", "20250601-20250801", "--pairs", "P1/BTC", cwd=planted)
    assert done.returncode == 0, done.stderr[-3000:]
    html = (planted / "user_data" / "plot" / "freqtrade-plot-P1_BTC-1h.html").read_text()
    assert "long signal refused by the ML gate" in html and "ML probability" in html and "ml_ev" in html


# ---------------------------------------------------------------- live loop, in-process
def live_frames(root: Path, pair: str, end: str, candles: int = 1200) -> pd.DataFrame:
    full = load_pair_history(pair, "1h", root / "user_data" / "data" / "binance")
    return full[full["date"] <= pd.Timestamp(end, tz="UTC")].tail(candles).reset_index(drop=True)


def live_copy(planted: Path, tmp_path: Path) -> tuple[Path, object, float]:
    """A copy of the planted registry, the gated strategy in dry-run on it, and its probability
    on the candle of 2025-07-01 00:00 (P1/BTC)."""
    store = tmp_path / "registry"
    shutil.copytree(planted / "registry", store)
    strategy = load_strategy(planted, "TrendPullbackML", RunMode.DRY_RUN, registry={"path": str(store)})
    first = strategy.analyze_ticker(live_frames(planted, "P1/BTC", "2025-07-01"), {"pair": "P1/BTC"})
    return store, strategy, first["ml_proba"].iloc[-1]


def test_hot_reload_switches_model_on_the_next_candle(planted, tmp_path, caplog):
    store, strategy, p_old = live_copy(planted, tmp_path)
    assert 0 < p_old < 1 and strategy.model.version == 1
    # A new version whose calibrator says ~0.9 everywhere: unmistakable on the next candle.
    # (A sigmoid with a tiny slope: a *constant* calibrator is refused, it has no ranking.)
    reg = open_registry(store)
    entry = reg.production(MODEL)
    new_bundle = tmp_path / "v2"
    shutil.copytree(store / entry["path"], new_bundle)
    (new_bundle / "calibrator.json").write_text(json.dumps({"method": "sigmoid", "a": 1e-6, "b": 2.1972246}))
    reg.register(new_bundle, MODEL)
    reg.promote(MODEL, 2, force=True, reason="hot reload test")
    same_candle = strategy.analyze_ticker(live_frames(planted, "P1/BTC", "2025-07-01"), {"pair": "P1/BTC"})
    assert same_candle["ml_proba"].iloc[-1] == p_old  # at most one check per new candle
    nxt = strategy.analyze_ticker(live_frames(planted, "P1/BTC", "2025-07-01 01:00"), {"pair": "P1/BTC"})
    assert strategy.model.version == 2 and nxt["ml_proba"].iloc[-1] == pytest.approx(0.9, abs=1e-4)
    # Promoted to a version that cannot be loaded (tampered after its promotion): the bot
    # keeps the verified v2 (the operator wanted a newer model, not to stop) and says why.
    # A rollback to a broken version closes the gate instead (next test).
    broken = tmp_path / "v3"
    shutil.copytree(new_bundle, broken)
    reg.register(broken, MODEL)
    reg.promote(MODEL, 3, force=True, reason="promoted, then tampered with")
    (store / MODEL / "v3" / "calibrator.json").write_text("{}")
    kept = strategy.analyze_ticker(live_frames(planted, "P1/BTC", "2025-07-01 02:00"), {"pair": "P1/BTC"})
    assert strategy.model.version == 2 and kept["ml_proba"].iloc[-1] == pytest.approx(0.9, abs=1e-4)
    assert "v3 was promoted but cannot be loaded" in caplog.text and "still trading v2" in caplog.text
    for hour in ("03:00", "04:00", "05:00"):  # refused once: not re-hashed or re-logged per candle
        strategy.analyze_ticker(live_frames(planted, "P1/BTC", f"2025-07-01 {hour}"), {"pair": "P1/BTC"})
    assert caplog.text.count("cannot be loaded") == 1 and strategy.model.version == 2


def test_rollback_to_a_broken_version_closes_the_gate(planted, tmp_path, caplog):
    """The operator rolls back (v2 was bad) to v1, whose file was damaged since: the bot must
    not keep trading v2, the model that was pulled."""
    store = tmp_path / "registry"
    shutil.copytree(planted / "registry", store)
    reg = open_registry(store)
    v1 = reg.production(MODEL)
    reg.register(store / v1["path"], MODEL)
    reg.promote(MODEL, 2, force=True, reason="v2 goes live")
    strategy = load_strategy(planted, "TrendPullbackML", RunMode.DRY_RUN, registry={"path": str(store)})
    strategy.analyze_ticker(live_frames(planted, "P1/BTC", "2025-07-01"), {"pair": "P1/BTC"})
    assert strategy.model.version == 2
    reg.rollback(MODEL, reason="v2 misbehaves")
    model_file = next((store / v1["path"]).glob("model.*"))
    model_file.write_bytes(model_file.read_bytes()[::-1])  # damaged after the rollback
    later = strategy.analyze_ticker(live_frames(planted, "P1/BTC", "2025-07-01 01:00"), {"pair": "P1/BTC"})
    assert strategy.model is None and later["ml_proba"].isna().all()
    assert "moved to v1, which cannot be loaded" in caplog.text


def test_config_ev_margin_is_the_strategys_margin(planted, tmp_path):
    """ml.gate.ev_margin 0.01 in config.json used to be ignored (the strategy traded at 0.0)."""
    strategy = load_strategy(planted, "TrendPullbackML", gate={"ev_margin": 0.01})
    assert strategy.ev_margin.value == pytest.approx(0.01)
    frame = strategy.advise_entry(strategy.advise_indicators(live_frames(planted, "P3/BTC", "2025-09-01", 3000),
                                                             {"pair": "P3/BTC"}), {"pair": "P3/BTC"})
    entered = frame["enter_long"].fillna(0) == 1
    assert entered.any() and (frame.loc[entered, "ml_ev"] > 0.01).all()
    assert ((frame["ml_ev"] > 0) & (frame["ml_ev"] <= 0.01) & frame["base_signal"]).any()  # the margin bit
    entry = open_registry(planted / "registry").production(MODEL)
    assert entry["ev_margin"] == 0.005  # what training scored the EV gate at (config then), recorded
    assert load_strategy(planted, "TrendPullbackML").ev_margin.value == pytest.approx(0.005)


def dry_run_on_a_copy(planted: Path, tmp_path: Path):
    """A dry-run TrendPullbackML on a copy of the planted registry, after one candle of P2/BTC,
    with an in-memory trade database: (strategy, store, open date and rate of a next trade)."""
    from freqtrade.persistence import init_db

    store = tmp_path / "registry"
    shutil.copytree(planted / "registry", store)
    strategy = load_strategy(planted, "TrendPullbackML", RunMode.DRY_RUN, registry={"path": str(store)})
    frame = strategy.analyze_ticker(live_frames(planted, "P2/BTC", "2025-08-01"), {"pair": "P2/BTC"})
    init_db("sqlite://")
    return strategy, store, frame["date"].iloc[-1].to_pydatetime() + timedelta(hours=1), float(frame["close"].iloc[-1])


def test_open_trade_keeps_its_exits_when_the_model_disappears(planted, tmp_path):
    from freqtrade.persistence import Trade

    strategy, store, open_date, rate = dry_run_on_a_copy(planted, tmp_path)
    trade = Trade(pair="P2/BTC", open_rate=rate, open_date=open_date, amount=1.0, stake_amount=rate,
                  fee_open=0.001, fee_close=0.001, exchange="binance", is_open=True, leverage=1.0)
    trade.adjust_stop_loss(rate, strategy.stoploss, initial=True)
    # The model disappears: production archived away, then the files deleted.
    reg = open_registry(store)
    doc = json.loads(reg.index.read_text())
    doc["models"][MODEL]["production"] = None
    reg.index.write_text(json.dumps(doc))
    later = strategy.analyze_ticker(live_frames(planted, "P2/BTC", "2025-08-01 01:00"), {"pair": "P2/BTC"})
    assert strategy.model is None and not later["enter_long"].fillna(0).any()
    when = open_date + timedelta(hours=2)
    stop = strategy.should_exit(trade, rate * 0.96, when, enter=False, exit_=False, low=rate * 0.96, high=rate)
    assert any(e.exit_type.name == "STOP_LOSS" for e in stop)
    take = strategy.should_exit(trade, rate * 1.04, when, enter=False, exit_=False, low=rate, high=rate * 1.04)
    assert any(e.exit_type.name == "ROI" for e in take)
    timed = strategy.should_exit(trade, rate, open_date + timedelta(hours=24), enter=False, exit_=False,
                                 low=rate, high=rate)
    assert any(e.exit_reason == "time_exit" for e in timed)


# ---------------------------------------------------------------- null market
def test_null_market_is_not_promoted_and_forced_gate_trades_little(tmp_path):
    root = make_project(tmp_path, "null", 4, hour_drift=0.0)
    trained = json.loads(ftml_ok(root, "train", "-c", "config.json", "--timerange", TRAIN_RANGE).stdout.splitlines()[-1])
    assert trained["verdict"] == "no edge"
    validated = run_ftml("registry", "validate", MODEL, "1", "-c", "config.json", cwd=root)
    assert validated.returncode == 1
    refused = run_ftml("registry", "promote", MODEL, "1", "-c", "config.json", cwd=root)
    assert refused.returncode == 2 and "failed its gates" in refused.stderr
    ftml_ok(root, "registry", "promote", MODEL, "1", "-c", "config.json", "--force",
            "--reason", "null-market test")
    stats, log = backtest(root, "bt_null", "--timerange", LATER)
    # At most 1% of the signals (the plain twin's trades are fewer than its signals, so this
    # is stricter). On a null market the calibration block's parsimony picks a constant
    # calibrator, and the gate refuses a model with nothing to select on; a model with a
    # ranking would be judged trade by trade on EV instead. Either way: say why.
    assert stats["TrendPullbackML"]["total_trades"] <= 0.01 * stats["TrendPullback"]["total_trades"]
    assert stats["TrendPullback"]["total_trades"] >= 100
    assert "constant calibrator" in log or "ML gate:" in log


def test_fallback_and_guard_off_are_explicit_and_reported(planted, tmp_path):
    root = tmp_path
    cfg = json.loads((planted / "config.json").read_text())
    (root / "user_data").symlink_to(planted / "user_data", target_is_directory=True)
    cfg["ml"]["registry"]["path"] = str(root / "empty_registry")
    cfg["ml"]["gate"] = {"fallback_ungated": True}
    (root / "config.json").write_text(json.dumps(cfg))
    stats, log = backtest(root, "bt_fallback", "--timerange", LATER, strategies=("TrendPullbackML", "TrendPullback"))
    assert stats["TrendPullbackML"]["total_trades"] == stats["TrendPullback"]["total_trades"] > 0
    assert "fallback_ungated is on" in log
    cfg["ml"]["registry"]["path"] = str(planted / "registry")
    cfg["ml"]["gate"] = {"in_sample_guard": False}
    (root / "config.json").write_text(json.dumps(cfg))
    stats, log = backtest(root, "bt_guard_off", "--timerange", "20241201-20250801", strategies=("TrendPullbackML",))
    assert "IN-SAMPLE GUARD OFF" in log and "In-sample guard:" not in log
    limit = pd.Timestamp(open_registry(planted / "registry").production(MODEL)["train_end"])
    assert min(pd.Timestamp(t["open_date"]) for t in stats["TrendPullbackML"]["trades"]) <= limit
