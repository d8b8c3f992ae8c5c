"""Every command in the README's code blocks runs as written, in a fresh copy of the project.

Skipped on purpose: `make ...` (CI itself runs `make test`; tests/test_demo.py runs the demo)
and commands that need the network (`download-data`, `wandb login`, `wandb sync`). The
copy's training budget is cut (trials, no backtest in the retrain's dry run) so the suite
stays fast; the commands are unchanged.
"""

import json
import os
import re
import subprocess

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow
NEEDS_NETWORK = ("download-data", "wandb login", "wandb sync")


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_readme_has_the_quickstart_and_the_steps():
    commands = readme_commands()
    assert commands[:2] == ["make demo", "make test"]
    assert any("ftml train" in c for c in commands) and any("registry promote" in c for c in commands)
    assert any("--strategy-list TrendPullbackML TrendPullback" in c for c in commands)


def test_every_readme_command_runs(tmp_path):
    cfg = json.loads((REPO / "config.json").read_text())
    cfg["ml"]["training"] = {**cfg["ml"]["training"], "trials": 3, "families": ["lightgbm", "logistic"]}
    # and the dry-run retrain scores the challenger without its backtest (tests/test_retrain.py
    # runs those)
    cfg["ml"]["retrain"] = {**cfg["ml"].get("retrain", {}), "backtest": False}
    (tmp_path / "config.json").write_text(json.dumps(cfg, indent=1))
    (tmp_path / ".venv").symlink_to(REPO / ".venv", target_is_directory=True)
    (tmp_path / "strategies").symlink_to(REPO / "strategies", target_is_directory=True)
    (tmp_path / "user_data").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ran, outputs = [], {}
    for command in readme_commands():
        if command.startswith("make ") or any(n in command for n in NEEDS_NETWORK):
            continue
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, env=env,
                              timeout=600)
        assert done.returncode == 0, f"README command failed: {command}\n{done.stderr[-2000:]}"
        ran.append(command)
        outputs[command] = done.stdout
    assert len(ran) >= 10
    # One path from train to cron: the model the README trains and promotes is the champion
    # that `ftml retrain` scores a like-for-like challenger against (same strategy's trades).
    retrain = json.loads(next(out for c, out in outputs.items() if "ftml retrain" in c).strip().splitlines()[-1])
    assert retrain["model"] == "TrendPullback" and retrain["champion"] == 1, retrain
    assert "challenger_test" in retrain and retrain["decision"] not in ("skipped", "error"), retrain
    assert (tmp_path / "user_data" / "plot" / "freqtrade-plot-ETH_BTC-1h.html").is_file()
