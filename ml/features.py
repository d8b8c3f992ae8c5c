"""FeatureEngineer: the one place where training and strategies compute model inputs.

Contract:

* causal: row t depends on rows <= t only (higher timeframes use completed bars only);
* scale-free: returns, ratios, z-scores and oscillators, never raw prices, so one model
  serves several pairs and price eras;
* vectorised TA-Lib / numpy, one concat at the end (no per-row Python, no frame
  fragmentation);
* ``feature_set_id`` hashes the settings, the timeframe and ``FEATURE_CODE_VERSION``: a
  model trained on one feature set is refused by a strategy running another.

Bad candles (NaN/inf or non-positive prices) are bridged with the previous good price so
recursive indicators keep running, and their own rows get NaN features plus one warning.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
from collections.abc import Callable

import numpy as np
import pandas as pd
import talib

from ml.config import FeatureSettings

logger = logging.getLogger(__name__)

# Bump when any feature formula changes: models trained before are then refused.
FEATURE_CODE_VERSION = "1"
PREFIX = "f_"
RETURN_LAGS = (1, 2, 3, 6, 12, 24)
HTF_PERIOD = 14
# Recursive indicators forget their seed geometrically: Wilder smoothing (RSI, ATR, ADX)
# as (1 - 1/n)^k, so k = 8n candles leave ~3e-4 of the seed; EMA forgets twice as fast.
WARMUP_FACTOR = 8
# ADX smooths twice with Wilder's 1/n: longer periods would need far longer warm-ups.
ADX_MAX_PERIOD = 30
REQUIRED = ("date", "open", "high", "low", "close", "volume")

Columns = dict[str, np.ndarray]


def _log_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(a / b)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = a / b
    out[~np.isfinite(out)] = np.nan
    return out


def _shift(x: np.ndarray, k: int) -> np.ndarray:
    out = np.full_like(x, np.nan)
    out[k:] = x[:-k]
    return out


def _utc_ns(dates: pd.Series) -> np.ndarray:
    """Dates as naive UTC datetime64[ns], whatever resolution or tz the frame uses."""
    dates = pd.to_datetime(dates, utc=True)
    return dates.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")


class _Prices:
    """Float64 OHLCV arrays, computed once per transform."""

    def __init__(self, df: pd.DataFrame):
        self.dates_ns = _utc_ns(df["date"])
        self.open, self.high, self.low, self.close, self.volume = (
            df[c].to_numpy(dtype="float64") for c in ("open", "high", "low", "close", "volume")
        )
        self.log_close = np.log(self.close)


# ------------------------------------------------------------------ feature groups
def _returns(p: _Prices, periods: list[int]) -> Columns:
    cols: Columns = {f"ret_{k}": p.log_close - _shift(p.log_close, k) for k in RETURN_LAGS}
    rng = p.high - p.low
    cols["body"] = _safe_div(p.close - p.open, rng)
    cols["upper_wick"] = _safe_div(p.high - np.maximum(p.open, p.close), rng)
    cols["lower_wick"] = _safe_div(np.minimum(p.open, p.close) - p.low, rng)
    cols["range"] = _log_ratio(p.high, p.low)
    for n in periods:
        hi, lo = talib.MAX(p.high, n), talib.MIN(p.low, n)
        cols[f"range_pos_{n}"] = _safe_div(p.close - lo, hi - lo)
    return cols


def _trend(p: _Prices, periods: list[int]) -> Columns:
    cols: Columns = {}
    log_emas = {n: np.log(talib.EMA(p.close, n)) for n in periods}
    for n, log_ema in log_emas.items():
        cols[f"close_ema_{n}"] = p.log_close - log_ema
        cols[f"ema_slope_{n}"] = (log_ema - _shift(log_ema, 1)) * n
        if n <= ADX_MAX_PERIOD:
            cols[f"adx_{n}"] = talib.ADX(p.high, p.low, p.close, n) / 100.0
        cols[f"linreg_slope_{n}"] = talib.LINEARREG_SLOPE(p.log_close, n) * n
    ordered = sorted(periods)
    for fast, slow in zip(ordered, ordered[2:], strict=False):
        cols[f"ema_{fast}_{slow}"] = log_emas[fast] - log_emas[slow]
    return cols


def _momentum(p: _Prices, periods: list[int]) -> Columns:
    cols: Columns = {}
    for n in periods:
        cols[f"rsi_{n}"] = talib.RSI(p.close, n) / 100.0
        cols[f"willr_{n}"] = talib.WILLR(p.high, p.low, p.close, n) / 100.0
        cols[f"cci_{n}"] = talib.CCI(p.high, p.low, p.close, n) / 100.0
        mean, std = talib.SMA(p.close, n), talib.STDDEV(p.close, n)
        cols[f"zscore_{n}"] = _safe_div(p.close - mean, std)
    _, _, hist = talib.MACD(p.close, 12, 26, 9)
    cols["macd_hist"] = hist / p.close
    k, d = talib.STOCH(p.high, p.low, p.close, 14, 3, 0, 3, 0)
    cols["stoch_k"], cols["stoch_d"] = k / 100.0, d / 100.0
    return cols


def _volatility(p: _Prices, periods: list[int]) -> Columns:
    cols: Columns = {}
    ret1 = p.log_close - _shift(p.log_close, 1)
    for n in periods:
        cols[f"natr_{n}"] = talib.NATR(p.high, p.low, p.close, n) / 100.0
        cols[f"vol_{n}"] = talib.STDDEV(ret1, n)
        upper, mid, lower = talib.BBANDS(p.close, n, 2.0, 2.0)
        cols[f"bb_width_{n}"] = _safe_div(upper - lower, mid)
    lo, hi = min(periods), max(periods)
    cols[f"vol_ratio_{lo}_{hi}"] = _safe_div(cols[f"vol_{lo}"], cols[f"vol_{hi}"])
    return cols


def _volume(p: _Prices, periods: list[int]) -> Columns:
    cols: Columns = {}
    volume = np.where(p.volume > 0, p.volume, np.nan)
    obv = talib.OBV(p.close, p.volume)
    for n in periods:
        cols[f"rel_volume_{n}"] = _log_ratio(volume, talib.SMA(p.volume, n))
        cols[f"mfi_{n}"] = talib.MFI(p.high, p.low, p.close, p.volume, n) / 100.0
        cols[f"obv_{n}"] = _safe_div(obv - _shift(obv, n), talib.SUM(p.volume, n))
    return cols


def _calendar(dates_ns: np.ndarray) -> Columns:
    """Cyclical hour and weekday, by table lookup (both take few distinct values)."""
    ns = dates_ns.astype(np.int64)
    minute_of_day = (ns % 86_400_000_000_000) // 60_000_000_000
    weekday = ((ns // 86_400_000_000_000) + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
    day_angle = 2 * np.pi * np.arange(1440) / 1440
    week_angle = 2 * np.pi * np.arange(7) / 7
    return {
        "hour_sin": np.sin(day_angle)[minute_of_day],
        "hour_cos": np.cos(day_angle)[minute_of_day],
        "weekday_sin": np.sin(week_angle)[weekday],
        "weekday_cos": np.cos(week_angle)[weekday],
    }


def _higher_tf(p: _Prices, htf: str, base: pd.Timedelta) -> Columns:
    """Features of completed higher-timeframe bars, aligned to base candles causally.

    A ``htf`` bar starting at T covers base candles T .. T+htf-base; it is known once the
    base candle dated ``T + htf - base`` has closed, never before.
    """
    step = pd.Timedelta(htf).as_unit("ns").to_timedelta64()
    dates = p.dates_ns
    bucket = dates - (dates.astype(np.int64) % step.astype(np.int64)).astype("timedelta64[ns]")
    if np.all(bucket[1:] >= bucket[:-1]):  # sorted (the normal case): one pass of reduceat
        starts = np.flatnonzero(np.concatenate(([True], bucket[1:] != bucket[:-1])))
        ends = np.append(starts[1:], len(bucket)) - 1
        bar_start = bucket[starts]
        close = p.close[ends]
        high = np.maximum.reduceat(p.high, starts)
        low = np.minimum.reduceat(p.low, starts)
    else:
        frame = pd.DataFrame({"high": p.high, "low": p.low, "close": p.close, "b": bucket})
        bars = frame.groupby("b", sort=True).agg(high=("high", "max"), low=("low", "min"),
                                                 close=("close", "last"))
        bar_start = bars.index.to_numpy(dtype="datetime64[ns]")
        close, high, low = (bars[c].to_numpy(dtype="float64") for c in ("close", "high", "low"))
    log_close = np.log(close)
    feats = {
        "ret_1": log_close - _shift(log_close, 1),
        "ret_3": log_close - _shift(log_close, 3),
        f"rsi_{HTF_PERIOD}": talib.RSI(close, HTF_PERIOD) / 100.0,
        f"close_ema_{HTF_PERIOD}": _log_ratio(close, talib.EMA(close, HTF_PERIOD)),
        f"natr_{HTF_PERIOD}": talib.NATR(high, low, close, HTF_PERIOD) / 100.0,
    }
    available_at = bar_start + step - base.as_unit("ns").to_timedelta64()
    at = np.searchsorted(available_at, dates, side="right") - 1
    known = at >= 0
    cols: Columns = {}
    for name, values in feats.items():
        mapped = np.full(len(dates), np.nan)
        mapped[known] = values[at[known]]
        cols[f"htf_{htf}_{name}"] = mapped
    return cols


class FeatureEngineer:
    """Adds ``f_*`` feature columns to a candle frame; see the module docstring."""

    def __init__(self, settings: FeatureSettings | None = None, timeframe: str = "1h"):
        self.settings = settings or FeatureSettings()
        self.timeframe = timeframe
        self._warned: set[tuple[str, str]] = set()  # (source, bad candle) already warned about
        self._base = pd.Timedelta(timeframe)
        self.higher_timeframes = [
            h for h in self.settings.higher_timeframes if pd.Timedelta(h) > self._base
        ] if "higher_tf" in self.settings.groups else []
        self.feature_names = self._names_from_probe()

    # ---------------------------------------------------------------- properties
    @property
    def startup_candles(self) -> int:
        """Candles before the first row whose features no longer depend on the frame start."""
        base_need = max(max(self.settings.periods), 26, max(RETURN_LAGS))
        htf_need = max(
            HTF_PERIOD * int(pd.Timedelta(h) / self._base) for h in self.higher_timeframes
        ) if self.higher_timeframes else 0
        return WARMUP_FACTOR * max(base_need, htf_need)

    @property
    def feature_set_id(self) -> str:
        spec = {
            "code": FEATURE_CODE_VERSION,
            "timeframe": self.timeframe,
            "groups": sorted(self.settings.groups),
            "periods": sorted(self.settings.periods),
            "higher_timeframes": self.higher_timeframes,
            "names": self.feature_names,
        }
        if self.settings.include_columns:  # only then: every existing model keeps its id
            spec["include_columns"] = sorted(self.settings.include_columns)
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    # ---------------------------------------------------------------- transform
    def transform(self, df: pd.DataFrame, source: str | None = None) -> pd.DataFrame:
        """Return ``df`` plus the feature columns; same rows, same order, same index.

        ``source`` (the pair) names the frame in warnings and makes them once per source and
        bad candle: a strategy transforms the same window again on every new candle, and one
        zero-volume candle must not warn until it leaves the frame.
        """
        return pd.concat([df, self.features(df, source)], axis=1)

    def features(self, df: pd.DataFrame, source: str | None = None) -> pd.DataFrame:
        """The feature columns alone (same index as ``df``): a gate adds them to no one's
        frame, so a user's indicator can never be overwritten by a feature of the same name."""
        missing = [c for c in REQUIRED if c not in df.columns]
        if missing:
            raise KeyError(f"FeatureEngineer needs columns {missing}; the frame has {list(df.columns)}")
        features = self._compute(df, source)
        user = self.user_columns(df)
        if user:
            values = df[user].astype(np.float64).replace([np.inf, -np.inf], np.nan)
            features = pd.concat([features, values], axis=1)
        return features

    def user_columns(self, df: pd.DataFrame) -> list[str]:
        """The strategy's own numeric columns that ``include_columns`` names (sorted): never
        OHLCV, freqtrade's signal columns or the gate's own."""
        patterns = self.settings.include_columns
        if not patterns:
            return []
        reserved = set(REQUIRED) | {"enter_long", "enter_short", "exit_long", "exit_short", "enter_tag", "exit_tag"}
        return sorted(
            c for c in df.columns
            if isinstance(c, str) and c not in reserved and not c.startswith(("ml_", PREFIX))
            and any(fnmatch.fnmatchcase(c, p) for p in patterns)
            and (pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]))
        )

    def _warn_once(self, source: str | None, key: str, message: str, *args) -> None:
        if source is not None:
            if (source, key) in self._warned:
                return
            self._warned.add((source, key))
        logger.warning("FeatureEngineer%s: " + message, f" ({source})" if source else "", *args)

    def _compute(self, df: pd.DataFrame, source: str | None = None) -> pd.DataFrame:
        bad = self._bad_rows(df, source)
        clean = self._bridge(df, bad) if bad.any() else df
        if len(df) < self.startup_candles:
            logger.warning(
                "FeatureEngineer: only %d candles, features need %d to warm up; early rows are NaN.",
                len(df), self.startup_candles,
            )
        if len(df) == 0:
            return pd.DataFrame({n: pd.Series(dtype="float64") for n in self.feature_names}, index=df.index)
        p = _Prices(clean)
        cols: Columns = {}
        periods = sorted(self.settings.periods)
        builders: dict[str, Callable[[], Columns]] = {
            "returns": lambda: _returns(p, periods),
            "trend": lambda: _trend(p, periods),
            "momentum": lambda: _momentum(p, periods),
            "volatility": lambda: _volatility(p, periods),
            "volume": lambda: _volume(p, periods),
            "calendar": lambda: _calendar(p.dates_ns),
        }
        for group in self.settings.groups:
            if group in builders:
                cols.update(builders[group]())
        for htf in self.higher_timeframes:
            cols.update(_higher_tf(p, htf, self._base))
        # One (features x rows) block, filled row by row: pandas stores frames that way,
        # so the transpose below is free and the frame is not fragmented.
        block = np.empty((len(cols), len(df)))
        for row, values in zip(block, cols.values(), strict=True):
            row[:] = values
            infinite = np.isinf(row)
            if infinite.any():
                row[infinite] = np.nan
        if bad.any():
            block[:, bad] = np.nan
        return pd.DataFrame(block.T, index=df.index, columns=[PREFIX + k for k in cols], copy=False)

    def _bad_rows(self, df: pd.DataFrame, source: str | None = None) -> np.ndarray:
        prices = df[["open", "high", "low", "close"]].to_numpy(dtype="float64")
        volume = df["volume"].to_numpy(dtype="float64")
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(prices).all(axis=1) | (prices <= 0).any(axis=1) | ~np.isfinite(volume)
        if bad.any():
            first = df["date"].iloc[int(np.argmax(bad))]
            self._warn_once(source, f"bad:{first}", "%d candles with NaN/inf or non-positive values (first at %s): "
                            "their features are NaN; later candles bridge them with the previous price.",
                            int(bad.sum()), first)
        zero = volume == 0
        if zero.any():
            first = df["date"].iloc[int(np.argmax(zero))]
            self._warn_once(source, f"zero:{first}", "%d candles with zero volume (first at %s): volume features "
                            "are NaN there.", int(zero.sum()), first)
        return bad

    @staticmethod
    def _bridge(df: pd.DataFrame, bad: np.ndarray) -> pd.DataFrame:
        """Carry the previous good candle over bad rows so recursions keep running."""
        clean = df[list(REQUIRED)].copy()
        cols = ["open", "high", "low", "close", "volume"]
        clean.loc[bad, cols] = np.nan
        clean[cols] = clean[cols].ffill().bfill()
        clean.loc[bad, "volume"] = 0.0
        return clean

    def _names_from_probe(self) -> list[str]:
        """Feature names in column order, from a tiny synthetic frame (cheap, exact)."""
        n = 8
        dates = pd.date_range("2020-01-01", periods=n, freq=self._base, tz="UTC")
        probe = pd.DataFrame({"date": dates, "open": 1.0, "high": 1.1, "low": 0.9, "close": 1.0,
                              "volume": 1.0})
        prev = logger.disabled
        logger.disabled = True
        try:
            return list(self._compute(probe).columns)
        finally:
            logger.disabled = prev


def correlation_prune(X: pd.DataFrame, threshold: float) -> list[str]:
    """Columns to keep so that no kept pair has |Pearson r| above ``threshold``.

    Decided once on training rows and stored with the model; inference never recomputes it.
    Greedy in column order, so the result is deterministic.
    """
    corr = X.corr().abs().to_numpy()
    kept: list[int] = []
    for j in range(corr.shape[0]):
        if all(not (corr[j, i] > threshold) for i in kept):
            kept.append(j)
    return [X.columns[j] for j in kept]
