"""Synthetic markets: realistic shape, a null with nothing to find, a planted rule that is."""

import numpy as np
import pandas as pd
import pytest
import talib
from freqtrade.data.history import load_pair_history
from sklearn.metrics import roc_auc_score

from ml.synth import simulate
from tests.conftest import run_ftml


def log_returns(frame: pd.DataFrame) -> pd.Series:
    return np.log(frame["close"]).diff().dropna()


def reversion_score(frame: pd.DataFrame) -> np.ndarray:
    """What a model could compute from past candles: distance below the 20-candle EMA."""
    logc = np.log(frame["close"].to_numpy())
    return -(logc - talib.EMA(logc, 20))


def score_auc(frame: pd.DataFrame, ahead: int = 12) -> float:
    """AUC of the reversion score for "the close ``ahead`` candles later is higher"."""
    close = frame["close"].to_numpy()
    labels = np.full(len(close), np.nan)
    labels[:-ahead] = close[ahead:] > close[:-ahead]
    score = reversion_score(frame)
    keep = ~np.isnan(labels) & ~np.isnan(score)
    return roc_auc_score(labels[keep], score[keep])


@pytest.fixture(scope="module")
def null_market():
    return simulate(60_000, "1h", "null", seed=3)[0]


def test_same_seed_same_market_and_valid_candles(null_market):
    again = simulate(60_000, "1h", "null", seed=3)[0]
    pd.testing.assert_frame_equal(null_market, again)
    other = simulate(60_000, "1h", "null", seed=4)[0]
    assert not np.allclose(null_market["close"], other["close"])
    f = null_market
    assert (f["high"] >= f[["open", "close"]].max(axis=1)).all()
    assert (f["low"] <= f[["open", "close"]].min(axis=1)).all()
    assert (f[["open", "high", "low", "close"]] > 0).all().all() and (f["volume"] > 0).all()
    assert f["date"].diff().dropna().nunique() == 1  # no gaps


def test_null_market_looks_like_crypto_but_has_no_predictable_returns(null_market):
    r = log_returns(null_market)
    for lag in range(1, 6):
        assert abs(r.autocorr(lag)) < 0.02, lag  # no linear predictability
    assert (r**2).autocorr(1) > 0.05  # volatility clustering
    assert r.kurt() > 3  # fat tails
    hourly_volume = null_market.groupby(null_market["date"].dt.hour)["volume"].mean()
    assert hourly_volume.max() / hourly_volume.min() > 1.5  # intraday seasonality
    assert abs(score_auc(null_market) - 0.5) < 0.02  # the planted feature finds nothing


def test_planted_market_is_predictable_from_past_candles():
    planted = simulate(60_000, "1h", "planted", seed=3)[0]
    assert score_auc(planted) > 0.56


def test_regime_flip_reverses_the_rule():
    flipped = simulate(60_000, "1h", "planted", seed=5, flip_at=30_000)[0]
    before, after = flipped.iloc[:30_000].reset_index(drop=True), flipped.iloc[30_000:].reset_index(drop=True)
    assert score_auc(before) > 0.55
    assert score_auc(after) < 0.47


def test_cli_writes_files_freqtrade_loads(tmp_path):
    done = run_ftml("data", "synth", "--pairs", "AAA/USDT", "BBB/USDT", "--timeframe", "1h",
                    "--candles", "500", "--market", "null", "--seed", "1",
                    "--datadir", str(tmp_path / "data"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for pair in ("AAA/USDT", "BBB/USDT"):
        df = load_pair_history(pair, "1h", tmp_path / "data", data_format="feather")
        assert len(df) == 500 and df["date"].iloc[0] == pd.Timestamp("2024-01-01", tz="UTC")
