"""`ftml freqtrade --offline --replay ... trade --dry-run`: freqtrade's real bot loop (Worker,
FreqtradeBot, its sqlite database) on a planted synthetic market, with the registry changed
under it while it runs.

The bot runs a user's strategy gated in one line (tests/strategies/EveryFewHours.py, which
enters every six hours): its entries come often enough that each step of a scenario has its
own trades within a few replayed days. A replayed candle costs the bot ~35 ms per pair
(freqtrade's candle refresh and the strategy's analysis), so three pairs."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ml.errors import FtmlError
from ml.registry import open_registry
from ml.replay import FREQTRADE_CHECKED, PATCHED, parse_replay
from tests.conftest import (
    CALIBRATION_GATES_OFF,
    as_a_shell_starts_it,
    gated_strategy_project,
    run_ftml,
)

PAIRS = ["P0/BTC", "P1/BTC", "P2/BTC"]
MODEL = "EveryFewHours"
GATED = "EveryFewHoursML"
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d{3} ", re.MULTILINE)
RULE_EXITS = {"roi", "stop_loss", "time_exit", "exit_signal", "trailing_stop_loss"}


def undecorated(function, name: str):
    """The function under freqtrade's retrier decorators (they keep it in a closure cell)."""
    for cell in getattr(function, "__closure__", None) or ():
        inner = cell.cell_contents
        if callable(inner) and getattr(inner, "__name__", "") == name:
            return undecorated(inner, name)
    return function


def test_patched_freqtrade_methods_still_have_the_checked_signatures():
    """ml.replay replaces these freqtrade methods: a freqtrade upgrade that changes one must
    fail here, loudly, before a replay silently serves the wrong data."""
    import freqtrade

    assert freqtrade.__version__ == FREQTRADE_CHECKED, (
        f"freqtrade {freqtrade.__version__} is installed, ml.replay was checked against {FREQTRADE_CHECKED}: "
        "re-check every method in ml.replay.PATCHED, then update FREQTRADE_CHECKED")
    for dotted, expected in PATCHED.items():
        module, owner, method = dotted.rsplit(".", 2)
        function = undecorated(getattr(getattr(importlib.import_module(module), owner), method), method)
        found = tuple(inspect.signature(function).parameters)
        assert found == expected, f"freqtrade changed {dotted}{found}; ml.replay patches it as {expected}"


def test_replay_start_and_speed_parse_and_bad_input_is_one_clear_error():
    start, speed = parse_replay("20250601:20")
    assert (str(start), speed) == ("2025-06-01 00:00:00+00:00", 20.0)
    start, speed = parse_replay("2025-06-01T12:00")  # the colon of the time is not a speed
    assert (str(start), speed) == ("2025-06-01 12:00:00+00:00", 0.0)
    assert parse_replay("2025-06-01T12:00:2.5")[1] == 2.5
    with pytest.raises(FtmlError, match="not a date"):
        parse_replay("June")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """Three pairs with a planted intraday drift; EveryFewHours's model trained on its trades
    of 2024-09 .. 2025-05 and promoted (v1)."""
    ml = {"training": {"trials": 4, "families": ["logistic"]},
          # Calibration gates off: this module tests the bot's mechanics (see CALIBRATION_GATES_OFF).
          "gate": CALIBRATION_GATES_OFF,
          # No challenger backtest in cron's retrain: this module tests the bot picking up
          # what cron promotes, not the decision (tests/test_retrain.py).
          "retrain": {"window_days": 60, "train_days": 240, "strategy": GATED, "backtest": False},
          "recalibration": {"window_days": 60}}
    root = gated_strategy_project(tmp_path_factory.mktemp("replay"), PAIRS, 14000, 4, ml, hour_drift=0.5)
    for args in (("train", "--timerange", "20240901-20250501"), ("registry", "validate", MODEL, "1"),
                 ("registry", "promote", MODEL, "1")):
        done = run_ftml(*args, "-c", "config.json", cwd=root)
        assert done.returncode == 0, (args, done.stderr[-3000:])
    return root


def replay_args(start: str, *args: str) -> list[str]:
    return ["freqtrade", "--offline", "--replay", start, *args]


def test_replay_needs_dry_run_and_never_writes_into_an_existing_database(project):
    done = run_ftml(*replay_args("20250601", "--replay-candles", "5"), "trade", "-c", "config.json",
                    "--strategy", GATED, cwd=project)
    assert done.returncode == 2 and "needs `trade --dry-run`" in done.stderr
    existing = project / "user_data" / "my-dry-run.sqlite"
    existing.write_bytes(b"the user's own trades")
    done = run_ftml(*replay_args("20250601", "--replay-candles", "5"), "trade", "--dry-run", "-c", "config.json",
                    "--strategy", GATED, "--db-url", f"sqlite:///{existing}", cwd=project)
    assert done.returncode == 2 and "needs a new database" in done.stderr
    assert existing.read_bytes() == b"the user's own trades"


