"""What a new user trips over (issue "Tried as a new user would"): real candles overwritten
by synthetic ones, bad arguments with tracebacks, a registry that depends on the working
directory, a typo that reads as "empty", the cron line of the docs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pandas as pd
import pytest

from ml.config import config_folder, from_dict
from ml.demo import prepare
from ml.display import make_console
from ml.registry import open_registry
from ml.synth import write_market
from ml.synth_marker import MARKER, OverwriteRefused
from tests.conftest import REPO, run_ftml, write_config
from tests.test_registry import bundle  # noqa: F401

PAIRS = ["ETH/BTC", "LTC/BTC"]


def real_candles(datadir, pairs=PAIRS, candles=300):
    """Candle files as `freqtrade download-data` leaves them: no ftml marker."""
    from freqtrade.data.history import get_datahandler
    from freqtrade.enums import CandleType

    datadir.mkdir(parents=True, exist_ok=True)
    dates = pd.date_range("2023-01-01", periods=candles, freq="1h", tz="UTC")
    frame = pd.DataFrame({"date": dates, "open": 1.0, "high": 1.1, "low": 0.9, "close": 1.05, "volume": 10.0})
    handler = get_datahandler(datadir, "feather")
    for pair in pairs:
        handler.ohlcv_store(pair, "1h", frame, CandleType.SPOT)
    return {pair: handler._pair_data_filename(datadir, pair, "1h", CandleType.SPOT) for pair in pairs}


def test_synth_never_overwrites_real_candles_without_force(project):
    datadir = project / "user_data" / "data" / "binance"
    files = real_candles(datadir)
    before = {pair: path.read_bytes() for pair, path in files.items()}
    done = run_ftml("data", "synth", "-c", "config.json", "--pairs", *PAIRS, "--candles", "500", cwd=project)
    assert done.returncode == 2 and "--force" in done.stderr and "Traceback" not in done.stderr
    assert {pair: path.read_bytes() for pair, path in files.items()} == before  # untouched
    report = json.loads(run_ftml("data", "check", "-c", "config.json", "--pairs", *PAIRS, "--json", cwd=project).stdout)
    assert [p["synthetic"] for p in report["pairs"]] == [None, None]

    done = run_ftml("data", "synth", "-c", "config.json", "--pairs", *PAIRS, "--candles", "500", "--market", "null",
                    "--seed", "7", "--force", cwd=project)
    assert done.returncode == 0, done.stderr
    report = json.loads(run_ftml("data", "check", "-c", "config.json", "--pairs", *PAIRS, "--json", cwd=project).stdout)
    assert [p["synthetic"] for p in report["pairs"]] == ["synthetic (null market, seed 7)"] * 2
    table = run_ftml("data", "check", "-c", "config.json", "--pairs", *PAIRS, cwd=project).stdout
    assert "2 of 2 files are SYNTHETIC" in table
    # synthetic over synthetic needs no --force; a real download over one file makes it real again
    assert run_ftml("data", "synth", "-c", "config.json", "--pairs", *PAIRS, "--candles", "500", cwd=project).returncode == 0
    real_candles(datadir, ["LTC/BTC"])
    report = json.loads(run_ftml("data", "check", "-c", "config.json", "--pairs", *PAIRS, "--json", cwd=project).stdout)
    assert [bool(p["synthetic"]) for p in report["pairs"]] == [True, False]
    with pytest.raises(OverwriteRefused):
        write_market(datadir, PAIRS, "1h", 200, "null")


def test_the_demo_and_train_say_when_the_data_folder_is_synthetic(project):
    cfg = json.loads((project / "config.json").read_text())
    cfg["exchange"]["pair_whitelist"] = PAIRS
    (project / "config.json").write_text(json.dumps(cfg))
    datadir = project / "user_data" / "data" / "binance"
    real_candles(datadir)
    console = make_console()
    with console.capture() as said:
        _, synthetic, _ = prepare(project / "config.json", console)
    assert not synthetic and "Using real candles" in said.get()

    write_market(datadir, PAIRS, "1h", 500, "planted", seed=4, force=True)
    assert (datadir / MARKER).is_file()
    with console.capture() as said:
        _, synthetic, _ = prepare(project / "config.json", console)
    assert synthetic and "SYNTHETIC" in said.get() and "planted market, seed 4" in said.get()

    from ml.cli import synthetic_pairs

    assert synthetic_pairs(datadir, PAIRS, "1h", "feather") == dict.fromkeys(PAIRS, "synthetic (planted market, seed 4)")


def test_bad_arguments_get_a_usage_line_not_a_traceback(project):
    for command in (["train"], ["data", "check"]):
        done = run_ftml(*command, "-c", "config.json", "--timerange", "2024-bad", cwd=project)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert "is not a freqtrade timerange" in done.stderr and "YYYYMMDD-YYYYMMDD" in done.stderr


def test_the_registry_is_found_from_the_config_files_folder_and_a_typo_is_named(tmp_path, bundle):  # noqa: F811
    folder = tmp_path / "bot"
    folder.mkdir()
    write_config(folder / "config.json")  # "registry": {"path": "registry"}: relative
    open_registry(folder / "registry").register(bundle, "TrendPullback")
    elsewhere = tmp_path / "cron-home"
    elsewhere.mkdir()
    done = run_ftml("registry", "list", "-c", str(folder / "config.json"), "--json", cwd=elsewhere)
    assert done.returncode == 0 and [r["model"] for r in json.loads(done.stdout)] == ["TrendPullback"]
    assert not (elsewhere / "registry").exists()
    done = run_ftml("registry", "list", "typo_model", "-c", str(folder / "config.json"), cwd=elsewhere)
    assert done.returncode == 2 and "no model named 'typo_model'" in done.stderr and "TrendPullback" in done.stderr
    # the gate resolves it the same way, from the config file freqtrade loaded
    freqtrade_config = {"config_files": [str(folder / "config.json")], "ml": {"registry": {"path": "registry"}}}
    cfg = from_dict(freqtrade_config["ml"], base=config_folder(freqtrade_config))
    assert cfg.registry.path == str((folder / "registry").resolve())
    assert from_dict({"registry": {"path": "/abs/store"}}, base=folder).registry.path == "/abs/store"


def test_tables_are_not_cut_at_80_columns_when_piped(project):
    write_market(project / "user_data" / "data" / "binance", PAIRS, "1h", 300, "null")
    done = run_ftml("data", "check", "-c", "config.json", "--pairs", *PAIRS, cwd=project)
    header = next(line for line in done.stdout.splitlines() if "flagged rows / file problems" in line)
    assert len(header) > 80


def operations_cron_line() -> str:
    text = (REPO / "docs" / "OPERATIONS.md").read_text()
    return re.search(r"```cron\n(15 2 .*?)\n```", text, flags=re.S).group(1)


def test_the_documented_cron_line_creates_its_log_folder_and_records_every_run(project):
    """Run the crontab line of docs/OPERATIONS.md as cron would (sh, its own cwd), in a
    project with no candles: the run fails, and says so in one JSON line and the log."""
    line = operations_cron_line()
    command = line.split(" ", 5)[5]  # drop the five schedule fields
    command = command.replace("cd /opt/freqtrade-ml", f"cd {project}").replace(".venv/bin/ftml", f"{REPO}/.venv/bin/ftml")
    command = command.replace(" --download", "")  # no network here
    shutil.rmtree(project / "user_data", ignore_errors=True)
    for run in (1, 2):
        subprocess.run(["sh", "-c", command], env={"PATH": "/usr/bin:/bin", "HOME": str(project)}, timeout=300)
        lines = (project / "user_data" / "logs" / "retrain.jsonl").read_text().splitlines()
        assert len(lines) == run  # one line per run, not two
        assert json.loads(lines[-1])["decision"] == "error" and json.loads(lines[-1])["exit_code"] == 2
    assert "Retrain failed (exit 2)" in (project / "user_data" / "logs" / "retrain.log").read_text()


def test_the_systemd_unit_runs_as_a_user_after_the_network_with_one_thread():
    text = (REPO / "docs" / "OPERATIONS.md").read_text()
    unit = re.search(r"ftml-retrain.service`:\n\n```ini\n(.*?)```", text, flags=re.S).group(1)
    assert "Wants=network-online.target" in unit and "After=network-online.target" in unit
    assert re.search(r"^User=\S+", unit, flags=re.M)
    assert "Environment=OMP_NUM_THREADS=1" in unit  # what the Makefile sets
    assert "export OMP_NUM_THREADS ?= 1" in (REPO / "Makefile").read_text()


def test_the_plots_say_what_they_draw():
    from ml.plots import history_figure, reliability_figure

    values = [0.69, None, 0.68, None, 0.67, 0.7]
    states = ["COMPLETE", "PRUNED", "COMPLETE", "PRUNED", "COMPLETE", "COMPLETE"]
    ax = history_figure(values, states).axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["complete", "best so far", "pruned trial (2)"]
    assert sorted(line.get_xdata()[0] for line in ax.get_lines() if line.get_label().startswith("pruned") or
                  line.get_label().startswith("_")) == [1, 3]  # one line where each pruned trial ran
    rows = [{"count": n, "mean_p": p, "hit_rate": h} for n, p, h in [(40, 0.42, 0.40), (400, 0.5, 0.52), (12, 0.6, 0.75)]]
    fig = reliability_figure(rows, rows, [0.01, 0.05], method="sigmoid")
    ax = fig.axes[0]
    assert "calibrator: sigmoid" in ax.get_title() and "452 trades" in ax.get_title()
    assert {t.get_text() for t in ax.texts} == {"n=40", "n=400", "n=12"}
    assert any("calibrated (sigmoid)" in t.get_text() for t in ax.get_legend().get_texts())


def test_the_docker_files_match_the_pinned_freqtrade_and_the_config():
    pinned = re.search(r"^freqtrade==(\S+)$", (REPO / "constraints.txt").read_text(), flags=re.M).group(1)
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert f"FROM freqtradeorg/freqtrade:{pinned}\n" in dockerfile
    compose = (REPO / "docker" / "docker-compose.yml").read_text()
    config = json.loads((REPO / "config.json").read_text())
    mounts = dict(re.findall(r'- "\.\./([^:"]+):(/freqtrade/[^:"]+)(?::ro)?"', compose))
    # everything the config names relative to /freqtrade is the project's own folder
    for folder in (config["user_data_dir"], config["strategy_path"], config["ml"]["registry"]["path"]):
        assert mounts[folder] == f"/freqtrade/{folder}"
    assert mounts["config.json"] == "/freqtrade/config.json"
    strategy = re.search(r"--strategy (\S+)", compose).group(1)
    assert (REPO / config["strategy_path"] / f"{strategy}.py").is_file()


def test_a_failed_recalibration_is_recorded_like_a_failed_retrain(project):
    """cron runs `ftml recalibrate` too: a failure is one JSON line on stdout and in
    recalibrate.jsonl, and an entry in recalibrate.log, never only a traceback on stderr."""
    done = run_ftml("recalibrate", "-c", "config.json", cwd=project)  # no candles, no model
    assert done.returncode == 2 and "Traceback" not in done.stderr
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["decision"] == "error" and line["exit_code"] == 2
    logs = project / "user_data" / "logs"
    recorded = json.loads((logs / "recalibrate.jsonl").read_text().splitlines()[-1])
    assert recorded["decision"] == "error" and "time" in recorded
    assert "Recalibrate failed (exit 2)" in (logs / "recalibrate.log").read_text()
