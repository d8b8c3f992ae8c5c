"""FeatureEngineer: causal, scale-free, stable ids, and never crashes on bad candles."""

import logging

import numpy as np
import pandas as pd
import pytest
from freqtrade.data.history import load_pair_history
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ml.config import FeatureSettings
from ml.features import FeatureEngineer, correlation_prune
from ml.synth import simulate
from tests.conftest import SHARED_DATA

FE = FeatureEngineer(timeframe="1h")
SYNTH = simulate(3000, "1h", "planted", seed=9)[0]
SYNTH_FEATURES = FE.transform(SYNTH)


def same(a: np.ndarray, b: np.ndarray, tol: float = 1e-9) -> bool:
    both_nan = np.isnan(a) & np.isnan(b)
    return bool(np.all(both_nan | (np.abs(a - b) <= tol * np.maximum(1.0, np.abs(b)))))


def assert_causal(fe: FeatureEngineer, df: pd.DataFrame, full: pd.DataFrame, k: int) -> None:
    part = fe.transform(df.iloc[:k])
    start = fe.startup_candles
    a = part[fe.feature_names].to_numpy()[start:k]
    b = full[fe.feature_names].to_numpy()[start:k]
    assert same(a, b), f"cut at {k}: features of rows < {k} changed when later rows were added"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=st.integers(min_value=FE.startup_candles + 1, max_value=len(SYNTH)))
def test_features_are_causal_on_synthetic_data(k):
    assert_causal(FE, SYNTH, SYNTH_FEATURES, k)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared test data not present")
def test_features_are_causal_on_real_binance_candles():
    fe5 = FeatureEngineer(timeframe="5m")
    df = load_pair_history("ETH/BTC", "5m", SHARED_DATA, data_format="feather")
    full = fe5.transform(df)

    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(k=st.integers(min_value=fe5.startup_candles + 1, max_value=len(df)))
    def check(k):
        assert_causal(fe5, df, full, k)

    check()


def test_default_set_is_large_named_and_keeps_the_frame():
    assert len(FE.feature_names) >= 60
    assert all(n.startswith("f_") for n in FE.feature_names)
    assert list(SYNTH_FEATURES.columns[: len(SYNTH.columns)]) == list(SYNTH.columns)
    assert len(SYNTH_FEATURES) == len(SYNTH)
    assert SYNTH_FEATURES["close"].iloc[-1] == SYNTH["close"].iloc[-1]
    assert SYNTH_FEATURES["date"].iloc[-1] == SYNTH["date"].iloc[-1]
    after = SYNTH_FEATURES[FE.feature_names].iloc[FE.startup_candles:]
    assert not after.isna().any().any(), "clean candles after the startup window give NaN features"


def test_features_are_scale_free():
    scaled = SYNTH.copy()
    scaled[["open", "high", "low", "close"]] *= 12345.0
    scaled["volume"] *= 0.001
    a = FE.transform(scaled)[FE.feature_names].to_numpy()[FE.startup_candles:]
    b = SYNTH_FEATURES[FE.feature_names].to_numpy()[FE.startup_candles:]
    assert np.allclose(a, b, rtol=1e-6, atol=1e-8)


def test_higher_timeframe_uses_completed_bars_only():
    # The 4h bar 00:00-04:00 is known at the 03:00 candle (it closes at 04:00), not before.
    df = SYNTH.iloc[:1000].copy()
    later = df.copy()
    last = df.index[-1]
    later.loc[last, ["high", "close"]] = later.loc[last, "close"] * 1.5  # change only the last candle
    col = "f_htf_4h_ret_1"
    a, b = FE.transform(df)[col], FE.transform(later)[col]
    if df["date"].iloc[-1].hour % 4 == 3:
        assert a.iloc[-1] != b.iloc[-1]  # it closes the bar: the bar's feature moves now
    assert same(a.iloc[:-1].to_numpy(), b.iloc[:-1].to_numpy())


def test_feature_set_id_is_stable_and_tracks_settings():
    assert FeatureEngineer(timeframe="1h").feature_set_id == FE.feature_set_id
    reordered = FeatureEngineer(FeatureSettings(periods=[60, 30, 14, 6]), timeframe="1h")
    assert reordered.feature_set_id == FE.feature_set_id
    assert FeatureEngineer(FeatureSettings(periods=[6, 14, 30]), timeframe="1h").feature_set_id != FE.feature_set_id
    assert FeatureEngineer(timeframe="5m").feature_set_id != FE.feature_set_id
    fewer = FeatureEngineer(FeatureSettings(groups=["momentum", "calendar"]), timeframe="1h")
    assert fewer.feature_set_id != FE.feature_set_id
    assert all(n.startswith(("f_rsi", "f_willr", "f_cci", "f_zscore", "f_macd", "f_stoch", "f_hour", "f_weekday"))
               for n in fewer.feature_names)


def test_bad_rows_give_nan_features_and_a_warning(caplog):
    df = SYNTH.copy()
    df.loc[1500, "close"] = np.nan
    df.loc[1600, "high"] = np.inf
    df.loc[1700, ["open", "low"]] = [0.0, -1.0]
    df.loc[1800, "volume"] = 0.0
    with caplog.at_level(logging.WARNING, logger="ml.features"):
        out = FE.transform(df)
    feats = out[FE.feature_names]
    for row in (1500, 1600, 1700):
        assert feats.loc[row].isna().all()
    assert feats.loc[1800, "f_rel_volume_14"] != feats.loc[1800, "f_rel_volume_14"]  # NaN
    assert not np.isnan(feats.loc[1800, "f_rsi_14"])  # price features are fine at zero volume
    assert not feats.loc[1501:1599].isna().all(axis=1).any()  # later rows still computed
    assert "3 candles with NaN/inf or non-positive values" in caplog.text
    assert "zero volume" in caplog.text


def test_too_few_candles_and_empty_frames_do_not_raise(caplog):
    with caplog.at_level(logging.WARNING, logger="ml.features"):
        short = FE.transform(SYNTH.iloc[:10])
    long_window = [n for n in FE.feature_names if n.endswith("_60")]
    assert len(short) == 10 and short[long_window].isna().all().all()
    assert "only 10 candles" in caplog.text
    empty = FE.transform(SYNTH.iloc[:0])
    assert list(empty.columns[-len(FE.feature_names):]) == FE.feature_names and empty.empty


def test_missing_column_names_it():
    with pytest.raises(KeyError, match="volume"):
        FE.transform(SYNTH.drop(columns=["volume"]))


def test_correlation_pruning_is_deterministic_and_drops_duplicates():
    rng = np.random.default_rng(0)
    a = rng.normal(size=500)
    X = pd.DataFrame({"a": a, "a_copy": a * 2 + 1, "b": rng.normal(size=500), "a_noisy": a + rng.normal(size=500)})
    assert correlation_prune(X, 0.95) == ["a", "b", "a_noisy"]
    assert correlation_prune(X, 0.5) == ["a", "b"]


def test_unsorted_frames_still_give_features_without_raising():
    shuffled = SYNTH.iloc[:800].sample(frac=1.0, random_state=0)
    out = FE.transform(shuffled)
    assert len(out) == 800 and out.index.equals(shuffled.index)
    assert out["f_htf_4h_ret_1"].notna().any()