def test_archiving_production_needs_force_and_a_reason(project, tmp_path):
    store = tmp_path / "registry"
    shutil.copytree(project / "registry", store, ignore=shutil.ignore_patterns("*.lock"))
    reg = open_registry(store)
    production = reg.read()["models"][MODEL]["production"]
    with pytest.raises(Exception, match="--force --reason"):
        reg.archive(MODEL, production)
    reg.archive(MODEL, production, reason="retire", force=True)
    assert reg.read()["models"][MODEL]["production"] is None
    assert reg.rollback(MODEL, reason="back")["status"] == "production"


@pytest.mark.slow
def test_live_entries_equal_the_backtest_entries(project):
    """Over the same candles with the same model, the bot's entries (pair, candle, side, tag,
    fill price) are the backtest's; what differs is listed, each with its cause."""
    done = run_ftml(*replay_args("20250601", "--replay-until", "20250606"), "trade", "--dry-run", "-c",
                    "config.json", "--strategy", GATED, cwd=project)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Replay finished at 2025-06-06T00:00:00" in done.stdout + done.stderr
    summary = json.loads((project / "user_data" / "replay" / f"{GATED}.replay.json").read_text())
    assert summary["candles"] == 5 * 24 + 1 and summary["strategy_s_per_candle"] > 0
    report = run_ftml("replay-report", "-c", "config.json", "--strategy", GATED, "--json", cwd=project)
    result = json.loads(report.stdout.strip().splitlines()[-1])
    assert report.returncode == 0 and result["unexplained"] == 0, result
    assert result["matched"] >= 5 and result["models"] == {"v1": result["replay_entries"]}
    assert result["matched"] >= 0.7 * max(result["replay_entries"], result["backtest_entries"]), result
    for difference in result["only_replay"] + result["only_backtest"]:
        assert "held a trade on the pair" in difference["why"]
    print("replay vs backtest:", {k: v if not isinstance(v, list) else len(v) for k, v in result.items()})


