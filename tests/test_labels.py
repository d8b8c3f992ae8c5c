"""Triple-barrier labels against a slow, obviously-correct reference loop."""

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml.config import LabelSettings
from ml.labels import barrier_fractions, triple_barrier


def reference(df: pd.DataFrame, cfg: LabelSettings, step: pd.Timedelta):
    """One trade at a time, candle by candle, exactly as the docstring says."""
    tp, sl = barrier_fractions(df, cfg)
    n, h = len(df), cfg.horizon
    labels, rets = [math.nan] * n, [math.nan] * n
    for t in range(n):
        if t + h + 1 >= n:
            continue  # the future (up to the time exit's fill at open[t+h+1]) is not known yet
        if df["date"].iloc[t + h + 1] - df["date"].iloc[t] != step * (h + 1):
            continue  # a gap inside the window
        if not np.isfinite(tp[t]):
            continue
        entry = df["open"].iloc[t + 1]
        upper, lower = entry * (1 + tp[t] + cfg.fee), entry * (1 - sl[t])
        outcome = None
        for j in range(t + 1, t + h + 1):
            hit_sl = df["low"].iloc[j] <= lower
            hit_tp = df["high"].iloc[j] >= upper
            if hit_sl:  # includes a same-candle double touch: a loss
                outcome = (0.0, -sl[t] - cfg.fee)
                break
            if hit_tp:
                outcome = (1.0, tp[t])
                break
        if outcome is None:
            outcome = (0.0, df["open"].iloc[t + h + 1] / entry - 1 - cfg.fee)  # freqtrade's fill
        labels[t], rets[t] = outcome
    return np.array(labels), np.array(rets)


def random_path(seed: int, n: int, gaps: int, double_touch: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.concatenate(([100.0], close[:-1]))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.006, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.006, n)))
    # Wide candles that touch both barriers of the trade opened just before them.
    for i in rng.choice(np.arange(2, n), size=double_touch, replace=False):
        high[i], low[i] = high[i] * 1.06, low[i] * 0.94
    dates = pd.date_range("2024-01-01", periods=n, freq="1h", tz="UTC")
    df = pd.DataFrame({"date": dates, "open": open_, "high": high, "low": low, "close": close,
                       "volume": 1.0})
    if gaps:
        df = df.drop(index=rng.choice(np.arange(5, n - 5), size=gaps, replace=False)).reset_index(drop=True)
    return df


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    horizon=st.integers(1, 12),
    tp=st.floats(0.005, 0.04),
    sl=st.floats(0.005, 0.04),
    fee=st.sampled_from([0.0, 0.002]),
    gaps=st.integers(0, 3),
    barrier=st.sampled_from(["fixed", "atr"]),
)
def test_labels_match_the_reference_loop(seed, horizon, tp, sl, fee, gaps, barrier):
    df = random_path(seed, 150, gaps, double_touch=5)
    if barrier == "atr":
        tp, sl = tp * 100, sl * 100  # ATR multiples
    cfg = LabelSettings(barrier=barrier, take_profit=tp, stop_loss=sl, horizon=horizon, fee=fee, atr_period=5)
    got = triple_barrier(df, cfg, "1h")
    want_label, want_ret = reference(df, cfg, pd.Timedelta("1h"))
    np.testing.assert_array_equal(got["label"].to_numpy(), want_label)
    np.testing.assert_allclose(got["ret"].to_numpy(), want_ret, rtol=1e-12, equal_nan=True)


def test_same_candle_double_touch_is_a_loss():
    dates = pd.date_range("2024-01-01", periods=5, freq="1h", tz="UTC")
    df = pd.DataFrame({"date": dates, "open": [100, 100, 100, 100, 100.0],
                       "high": [100, 100, 110, 100, 100.0], "low": [100, 100, 90, 100, 100.0],
                       "close": [100.0] * 5, "volume": 1.0})
    cfg = LabelSettings(take_profit=0.03, stop_loss=0.03, horizon=2, fee=0.0)
    out = triple_barrier(df, cfg, "1h")
    assert out["label"].iloc[0] == 0.0 and out["ret"].iloc[0] == pytest.approx(-0.03)
    assert out["exit_offset"].iloc[0] == 2


def test_unknown_future_and_gaps_are_nan():
    df = random_path(1, 100, gaps=0, double_touch=0)
    cfg = LabelSettings(horizon=10)
    out = triple_barrier(df, cfg, "1h")
    assert out["label"].iloc[-11:].isna().all() and out["label"].iloc[:-11].notna().all()
    gappy = df.drop(index=[50]).reset_index(drop=True)
    out = triple_barrier(gappy, cfg, "1h")
    assert out["label"].iloc[39:50].isna().all()  # windows (and time-exit fills) that span the missing candle
    assert out["label"].iloc[:39].notna().all()
    assert (out["label_end"] - gappy["date"] == pd.Timedelta("11h")).all()


def test_missing_column_is_named():
    with pytest.raises(KeyError, match="high"):
        triple_barrier(pd.DataFrame({"date": [], "open": [], "low": [], "close": []}), LabelSettings(), "1h")
