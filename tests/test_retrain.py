"""`ftml retrain`: decisions, locking, crash recovery, dry run and the summary line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ml.registry import open_registry
from ml.synth import write_market
from tests.conftest import CALIBRATION_GATES_OFF, REPO, run_ftml, write_config

pytestmark = pytest.mark.slow
PAIRS = [f"P{i}/BTC" for i in range(8)]
SUMMARY_FIELDS = {"decision", "model", "champion", "challenger", "window", "scores", "backtests", "reasons",
                  "durations", "seconds"}


def project(root: Path, window_days=120, train_days=240) -> Path:
    write_config(root / "config.json", max_open_trades=40,
                 exchange={**json.loads((REPO / "config.json").read_text())["exchange"], "pair_whitelist": PAIRS},
                 # Calibration gates off: this module tests the round's decisions on one
                 # strategy's few hundred trades (see CALIBRATION_GATES_OFF).
                 ml={"tracking": {"mode": "disabled"}, "gate": CALIBRATION_GATES_OFF,
                     "training": {"strategy": "TrendPullback", "trials": 4, "families": ["lightgbm", "logistic"]},
                     "retrain": {"window_days": window_days, "train_days": train_days, "strategy": "TrendPullbackML"},
                     # TrendPullback makes ~100 trades a month on these 8 pairs: two months
                     # give the recalibration of a kept champion enough resolved trades.
                     "recalibration": {"window_days": 60}})
    (root / "user_data").mkdir(exist_ok=True)
    return root


def market(root: Path, kind: str, candles: int, **process) -> None:
    """"planted": an intraday drift that TrendPullback's own trades show (flip_at reverses
    it); "null": nothing to predict."""
    if kind == "planted":
        process = {"hour_drift": 0.5, **process}
    write_market(root / "user_data" / "data" / "binance", PAIRS, "1h", candles, "null", 3, **process)


def retrain(root: Path, *args: str, wait=True, config="config.json"):
    args = ("retrain", "-c", config, *args)
    if not wait:
        return subprocess.Popen([sys.executable, "-m", "ml.cli", *args], cwd=root, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    done = run_ftml(*args, cwd=root, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = project(tmp_path_factory.mktemp("retrain"))
    market(root, "planted", 10000)
    first = retrain(root)
    return root, first


def test_first_run_on_an_empty_registry_promotes(planted):
    root, first = planted
    assert first["decision"] == "promoted" and first["champion"] is None and first["challenger"] == 1
    assert open_registry(root / "registry").production("TrendPullback")["id"] == 1
    assert SUMMARY_FIELDS <= set(first)
    assert first["backtests"]["challenger"]["trades"] > 0
    assert (root / "user_data" / "logs" / "retrain.log").read_text().count("Retrain promoted") == 1
    # The promoted challenger's calibration block ended window_days ago: its calibration is
    # refitted on the scoring window's resolved trades, or kept with the reason.
    recal = first["recalibration"]
    assert recal["decision"] in ("applied", "kept") and recal["resolved_rows"] >= 100, recal
    if recal["decision"] == "applied":  # the later tests of this module expect v1 as trained
        assert open_registry(root / "registry").rollback_calibration("TrendPullback", "test")["id"] == 1


def test_second_run_on_the_same_data_keeps_the_champion(planted):
    root, _ = planted
    second = retrain(root)
    assert second["decision"] == "kept" and second["champion"] == 1
    reg = open_registry(root / "registry")
    assert reg.production("TrendPullback")["id"] == 1
    loser = reg.version("TrendPullback", second["challenger"])
    assert loser["status"] == "failed" and "does not beat the champion" in loser["notes"]
    assert set(second["backtests"]) == {"champion", "challenger"}
    assert {"champion", "challenger", "gain"} == set(second["scores"])
    # Trained on the same data, the challenger is no better: its paired gain is noise.
    assert second["scores"]["gain"]["mean"] <= 2 * second["scores"]["gain"]["se"]
    assert second["drift"]["max_psi"] >= 0
    # The kept champion's calibration is refitted on its newest resolved trades (or kept,
    # with the reason, when the refit does not beat it on the newest ones).
    recal = second["recalibration"]
    assert recal["decision"] in ("applied", "kept"), recal
    assert recal["resolved_rows"] >= 100 and recal["log_loss"]["current"] > 0
    champion = reg.production("TrendPullback")
    assert (champion.get("calibration_revision") == 1) == (recal["decision"] == "applied")
    if recal["decision"] == "applied":
        # Later runs of this module expect the champion as trained (a revision moves the
        # start of the scoring window to its fit_end): roll the calibration back.
        assert reg.rollback_calibration("TrendPullback", "test")["calibration_revision"] is None


def test_dry_run_changes_nothing_and_download_without_network_goes_on(planted):
    root, _ = planted
    before = (root / "registry" / "registry.json").read_bytes()
    summary = retrain(root, "--dry-run", "--download")
    assert summary["decision"] == "dry-run" and summary["would"] in ("promoted", "kept")
    assert (root / "registry" / "registry.json").read_bytes() == before
    assert any("download failed" in n for n in summary["notes"])


def quick_config(root: Path) -> str:
    """A config whose policy skips right after the drift check: a fast run that still locks."""
    cfg = json.loads((root / "config.json").read_text())
    # The champion knows candles up to ~120 days before the data's end (its age counts from
    # train_end to the newest candle): younger than 365 days, so the policy skips.
    cfg["ml"]["retrain"] = {**cfg["ml"]["retrain"], "when": "drift_or_age", "max_age_days": 365, "max_psi": 5.0}
    (root / "quick.json").write_text(json.dumps(cfg))
    return "quick.json"


def test_a_regime_flip_promotes_the_challenger(tmp_path):
    # 200 training days: one strategy's trades over 100 days are too few to calibrate on.
    # The second run's window (last 60 days) and training span (200 days before it) both lie
    # after the flip at candle 7000.
    # A stronger drift than the module's market: 200 days of one strategy's trades are few.
    root = project(tmp_path, window_days=60, train_days=200)
    market(root, "planted", 7000, hour_drift=0.8)
    assert retrain(root)["decision"] == "promoted"
    market(root, "planted", 13300, flip_at=7000, hour_drift=0.8)  # new candles where the edge has reversed
    after = retrain(root)
    assert after["decision"] == "promoted", after["reasons"]
    assert after["scores"]["challenger"]["log_loss"] < after["scores"]["champion"]["log_loss"]
    assert open_registry(root / "registry").production("TrendPullback")["id"] == after["challenger"]


def test_a_null_market_never_promotes(tmp_path):
    root = project(tmp_path)
    market(root, "null", 10000)
    summary = retrain(root)
    assert summary["decision"] == "not promoted" and summary["reasons"]
    reg = open_registry(root / "registry")
    assert reg.read()["models"]["TrendPullback"]["production"] is None
    assert reg.version("TrendPullback", 1)["status"] == "failed"


def test_concurrent_runs_one_works_one_is_locked(planted):
    root, _ = planted
    first = retrain(root, "--dry-run", wait=False)
    owner = root / "user_data" / "retrain.lock.json"
    deadline = time.time() + 60
    while not owner.exists() and time.time() < deadline:
        time.sleep(0.1)
    try:
        second = retrain(root, "--dry-run")
        # It answered without waiting for the lock: the first run is still working. (A
        # wall-clock bound here failed on a machine running at half speed.)
        assert first.poll() is None
        assert second["decision"] == "locked" and second["holder"]["pid"] == first.pid
    finally:  # never leave the first run holding the lock for the next test
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0 and json.loads(out.strip().splitlines()[-1])["decision"] == "dry-run"


def test_a_killed_run_leaves_a_lock_the_next_run_recovers(planted):
    root, _ = planted
    victim = retrain(root, wait=False)
    owner = root / "user_data" / "retrain.lock.json"
    deadline = time.time() + 60
    while not owner.exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(3)  # mid-way: training
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert owner.exists()  # the kill left its marker behind
    summary = retrain(root, config=quick_config(root))
    assert any("recovered a stale lock" in n for n in summary["notes"])
    reg = open_registry(root / "registry")
    assert not [v for v in reg.read()["models"]["TrendPullback"]["versions"].values() if reg.verify_version(v)]


def test_drift_or_age_policy_skips_a_fresh_stable_champion(planted):
    root, _ = planted
    summary = retrain(root, config=quick_config(root))
    assert summary["decision"] == "skipped" and "no drift above 5.0" in summary["reasons"][0]
    assert "train" not in summary["durations"]  # nothing was trained


def test_a_tampered_champion_stops_the_run_before_any_work(planted, tmp_path):
    import shutil

    root, _ = planted
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("retrain.lock*", "models", "backtest_results"))
    reg = open_registry(copy / "registry")
    entry = reg.production("TrendPullback")
    model = next((copy / "registry" / entry["path"]).glob("model.*"))
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    done = run_ftml("retrain", "-c", "config.json", cwd=copy, timeout=300)
    assert done.returncode == 2 and "fails verification" in done.stderr and "rollback" in done.stderr
