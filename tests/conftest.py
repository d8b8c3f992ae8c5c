"""Shared fixtures: a throw-away project (config + user_data) and a way to run ``ftml``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ml.synth import write_market

REPO = Path(__file__).resolve().parents[1]
# pytest-xdist workers export COLUMNS=80, and rich (freqtrade's tables) then cuts the
# columns that tests read; without it the child processes print as under plain pytest.
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)
SHARED_DATA = REPO.parent / "shared" / "data" / "freqtrade-testdata"

# `make test` runs two pytest workers. Each spawns ftml and freqtrade processes that size
# their own pools by the cores they may use (label-backtest workers, model threads): on two
# cores, two workers would run four busy threads, and OpenMP pools spinning against each
# other are very slow. So each worker, and everything it starts, gets its own core.
ALL_CORES = sorted(os.sched_getaffinity(0))
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER.startswith("gw") and len(ALL_CORES) > 1:
    os.sched_setaffinity(0, {ALL_CORES[int(_WORKER[2:]) % len(ALL_CORES)]})


@pytest.fixture
def all_cores():
    """For a test about several cores: this worker (and what it starts) may use them all."""
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, ALL_CORES)
    yield ALL_CORES
    os.sched_setaffinity(0, mine)


def run_ftml(*args: str, cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real command line in a process of its own, as a user would: a fork of this
    worker's pre-imported ftml (tests/ftml_zygote.py), which skips ~4 s of imports per
    command; FTML_TEST_SUBPROCESS=1 starts `python -m ml.cli` instead."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    command = [sys.executable, "-m", "ml.cli", *args]
    if os.environ.get("FTML_TEST_SUBPROCESS") == "1":
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    with tempfile.TemporaryDirectory(prefix="ftml-run-") as folder:
        out, err = Path(folder, "stdout"), Path(folder, "stderr")
        reply = _zygote().run({"args": list(args), "cwd": str(cwd), "env": env, "timeout": timeout,
                               "affinity": sorted(os.sched_getaffinity(0)), "stdout": str(out), "stderr": str(err)})
        stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
    if reply.get("timeout"):
        raise subprocess.TimeoutExpired(command, timeout, stdout, stderr)
    return subprocess.CompletedProcess(command, reply["returncode"], stdout, stderr)


def as_a_shell_starts_it() -> None:
    """preexec_fn: SIGINT and SIGQUIT at their defaults in the child, as a shell starts a
    command. Measured: late in the suite a pytest worker holds both ignored (the mark C's
    system() leaves), a child inherits that, and a replayed bot then ignored the SIGINT
    that stops it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


class _Zygote:
    """This worker's tests/ftml_zygote.py process, started on first use; its forks inherit
    the signal dispositions it starts with."""

    def __init__(self) -> None:
        self.log = Path(tempfile.mkstemp(prefix="ftml-zygote-", suffix=".log")[1])
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.ftml_zygote"], cwd=REPO, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                         env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=as_a_shell_starts_it)
        self._reply()  # {"ready": pid} once its imports are done

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"tests/ftml_zygote.py exited; its log:\n{self.log.read_text()[-3000:]}")
        return json.loads(line)

    def run(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._reply()


_ZYGOTE: list[_Zygote] = []


def _zygote() -> _Zygote:
    if not _ZYGOTE or _ZYGOTE[0].proc.poll() is not None:
        _ZYGOTE[:] = [_Zygote()]
    return _ZYGOTE[0]


def write_config(path: Path, **overrides) -> Path:
    """The repo's config.json with absolute strategy path and local user_data."""
    cfg = json.loads((REPO / "config.json").read_text())
    cfg["strategy_path"] = str(REPO / "strategies")
    cfg["user_data_dir"] = str(path.parent / "user_data")
    for key, value in overrides.items():
        cfg[key] = value
    path.write_text(json.dumps(cfg, indent=2))
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A temp folder with config.json whose user_data lives inside it."""
    write_config(tmp_path / "config.json")
    return tmp_path


TEST_STRATEGIES = REPO / "tests" / "strategies"
# For modules that test what a promoted model *does* (gating, hot reload, retrain decisions)
# on a few hundred trades of one example strategy: their test blocks' hit rate moves from
# the calibration block's by chance and drift (measured in test_strategies: mean p 0.072
# below the hit rate, 3.5 SE, Z -3.4), which the calibration gates rightly refuse. Their
# own tests (test_calibration_metrics, test_recalibration, the demo) hold the gates.
CALIBRATION_GATES_OFF = {"max_ece": 0.15, "max_citl_se": 1e9, "max_abs_z": 1e9, "ece_within_noise_band": False}


def strategy_project(root: Path, pairs: list[str], candles: int, market: str, seed: int, ml: dict | None = None,
                     timeframe: str = "1h", strategy: str = "EveryFewHours", **process) -> Path:
    """A project whose model learns from a test strategy's trades (tests/strategies) on a
    synthetic market; ``ml`` sections are merged into the defaults, one level deep."""
    defaults = {"tracking": {"mode": "disabled"}, "training": {"strategy": strategy},
                "registry": {"path": str(root / "registry")}}
    ml_section = {key: {**defaults.get(key, {}), **(ml or {}).get(key, {})} for key in {*defaults, *(ml or {})}}
    exchange = {**json.loads((REPO / "config.json").read_text())["exchange"], "pair_whitelist": pairs}
    write_config(root / "config.json", exchange=exchange, strategy_path=str(TEST_STRATEGIES), timeframe=timeframe,
                 ml=ml_section)
    write_market(root / "user_data" / "data" / "binance", pairs, timeframe, candles, market, seed, **process)
    return root


def gated_strategy_project(root: Path, pairs: list[str], candles: int, seed: int, ml: dict, **process) -> Path:
    """EveryFewHours on a synthetic null market (``hour_drift`` plants an edge in its trades),
    with its one-line gated twin EveryFewHoursML beside it, as a user would write it."""
    root = strategy_project(root, pairs, candles, "null", seed, ml=ml, **process)
    (root / "strategies").mkdir()
    shutil.copy(TEST_STRATEGIES / "EveryFewHours.py", root / "strategies")
    (root / "strategies" / "EveryFewHoursML.py").write_text(
        "from ml.gate import MLGate\nfrom EveryFewHours import EveryFewHours\n\n\n"
        "class EveryFewHoursML(MLGate, EveryFewHours):\n    pass\n")
    cfg = json.loads((root / "config.json").read_text())
    cfg["strategy_path"] = str(root / "strategies")
    (root / "config.json").write_text(json.dumps(cfg))
    return root


def train_request(root: Path, output: str = "bundle", timerange: str | None = None, study: str = "study"):
    """What ``ftml train`` would ask of ml.train for the project at ``root``."""
    from ml.config import load
    from ml.train import TrainRequest

    config = json.loads((root / "config.json").read_text())
    return TrainRequest(root / "config.json", load(root / "config.json").training.strategy,
                        config["exchange"]["pair_whitelist"], config["timeframe"], timerange, root / output,
                        f"sqlite:///{root / 'optuna.db'}", study)
