"""The tests' `run_ftml` (a fork of a pre-imported ftml, tests/ftml_zygote.py) answers as a
real `python -m ml.cli` process does: exit codes, stdout, stderr, working directory,
environment, and the files a command writes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.conftest import run_ftml, write_config


def real_and_forked(monkeypatch, *args: str, cwd: Path, env: dict | None = None):
    with monkeypatch.context() as patch:
        patch.setenv("FTML_TEST_SUBPROCESS", "1")
        real = run_ftml(*args, cwd=cwd, env=env)
    return real, run_ftml(*args, cwd=cwd, env=env)


@pytest.mark.parametrize("args", [("--help",), ("nonsense",), ("registry", "list", "-c", "missing.json")])
def test_the_same_answer_as_a_real_process(monkeypatch, tmp_path, args):
    real, forked = real_and_forked(monkeypatch, *args, cwd=tmp_path)
    assert (forked.returncode, forked.stdout, forked.stderr) == (real.returncode, real.stdout, real.stderr)


def test_working_directory_environment_and_written_files(monkeypatch, tmp_path):
    digests = []
    for name in ("real", "forked"):
        root = tmp_path / name
        root.mkdir()
        write_config(root / "config.json")
        with monkeypatch.context() as patch:
            if name == "real":
                patch.setenv("FTML_TEST_SUBPROCESS", "1")
            done = run_ftml("data", "synth", "-c", "config.json", "--candles", "600", "--pairs", "ETH/BTC", cwd=root)
        assert done.returncode == 0, done.stderr[-2000:]
        files = sorted((root / "user_data").rglob("*.feather"))
        assert files, done.stderr[-2000:]
        digests.append([(f.relative_to(root).as_posix(), hashlib.sha256(f.read_bytes()).hexdigest()) for f in files])
    assert digests[0] == digests[1]
    # COLUMNS decides how ftml prints its tables: the command sees the environment it was given.
    check = ("data", "check", "-c", "config.json", "--pairs", "ETH/BTC")
    real, forked = real_and_forked(monkeypatch, *check, cwd=tmp_path / "real", env={"COLUMNS": "60"})
    assert real.returncode == forked.returncode == 0 and real.stdout == forked.stdout
    assert run_ftml(*check, cwd=tmp_path / "real").stdout != forked.stdout
    assert "COLUMNS" not in os.environ  # and it stayed the command's own
