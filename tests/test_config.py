import json

import pytest

from ml import config as mlconfig
from tests.conftest import REPO, run_ftml, write_config


def test_repo_config_parses_with_typed_values():
    cfg = mlconfig.load(REPO / "config.json")
    assert cfg.label.min_profit == 0.0 and isinstance(cfg.label.min_profit, float)
    assert cfg.registry.path == str(REPO / "registry")  # relative paths: from the config file's folder
    assert cfg.training.strategy == "TrendPullback"
    assert cfg.tracking.mode in {"auto", "online", "offline", "disabled"}


def test_missing_section_gives_working_defaults():
    cfg = mlconfig.from_dict(None)
    assert cfg.model.name == "trend_pullback"
    assert set(cfg.training.families) == {"xgboost", "lightgbm", "hist_gb", "logistic"}
    assert cfg.gate.in_sample_guard is True


@pytest.mark.parametrize(
    ("ml_section", "must_mention"),
    [
        ({"trainng": {}}, ["ml.trainng", "did you mean 'training'"]),
        ({"label": {"min_proft": 0.01}}, ["ml.label.min_proft", "did you mean 'min_profit'"]),
        ({"label": {"min_profit": "many"}}, ["ml.label.min_profit", '"many"', "number"]),
        ({"label": {"min_profit": 0.9}}, ["ml.label.min_profit", "0.9", "less than or equal to 0.5"]),
        # Keys of the fixed-barrier labeller, removed: the line says what replaced them.
        ({"label": {"take_profit": 0.03}}, ["'ml.label.take_profit' was removed", "set them in the strategy"]),
        ({"training": {"signal": None}}, ["'ml.training.signal' was removed", "ml.training.strategy"]),
        ({"training": {"families": ["xgboost", "svm"]}}, ["ml.training.families.1", "svm"]),
        ({"tracking": {"mode": True}}, ["ml.tracking.mode"]),
    ],
)
def test_bad_ml_config_exits_nonzero_with_one_line(tmp_path, ml_section, must_mention):
    cfg_path = write_config(tmp_path / "config.json", ml=ml_section)
    done = run_ftml("config", "-c", str(cfg_path), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, done.stderr
    for text in must_mention:
        assert text in lines[0], lines[0]


def test_other_commands_refuse_a_bad_config_too(tmp_path):
    cfg_path = write_config(tmp_path / "config.json", ml={"gate": {"ev_margn": 0.01}})
    done = run_ftml("data", "check", "-c", str(cfg_path), cwd=tmp_path)
    assert done.returncode == 2
    assert "ml.gate.ev_margn" in done.stderr and "ev_margin" in done.stderr


def test_config_show_prints_resolved_defaults(project):
    done = run_ftml("config", "-c", "config.json", cwd=project)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["label"]["min_profit"] == 0.0 and shown["training"]["min_samples"] == 500


def test_invalid_json_and_missing_file_are_user_errors(tmp_path):
    (tmp_path / "broken.json").write_text("{ not json")
    done = run_ftml("config", "-c", "broken.json", cwd=tmp_path)
    assert done.returncode == 2 and "not valid JSON" in done.stderr
    done = run_ftml("config", "-c", "nope.json", cwd=tmp_path)
    assert done.returncode == 2 and "not found" in done.stderr
