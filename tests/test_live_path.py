"""Live-path defects seen in freqtrade's real bot loop (issue "Live-path bugs"): the kill
switch, open trades keeping the exits of the model that opened them, one warning per bad
candle, and a refused 5m configuration that used to exit 0."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from freqtrade.enums import RunMode

from ml.features import FeatureEngineer
from ml.registry import RegistryError, open_registry
from ml.synth import simulate
from tests.conftest import SHARED_DATA, run_ftml, write_config
from tests.test_registry import bundle  # noqa: F401
from tests.test_strategies import dry_run_on_a_copy, live_frames, load_strategy, planted  # noqa: F401


def test_disable_and_enable_are_logged_and_need_a_reason(tmp_path, bundle):  # noqa: F811
    reg = open_registry(tmp_path / "registry")
    reg.register(bundle, "m")
    reg.promote("m", 1, force=True, reason="t")
    with pytest.raises(RegistryError, match="--reason"):
        reg.disable("m", "")
    reg.disable("m", "exchange outage")
    with pytest.raises(RegistryError, match="disabled by the operator"):
        __import__("ml.predictor", fromlist=["ProductionModel"]).ProductionModel.load(reg, "m")
    reg.enable("m")
    assert [e["action"] for e in reg.history("m")][-2:] == ["disable", "enable"]
    assert reg.read()["models"]["m"]["production"] == 1  # production never moved


@pytest.mark.slow
def test_kill_switch_closes_the_gate_on_the_next_candle_and_enable_reopens_it(planted, tmp_path, caplog):  # noqa: F811
    store = tmp_path / "registry"
    shutil.copytree(planted / "registry", store)
    strategy = load_strategy(planted, "TrendPullbackML", RunMode.DRY_RUN, registry={"path": str(store)})
    strategy.analyze_ticker(live_frames(planted, "P1/BTC", "2025-07-01"), {"pair": "P1/BTC"})
    assert strategy.model.version == 1
    write_config(tmp_path / "config.json", ml={"registry": {"path": str(store)}})
    done = run_ftml("registry", "disable", "TrendPullback", "--reason", "exchange outage", "-c", "config.json",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    closed = strategy.analyze_ticker(live_frames(planted, "P1/BTC", "2025-07-01 01:00"), {"pair": "P1/BTC"})
    assert strategy.model is None and closed["ml_proba"].isna().all()
    assert "disabled by the operator (exchange outage)" in caplog.text
    assert run_ftml("registry", "enable", "TrendPullback", "-c", "config.json", cwd=tmp_path).returncode == 0
    strategy.analyze_ticker(live_frames(planted, "P1/BTC", "2025-07-01 02:00"), {"pair": "P1/BTC"})
    assert strategy.model is not None and strategy.model.version == 1


def test_a_zero_volume_candle_warns_once_per_pair_not_once_per_candle(caplog):
    frame, _ = simulate(1500, "1h", "null", 1)
    frame.loc[1200, "volume"] = 0.0
    engineer = FeatureEngineer()
    with caplog.at_level(logging.WARNING):
        for end in range(1300, 1310):  # a bot re-transforms its window on every new candle
            engineer.transform(frame.iloc[end - 1250:end].reset_index(drop=True), "ETH/BTC")
        engineer.transform(frame, "LTC/BTC")
    lines = [r.getMessage() for r in caplog.records if "zero volume" in r.getMessage()]
    assert len(lines) == 2 and "(ETH/BTC)" in lines[0] and "(LTC/BTC)" in lines[1]


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data/freqtrade-testdata")
def test_a_configuration_freqtrade_refuses_is_an_error_not_exit_0(tmp_path):
    datadir = tmp_path / "user_data" / "data" / "binance"
    datadir.mkdir(parents=True)
    shutil.copy(SHARED_DATA / "ETH_BTC-5m.feather", datadir)
    cfg = write_config(tmp_path / "config.json", timeframe="5m", ml={"tracking": {"mode": "disabled"}})
    data = json.loads(cfg.read_text())
    data["exchange"]["pair_whitelist"] = ["ETH/BTC"]
    cfg.write_text(json.dumps(data))
    done = run_ftml("freqtrade", "--offline", "backtesting", "-c", "config.json", "--strategy", "TrendPullbackML",
                    cwd=tmp_path)
    assert done.returncode == 2
    line = next(ln for ln in done.stderr.splitlines() if ln.startswith("ftml: error:"))
    assert "5376 candles to start" in line and "higher_timeframes" in line
