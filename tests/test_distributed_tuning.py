"""Distributed tuning on a real PostgreSQL server (Debian's package, started by the test).

Two `ftml train` processes share one study: they must propose distinct trials, create the
study without a race, register one model, and never write the storage password down. An
unreachable server and a missing driver end in one line, not a traceback or a hang.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from ml.registry import open_registry
from ml.synth import write_market
from tests.conftest import gated_strategy_project, run_ftml, strategy_project, write_config

PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
PASSWORD = "s3cret-pw"  # trust auth ignores it; the test checks it is never written down


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres_url():
    if not PG_BIN or (os.geteuid() == 0 and not shutil.which("runuser")):
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql; .ci/run does)")
    bin_dir = Path(PG_BIN[-1])
    # Not under pytest's 0700 tmp folders: the server runs as the postgres user.
    root = Path(tempfile.mkdtemp(prefix="ftml-pg-"))
    root.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", _free_port()
    subprocess.run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]),
                   check=True, capture_output=True)
    subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"), "-o",
                                 f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"]),
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg2://postgres:{PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _project(root: Path) -> Path:
    return strategy_project(root, ["ETH/BTC", "LTC/BTC"], 3000, "planted", 2,
                            ml={"training": {"families": ["lightgbm", "logistic"]}})


@pytest.mark.slow
def test_two_processes_share_one_study_with_distinct_trials_and_one_registration(tmp_path, postgres_url):
    root = _project(tmp_path)
    common = ["train", "-c", "config.json", "--trials", "6", "--storage", postgres_url, "--study", "shared"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "ml.cli", *common, *extra], cwd=root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for extra in ([], ["--worker-only"])]  # started together: a creation race on a fresh database
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    owner, worker = (json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)
    assert worker["worker_only"] and "registered" not in worker
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    done = [t for t in study.trials if t.state.is_finished()]
    assert len(done) == 12
    points = {json.dumps(t.params, sort_keys=True) for t in done}
    assert len(points) == 12  # distinct: one seed in both processes gave 6 points twice
    assert len({t.user_attrs["pid"] for t in done}) == 2
    versions = open_registry(root / "registry").read()["models"]["EveryFewHours"]["versions"]
    assert list(versions) == [str(owner["registered"]["version"])]  # registered once
    assert owner["trials"]["finished"] == 12  # the owner waited for the worker's trials
    for written in (root / "registry" / "registry.json", Path(owner["bundle"]) / "bundle.json",
                    Path(owner["bundle"]) / "metrics.json"):
        assert PASSWORD not in written.read_text(), written
    assert "postgres:***@" in (Path(owner["bundle"]) / "bundle.json").read_text()
    assert PASSWORD not in outputs[0][0] + outputs[0][1] + outputs[1][0] + outputs[1][1]


def test_an_unreachable_server_is_one_line_and_quick(tmp_path):
    write_config(tmp_path / "config.json", ml={"tracking": {"mode": "disabled"}, "training": {"strategy": "TrendPullback"}})
    write_market(tmp_path / "user_data" / "data" / "binance", ["ETH/BTC"], "1h", 1500, "null", 1)
    start = time.monotonic()
    done = run_ftml("train", "-c", "config.json", "--pairs", "ETH/BTC", "--trials", "1",
                    "--storage", f"postgresql+psycopg2://u:{PASSWORD}@127.0.0.1:{_free_port()}/x", cwd=tmp_path)
    assert done.returncode == 2 and "Cannot use the Optuna storage" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr
    assert time.monotonic() - start < 120


def test_a_missing_driver_names_the_extra(tmp_path):
    pytest.importorskip("sqlalchemy")
    if __import__("importlib").util.find_spec("psycopg") is not None:
        pytest.skip("psycopg (3) is installed here")
    write_config(tmp_path / "config.json", ml={"tracking": {"mode": "disabled"}, "training": {"strategy": "TrendPullback"}})
    write_market(tmp_path / "user_data" / "data" / "binance", ["ETH/BTC"], "1h", 1500, "null", 1)
    done = run_ftml("train", "-c", "config.json", "--pairs", "ETH/BTC", "--trials", "1",
                    "--storage", f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:5/x", cwd=tmp_path)
    assert done.returncode == 2 and "freqtrade-ml[postgres]" in done.stderr and "Traceback" not in done.stderr


def test_a_silent_server_times_out_instead_of_hanging(tmp_path):
    """A server that accepts the connection and never answers (a hung database, a firewall
    black hole behind a proxy) must not hold `ftml train` or the retrain lock for ever."""
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port, held = listener.getsockname()[1], []
    stop = threading.Event()

    def accept_and_say_nothing():
        listener.settimeout(0.5)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept_and_say_nothing, daemon=True)
    thread.start()
    try:
        write_config(tmp_path / "config.json", ml={"tracking": {"mode": "disabled"}, "training": {"strategy": "TrendPullback"}})
        write_market(tmp_path / "user_data" / "data" / "binance", ["ETH/BTC"], "1h", 1500, "null", 1)
        start = time.monotonic()
        done = run_ftml("train", "-c", "config.json", "--pairs", "ETH/BTC", "--trials", "1",
                        "--storage", f"postgresql+psycopg2://u:{PASSWORD}@127.0.0.1:{port}/x", cwd=tmp_path,
                        timeout=180)
        assert done.returncode == 2 and "Cannot use the Optuna storage" in done.stderr, done.stderr[-2000:]
        assert held and time.monotonic() - start < 90
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def test_a_resumed_study_chooses_only_among_this_runs_families():
    """Resuming with --families logistic on a study whose best trial is lightgbm used to fit
    the lightgbm trial anyway."""
    from ml.tuning import best_trial

    study = optuna.create_study()
    dist = {"family": optuna.distributions.CategoricalDistribution(["lightgbm", "logistic"])}
    for family, value in (("lightgbm", 0.60), ("logistic", 0.65), ("logistic", 0.64)):
        study.add_trial(optuna.trial.create_trial(params={"family": family}, distributions=dist, value=value))
    assert best_trial(study, ["lightgbm", "logistic"]).params["family"] == "lightgbm"
    chosen = best_trial(study, ["logistic"])
    assert chosen.params["family"] == "logistic" and chosen.value == 0.64
    with pytest.raises(RuntimeError, match="no complete trial"):
        best_trial(study, ["xgboost"])


@pytest.mark.slow
def test_walkforward_trains_its_steps_in_worker_processes_into_a_postgres_storage(tmp_path, postgres_url):
    """`ftml walkforward --workers 2` with the Optuna storage on PostgreSQL: every step's study
    lives on the server (where workers on other machines can add trials to it), each step is
    trained by a worker process, and the password is never written down."""
    ml = {"training": {"trials": 2, "families": ["logistic"], "min_samples": 100, "storage": postgres_url},
          "retrain": {"window_days": 21, "train_days": 90, "strategy": "EveryFewHoursML", "backtest": False},
          "recalibration": {"window_days": 21, "min_rows": 40}}
    root = gated_strategy_project(tmp_path, ["ETH/BTC", "LTC/BTC"], 5000, 4, ml, hour_drift=0.5)
    cfg = json.loads((root / "config.json").read_text())
    cfg["exchange"].update(key="exchange-key-1234", secret="exchange-secret-5678")  # never copied either
    (root / "config.json").write_text(json.dumps(cfg))
    done = run_ftml("walkforward", "-c", "config.json", "--timerange", "20240501-20240612", "--every", "21d",
                    "--workers", "2", "--json", cwd=root, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(Path(json.loads(done.stdout.strip().splitlines()[-1])["folder"], "report.json").read_text())
    assert report["trained"] == [0, 1]
    names = {s.study_name: s for s in optuna.get_all_study_summaries(storage=postgres_url)}
    for record in report["decisions"]:
        study = f"wf-{report['model']}-{record['challenger_training']['cache_key']}"
        assert names[study].n_trials == 2, names
        trained = json.loads((Path(report["folder"]) / "cache" / record["challenger_training"]["cache_key"] /
                              "trained.json").read_text())
        assert trained["trained_by"]["pid"] != report["process"]["pid"]  # a worker process trained it
    for written in Path(report["folder"]).rglob("*.json"):
        text = written.read_text()
        assert not [s for s in (PASSWORD, "exchange-key-1234", "exchange-secret-5678") if s in text], written
    assert PASSWORD not in done.stdout + done.stderr
    # --cache none trains every step again (the first step here): from a fresh study, not on
    # top of the last run's trials
    again = run_ftml("walkforward", "-c", "config.json", "--timerange", "20240501-20240522", "--every", "21d",
                     "--workers", "2", "--cache", "none", "--json", cwd=root, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads(Path(report["folder"], "report.json").read_text())
    assert second["trained"] == [0]
    assert second["decisions"][0]["challenger_training"]["cache_key"] == \
        report["decisions"][0]["challenger_training"]["cache_key"]  # the same study
    names = {s.study_name: s for s in optuna.get_all_study_summaries(storage=postgres_url)}
    assert all(names[f"wf-{report['model']}-{r['challenger_training']['cache_key']}"].n_trials == 2
               for r in report["decisions"])


def test_user_data_folders_made_by_another_worker_meanwhile_are_no_error(tmp_path, monkeypatch):
    """Workers started together on a fresh project: freqtrade checks, then creates, each
    user_data folder, and another worker can create it in between (measured once, here:
    `[Errno 17] File exists: .../user_data/hyperopt_results`)."""
    import freqtrade.configuration.configuration as ft_configuration

    from ml.trade_labels import backtest_config

    write_config(tmp_path / "config.json")
    (tmp_path / "user_data").mkdir()
    original, calls = ft_configuration.create_userdata_dir, []

    def raced(directory, create_dir=False):
        calls.append(directory)
        folder = original(directory, create_dir=create_dir)
        if len(calls) == 1:  # the other worker made hyperopt_results between check and mkdir
            raise FileExistsError(17, "File exists", str(folder / "hyperopt_results"))
        return folder

    monkeypatch.setattr(ft_configuration, "create_userdata_dir", raced)
    config = backtest_config(tmp_path / "config.json", "TrendPullback", None)
    assert len(calls) == 2 and config["position_stacking"] and (tmp_path / "user_data" / "hyperopt_results").is_dir()
