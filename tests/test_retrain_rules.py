"""Retrain's rules without a full round: noise is not a win, any data format, the lock owner
file, and an operator's rollback is never overridden. Each reproduces a reviewed defect."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from filelock import FileLock

from ml.demo import _ranges
from ml.registry import ProductionMoved, open_registry
from ml.retrain import Retrain, _read_owner, logloss_refusal, paired_gain, row_log_loss
from ml.synth import write_market
from tests.conftest import run_ftml, write_config
from tests.test_registry import bundle  # noqa: F401

HOUR = np.timedelta64(1, "h")


def test_a_log_loss_gain_inside_two_standard_errors_does_not_promote():
    """Before: any improvement won, however small. Two equally good models (the same true p,
    different noise in their forecasts) differ by chance; that must read as 'no gain'."""
    rng = np.random.default_rng(0)
    n = 3000
    times = np.datetime64("2025-01-01T00:00") + np.arange(n) * HOUR
    p_true = rng.uniform(0.3, 0.7, n)
    y = (rng.random(n) < p_true).astype(float)
    champion = np.clip(p_true + rng.normal(0, 0.03, n), 0.01, 0.99)
    challenger = np.clip(p_true + rng.normal(0, 0.03, n), 0.01, 0.99)
    gain = paired_gain(row_log_loss(y, champion), row_log_loss(y, challenger), times, 24 * HOUR)
    scores = {"gain": gain, "champion": {"log_loss": 0.69}, "challenger": {"log_loss": 0.69 - gain["mean"]}}
    if gain["mean"] > 0:  # the old rule would have promoted on this
        assert logloss_refusal(scores, 0.0) is not None
    noisy = {**scores, "gain": {"mean": 1e-4, "se": 2e-3}}
    assert "2 SE" in logloss_refusal(noisy, 0.0)
    # A real improvement (the challenger knows p, the champion only the base rate) passes.
    real = paired_gain(row_log_loss(y, np.full(n, y.mean())), row_log_loss(y, p_true), times, 24 * HOUR)
    assert real["mean"] > 2 * real["se"] > 0
    assert logloss_refusal({**scores, "gain": real}, 0.0) is None


@pytest.mark.parametrize("data_format", ["parquet", "json", "feather"])
def test_retrain_and_demo_read_any_data_format(tmp_path, data_format):
    datadir = tmp_path / "data"
    write_market(datadir, ["A/BTC", "B/BTC"], "1h", 500, "null", 1, data_format=data_format)
    ft = {"pairs": ["A/BTC", "B/BTC"], "datadir": datadir, "timeframe": "1h", "data_format": data_format,
          "user_data_dir": str(tmp_path)}
    job = Retrain.__new__(Retrain)
    job.ft, job.now = ft, None
    assert str(job.data_end()) == "2024-01-21 19:00:00+00:00"  # 500 hourly candles from 2024-01-01
    job.now = pd.Timestamp("2024-01-10", tz="UTC")  # retrain --now: the newest candle closed by then
    assert str(job.data_end()) == "2024-01-09 23:00:00+00:00"
    assert _ranges(datadir, "A/BTC", "1h", data_format) == ("-20240116", "20240117-")


def test_an_unreadable_lock_owner_file_is_tolerated(tmp_path):
    owner = tmp_path / "retrain.lock.json"
    for text in ('{"pid": 12', "[1, 2]", "", "\xff"):
        owner.write_text(text)
        assert _read_owner(owner) == {}
    write_config(tmp_path / "config.json", ml={"tracking": {"mode": "disabled"}})
    user_data = tmp_path / "user_data"
    user_data.mkdir()
    (user_data / "retrain.lock.json").write_text('{"pid": 4')  # a holder caught mid-write
    with FileLock(str(user_data / "retrain.lock")):
        done = run_ftml("retrain", "-c", "config.json", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["decision"] == "locked"


def test_promote_refuses_when_production_moved_since_the_run_started(tmp_path, bundle):  # noqa: F811
    """Retrain read v1 as champion; meanwhile the operator rolled back to... something else
    (here: promoted v2 by hand). Retrain's challenger v3 must not override that."""
    reg = open_registry(tmp_path / "registry")
    for _ in range(3):
        reg.register(bundle, "m")
    reg.promote("m", 1, force=True, reason="champion")
    champion = reg.read()["models"]["m"]["production"]
    reg.promote("m", 2, force=True, reason="operator")
    with pytest.raises(ProductionMoved, match="production is v2 now, not v1"):
        reg.promote("m", 3, force=True, reason="retrain", expected_production=champion)
    assert reg.read()["models"]["m"]["production"] == 2
    assert reg.promote("m", 3, force=True, reason="retrain", expected_production=2)["id"] == 3


PARENT = """
import subprocess, sys, time
from ml.retrain import _die_with_parent
child = subprocess.Popen(["sleep", "120"], preexec_fn=_die_with_parent)
print(child.pid, flush=True)
time.sleep(120)
"""


def test_a_killed_retrain_takes_its_backtest_child_with_it():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    parent.kill()  # SIGKILL: no cleanup code runs in the parent
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline and _alive(child_pid):
        time.sleep(0.1)
    assert not _alive(child_pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie is dead, only not yet reaped
    except FileNotFoundError:
        return False


def test_scratch_left_by_a_killed_run_is_removed_by_the_next(tmp_path):
    write_config(tmp_path / "config.json", ml={"tracking": {"mode": "disabled"}, "training": {"strategy": "TrendPullback"}})
    stale = tmp_path / "user_data" / "retrain-tmp" / "challenger-abc123"
    (stale / "registry").mkdir(parents=True)
    done = run_ftml("retrain", "-c", "config.json", cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "No 1h candles" in done.stderr  # a real failure, said in one line
    assert not stale.exists()
    assert "removed 1 scratch folders" in (tmp_path / "user_data" / "logs" / "retrain.log").read_text()
