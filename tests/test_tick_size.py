"""ml.tick_size gives exactly what freqtrade's get_tick_size_over_time gives: the monthly
tick sizes and the count columns it adds to the candles, values and dtypes."""

import numpy as np
import pandas as pd
import pytest
from freqtrade.data.btanalysis.historic_precision import get_tick_size_over_time
from hypothesis import given, settings
from hypothesis import strategies as st

from ml.tick_size import decimal_count, tick_size_over_time
from tests.conftest import SHARED_DATA


def freqtrades_count(values) -> np.ndarray:
    """freqtrade's counts, as its code computes them."""
    counted = pd.Series(values, dtype=float).apply(np.format_float_positional, precision=14, unique=False,
                                                   fractional=False, trim="-").str.extract(r"\.(\d*[1-9])")[0].str.len()
    return counted.to_numpy(dtype=float)


def assert_same(candles: pd.DataFrame) -> None:
    theirs, ours = candles.copy(), candles.copy()
    pd.testing.assert_series_equal(get_tick_size_over_time(theirs), tick_size_over_time(ours))
    pd.testing.assert_frame_equal(theirs, ours)


def candles(prices: np.ndarray) -> pd.DataFrame:
    dates = pd.date_range("2024-01-01", periods=len(prices), freq="1h", tz="UTC")
    return pd.DataFrame({"date": dates, "open": prices, "high": prices * 1.01, "low": prices * 0.99,
                         "close": np.roll(prices, 1), "volume": 1.0})


# Dyadic values with a 5 in the 15th significant digit (exact ties for 14 digits), values
# at and next to powers of ten (where a logarithm can be off by one), rounding up to the
# next power (9.99999999999995e-4), whole numbers, zero, huge and tiny values (down to
# subnormal, where the float path overflows).
EDGES = [3277 / 2**15, 13107 / 2**17, 0.001, np.nextafter(0.001, 1), np.nextafter(0.001, 0), 1e-5, 9.99999999999995e-4,
         9.999999999999949e-4, 1.0, 10.0, 5.0, 5.5, 0.0, 123456789012345.6, 1e15, 1e-9, 2.5e-8, 0.1 + 0.2,
         12345678901234.5, 1234567890123.45, 1e-300, 5e-324]


def test_edge_values_count_as_freqtrade_counts():
    np.testing.assert_array_equal(decimal_count(pd.Series(EDGES)).to_numpy(dtype=float), freqtrades_count(EDGES))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(min_value=1e-12, max_value=1e12, allow_nan=False), min_size=1, max_size=40),
       st.integers(0, 12))
def test_any_prices_count_as_freqtrade_counts(values, decimals):
    # raw floats (15-17 significant digits) and the same rounded to a tick, as real prices are
    for prices in (np.array(values), np.round(values, decimals)):
        np.testing.assert_array_equal(decimal_count(pd.Series(prices)).to_numpy(dtype=float), freqtrades_count(prices))


def test_values_half_way_between_two_14_digit_numbers_count_as_freqtrade_counts():
    """The risky ones for float arithmetic: 15 significant digits ending in 5, whose
    nearest double lies just above or below the half."""
    rng = np.random.default_rng(1)
    mantissas = rng.integers(10**13, 10**14, 5000)
    values = [float(f"{m}5e{e}") for m, e in zip(mantissas, rng.integers(-30, -8, 5000), strict=True)]
    np.testing.assert_array_equal(decimal_count(pd.Series(values)).to_numpy(dtype=float), freqtrades_count(values))


def test_frames_and_months_are_identical_with_nan_inf_and_every_kind_of_price():
    rng = np.random.default_rng(0)
    n = 3000
    kinds = [rng.lognormal(-7, 1, n), np.round(rng.lognormal(-7, 1, n), 8), np.round(rng.lognormal(3, 1, n), 2),
             rng.integers(3000, 20000, n) / 2.0 ** rng.integers(15, 26, n), rng.integers(1, 100, n).astype(float)]
    for prices in kinds:
        frame = candles(prices)
        assert_same(frame)  # no NaN: the count columns are int64, as freqtrade's
        frame.loc[5, "open"], frame.loc[7, "close"], frame.loc[9, "low"] = np.nan, np.inf, 0.0
        assert_same(frame)  # NaN: float64


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared test data not present")
def test_real_binance_candles_are_identical():
    files = sorted(SHARED_DATA.rglob("*.feather"))
    assert files
    for path in files:
        assert_same(pd.read_feather(path))


def test_freqtrades_backtesting_uses_it_once_installed():
    import freqtrade.optimize.backtesting as backtesting

    from ml.offline import install

    install(offline=True)
    assert backtesting.get_tick_size_over_time is tick_size_over_time