class Bot:
    """The replay bot in a child process, its log a file this test reads while it runs."""

    def __init__(self, root: Path, db: Path, *args: str) -> None:
        self.log_file = root / "bot.log"
        self.db = db
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(self.log_file, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ml.cli", *args, "--db-url", f"sqlite:///{db}"],
                cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=as_a_shell_starts_it)

    def log(self) -> str:
        return self.log_file.read_text()

    def now(self) -> pd.Timestamp:
        """The bot's replayed time: the newest log line's time."""
        times = LOG_TIME.findall(self.log())
        return pd.Timestamp(times[-1], tz="UTC") if times else pd.Timestamp(0, tz="UTC")

    def wait_for(self, text: str | None = None, until: str | None = None, *,
                 open_trade_since: pd.Timestamp | None = None, timeout: float = 300) -> pd.Timestamp:
        """Poll until ``text`` is logged (its line's replayed time is returned), the replayed
        time reaches ``until``, and the database holds a trade opened at or after
        ``open_trade_since`` that is still open."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "the bot stopped:\n" + self.log()[-4000:]
            log = self.log()
            at = log.find(text) if text else 0
            ready = (at >= 0 and (until is None or self.now() >= pd.Timestamp(until, tz="UTC"))
                     and (open_trade_since is None or self.open_trades(open_trade_since)))
            if ready:
                if text:
                    return pd.Timestamp(LOG_TIME.findall(log[:at])[-1], tz="UTC")
                return self.now()
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {text or until}:\n" + self.log()[-4000:])

    def open_trades(self, since: pd.Timestamp | None = None) -> list[int]:
        """Ids of the open trades (opened at or after ``since``)."""
        if not self.db.exists():
            return []
        with sqlite3.connect(self.db) as con:
            rows = con.execute("SELECT id, open_date FROM trades WHERE is_open = 1").fetchall()
        return [i for i, opened in rows
                if since is None or pd.Timestamp(opened, tz="UTC") >= since]

    def stop(self) -> int:
        # A replay that reached --replay-until ends by itself: it is only waited for.
        if self.process.poll() is None and "Replay finished" not in self.log():
            self.process.send_signal(signal.SIGINT)  # freqtrade's own clean shutdown
        return self.process.wait(timeout=120)


def trades_with_versions(db: Path) -> pd.DataFrame:
    with sqlite3.connect(db) as con:
        trades = pd.read_sql_query("SELECT id, pair, open_date, close_date, is_open, exit_reason FROM trades", con)
        custom = pd.read_sql_query("SELECT ft_trade_id, cd_key, cd_value FROM trade_custom_data", con)
    versions = custom[custom["cd_key"] == "ml_version"].set_index("ft_trade_id")["cd_value"].astype(int)
    trades["ml_version"] = trades["id"].map(versions)
    for col in ("open_date", "close_date"):
        trades[col] = pd.to_datetime(trades[col], utc=True, format="mixed")
    return trades


@pytest.mark.slow
def test_the_bot_follows_the_registry_fails_closed_and_picks_up_cron(project):
    """One bot run while the registry changes under it: promote B (switched without a
    restart), promote a corrupted C (B keeps trading), archive production (no entries; open
    trades exit by their rules), then `ftml retrain` as cron would (picked up next candle)."""
    store = project / "registry"
    reg = open_registry(store)
    v1 = reg.production(MODEL)
    for _ in range(2):  # B and C: the same trained bundle registered again
        reg.register(store / v1["path"], MODEL)
    db = project / "user_data" / "scenario.sqlite"
    bot = Bot(project, db, *replay_args("20250601:10", "--replay-until", "20250801"), "trade", "--dry-run", "-c",
              "config.json", "--strategy", GATED)
    try:
        # Each phase lasts until it has its own trade, not a fixed span of candles (every
        # replayed candle costs time; see the module's docstring).
        bot.wait_for(f"gates long of {MODEL}", open_trade_since=pd.Timestamp(0, tz="UTC"))
        reg.promote(MODEL, 2, force=True, reason="B goes live")
        switched_b = bot.wait_for(f"switched {MODEL} from v1 to v2 without a restart")

        model_file = next((store / reg.version(MODEL, 3)["path"]).glob("model.*"))
        model_file.write_bytes(model_file.read_bytes()[::-1])
        # A corrupted production version, as a hand edit or a failing disk would leave it:
        # promote's own checks (which refuse it) are bypassed here on purpose.
        reg.smoke = lambda *args, **kwargs: None
        reg.verify_version = lambda entry: []
        reg.promote(MODEL, 3, force=True, reason="C, corrupted")
        kept_b = bot.wait_for("v3 was promoted but cannot be loaded")
        assert "still trading v2" in bot.log()

        bot.wait_for(open_trade_since=switched_b)  # a trade of B, open when production is archived
        open_at_archive, snapshot_at = bot.open_trades(), bot.now()
        archived = run_ftml("registry", "archive", MODEL, "3", "--force", "--reason", "retire every model", "-c",
                            "config.json", cwd=project)
        assert archived.returncode == 0, archived.stderr
        closed = bot.wait_for("has no production version any more")

        cron = run_ftml("retrain", "-c", "config.json", cwd=project)
        assert cron.returncode == 0, cron.stderr[-3000:]
        decision = json.loads(cron.stdout.strip().splitlines()[-1])
        assert decision["decision"] == "promoted", decision
        cron_done = bot.now()
        picked = bot.wait_for(f"switched {MODEL} from no model to v{decision['challenger']}")
        assert picked <= cron_done + pd.Timedelta("1h"), "the promoted model was not picked up on the next candle"
        bot.wait_for(until=str((picked + pd.Timedelta("2h")).tz_localize(None)))
        while_running = bot.log()
    finally:
        code = bot.stop()
    assert code in (0, 130), bot.log()[-3000:]
    assert "Traceback" not in while_running  # the bot never crashed while the registry changed
    # The test's own SIGINT can land inside one of freqtrade's threads, a database commit of
    # its cleanup, or the replayed exchange's candle coroutine (asyncio then logs the
    # interrupted task): tracebacks that end in the KeyboardInterrupt itself. Any other frame
    # of this project's code after the stop is a real error.
    after_stop = bot.log()[len(while_running):]
    ours = [tb for tb, error in re.findall(r"(Traceback \(most recent call last\):\n(?:[ \t].*\n)+)(\S.*)", after_stop)
            if re.search(r'File "[^"]*/(ml|strategies)/', tb) and not error.startswith("KeyboardInterrupt")]
    assert not ours, after_stop[-3000:]

    trades = trades_with_versions(db)
    print("trades per model version:", trades["ml_version"].value_counts().to_dict(), "switch B", switched_b,
          "C refused", kept_b, "closed", closed, "picked", picked)
    assert trades["ml_version"].notna().all()
    # v1 until B was switched in, then B, then (an entry in the two hours after the pick-up)
    # the version cron promoted
    expected = pd.Series(2, index=trades.index).where(trades["open_date"] >= switched_b, 1)
    expected = expected.where(trades["open_date"] < picked, decision["challenger"])
    assert (trades["ml_version"] == expected).all(), trades[["open_date", "ml_version"]]
    assert {1, 2} <= set(trades["ml_version"]) and 3 not in set(trades["ml_version"])
    assert not ((trades["open_date"] > closed) & (trades["open_date"] < picked)).any(), "entries while closed"
    exits = trades[trades["id"].isin(open_at_archive)]
    # Paced at 10 candles a second, a trade may exit by its rules while the archive command
    # runs, before the gate logs that it closed: exits are checked from the snapshot on.
    assert len(exits) >= 1 and (exits["close_date"] >= snapshot_at - pd.Timedelta("1h")).all()
    assert set(exits["exit_reason"]) <= RULE_EXITS, exits[["pair", "exit_reason"]]
