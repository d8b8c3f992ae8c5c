"""Synthetic candle markets with a known truth, for tests and the offline demo.

Both markets share one price process, per candle t:

* volatility: GARCH(1,1) on the log return, ``h_t = w + a*e_{t-1}^2 + b*h_{t-1}`` with
  a = 0.06, b = 0.92 (clustering), times an intraday seasonal factor;
* shocks: Student-t with 5 degrees of freedom scaled to unit variance (fat tails);
* volume: intraday seasonal profile x current volatility x log-normal noise (never 0).

``null`` adds nothing: returns are a martingale, so no feature can predict them.

``planted`` adds one weak, known predictable component, a mean-reverting drift:

    z_t     = (log close_t - EMA_20(log close)_t) / (sigma * sqrt(20))
    drift_t+1 = -STRENGTH * sigma_t+1 * tanh(z_t)          (STRENGTH = 0.25)

``z_t`` uses candles <= t only, so a feature like "distance of close from its 20-candle
EMA, in volatility units" recovers it. ``flip_at`` reverses the sign from that candle on
(a regime change: the rule becomes momentum). :func:`oracle_auc` measures how well the
true ``-z_t`` ranks the labels of given rows (a strategy's trades): the best AUC a model
can hope for on them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from freqtrade.data.history import get_datahandler
from freqtrade.enums import CandleType
from freqtrade.exchange import timeframe_to_minutes

from ml.synth_marker import mark, refuse_foreign

Market = Literal["null", "planted"]
STRENGTH = 0.25
EMA_SPAN = 20
GARCH_ALPHA, GARCH_BETA = 0.06, 0.92
T_DOF = 5.0
# Typical 5m crypto volatility per candle; scaled with sqrt(time) for other timeframes.
SIGMA_5M = 0.0035


def _seasonal(hours: np.ndarray, peak_hour: float, depth: float) -> np.ndarray:
    return 1.0 + depth * np.cos(2.0 * np.pi * (hours - peak_hour) / 24.0)


def simulate(
    candles: int,
    timeframe: str = "5m",
    market: Market = "null",
    seed: int = 0,
    start: str = "2024-01-01",
    flip_at: int | None = None,
    strength: float = STRENGTH,
    start_price: float | None = None,
    vol_shift_at: int | None = None,
    vol_shift: float = 1.0,
    hour_drift: float = 0.0,
    trend: float = 0.0,
    trend_at: int | None = None,
    below_only: bool = False,
    trend_ramp: int = 0,
) -> tuple[pd.DataFrame, pd.Series]:
    """One pair's candles plus the planted score ``-z_t`` (zero on a null market).

    The score is the oracle's ranking: higher means a larger expected drift up.
    ``vol_shift_at`` / ``vol_shift`` multiply volatility from that candle on (a calm or
    wild regime): with fixed barriers the win rate moves with it, the base-rate drift that
    calibration on a recent block exists to fix.
    ``hour_drift`` adds an intraday drift of ``hour_drift * cos(2*pi*(hour - 6)/24)``
    volatilities per candle (up in the early UTC hours, down in the late ones; reversed from
    ``flip_at`` on): a known edge for *any* strategy's trades, which hour-of-day features
    recover, whatever the strategy's own entry rule is. The returned score does not include it.
    ``trend`` / ``trend_at``: from that candle on, add ``trend`` volatilities per candle (a
    bear market when negative): every long trade's win rate falls, the base-rate drift a
    calibrator fitted on an older block gets wrong. With ``trend_ramp`` the trend grows
    linearly to full size over that many candles (a drift, not a jump).
    ``below_only``: the planted reversion acts only below the EMA (after a fall), so longs
    opened after a dip have an edge and shorts opened after a spike have none: a market
    where only one side is predictable.
    """
    if market not in ("null", "planted"):
        raise ValueError(f"market must be 'null' or 'planted', got {market!r}")
    if candles < 2:
        raise ValueError(f"candles must be >= 2, got {candles}")
    rng = np.random.default_rng(seed)
    minutes = timeframe_to_minutes(timeframe)
    sigma = SIGMA_5M * math.sqrt(minutes / 5.0)
    dates = pd.date_range(start, periods=candles, freq=f"{minutes}min", tz="UTC")
    hours = (dates.hour + dates.minute / 60.0).to_numpy()
    vol_season = _seasonal(hours, peak_hour=15.0, depth=0.3)
    if vol_shift_at is not None:
        vol_season[vol_shift_at:] *= vol_shift
    shocks = rng.standard_t(T_DOF, size=candles) / math.sqrt(T_DOF / (T_DOF - 2.0))

    kappa = np.zeros(candles)
    if market == "planted":
        kappa[:] = strength
        if flip_at is not None:
            kappa[flip_at:] = -strength
    drift = hour_drift * np.cos(2.0 * np.pi * (hours - 6.0) / 24.0)
    if flip_at is not None:
        drift[flip_at:] *= -1.0  # the regime change reverses the intraday edge too
    if trend_at is not None:
        ramp = np.minimum(1.0, np.arange(1, candles - trend_at + 1) / max(trend_ramp, 1)) if trend_at < candles else 0.0
        drift[trend_at:] += trend * ramp
    log_ret, score = _run_process(shocks, vol_season, kappa, sigma, drift, below_only)

    price0 = start_price if start_price is not None else 10 ** rng.uniform(-3, 2)
    log_close = math.log(price0) + np.cumsum(log_ret)
    close = np.exp(log_close)
    open_ = np.exp(np.concatenate(([math.log(price0)], log_close[:-1])))
    spread = sigma * vol_season * 0.6
    high = np.maximum(open_, close) * np.exp(np.abs(rng.standard_normal(candles)) * spread)
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.standard_normal(candles)) * spread)
    realised = np.abs(log_ret) / (sigma * vol_season)
    volume = (
        1000.0
        * _seasonal(hours, peak_hour=14.0, depth=0.5)
        * (0.5 + realised)
        * rng.lognormal(0.0, 0.4, size=candles)
    )
    frame = pd.DataFrame(
        {"date": dates, "open": open_, "high": high, "low": low, "close": close, "volume": volume}
    )
    return frame, pd.Series(score, index=frame.index, name="planted_score")


def _pull(z: float, below_only: bool) -> float:
    """How hard the planted reversion pulls at oscillator value ``z`` (only below the EMA
    with ``below_only``); the drift and the oracle score both use it."""
    return math.tanh(min(z, 0.0) if below_only else z)


def _run_process(
    shocks: np.ndarray, season: np.ndarray, kappa: np.ndarray, sigma: float, drift: np.ndarray,
    below_only: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The GARCH + planted-drift recursion. Sequential by nature; plain floats keep it fast."""
    omega = sigma**2 * (1.0 - GARCH_ALPHA - GARCH_BETA)
    alpha_ema = 2.0 / (EMA_SPAN + 1.0)
    z_scale = sigma * math.sqrt(EMA_SPAN)
    n = len(shocks)
    log_ret = np.empty(n)
    score = np.empty(n)
    h, e2, logp, ema, z = sigma**2, sigma**2, 0.0, 0.0, 0.0
    shocks_l, season_l, kappa_l, drift_l = shocks.tolist(), season.tolist(), kappa.tolist(), drift.tolist()
    for t in range(n):
        h = omega + GARCH_ALPHA * e2 + GARCH_BETA * h
        sd = math.sqrt(h)
        eps = sd * shocks_l[t]
        e2 = eps * eps
        step_sd = season_l[t]
        pull = _pull(z, below_only)
        # The hour drift sits outside the seasonal volatility factor so that it sums to zero
        # over a day (no trend over the whole path).
        r = step_sd * (eps - kappa_l[t] * sd * pull) + drift_l[t] * sd
        logp += r
        ema += alpha_ema * (logp - ema)
        z = (logp - ema) / z_scale
        log_ret[t] = r
        # The score known at the close of t, for the drift from t+1 on.
        score[t] = -_pull(z, below_only) * (kappa_l[t + 1] if t + 1 < n else kappa_l[t])
    return log_ret, score


def pair_seed(seed: int, index: int) -> int:
    """Independent, reproducible seed for the index-th pair."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def write_market(
    datadir: str | Path,
    pairs: list[str],
    timeframe: str,
    candles: int,
    market: Market,
    seed: int = 0,
    start: str = "2024-01-01",
    flip_at: int | None = None,
    data_format: str = "feather",
    trading_mode: str = "spot",
    force: bool = False,
    **process: float | int | None,
) -> list[Path]:
    """Write one file per pair in freqtrade's own format and naming, and record them as
    synthetic (ml.synth_marker). Files it did not write are refused unless ``force``.

    ``trading_mode="futures"`` (pairs like ``ETH/USDT:USDT``) writes what freqtrade's futures
    backtest reads: the futures candles, mark candles equal to them, and a zero funding rate.
    """
    datadir = Path(datadir)
    datadir.mkdir(parents=True, exist_ok=True)
    handler = get_datahandler(datadir, data_format)
    futures = trading_mode == "futures"
    kinds = [CandleType.FUTURES, CandleType.MARK, CandleType.FUNDING_RATE] if futures else [CandleType.SPOT]

    def target(pair: str, kind: CandleType) -> Path:
        return handler._pair_data_filename(datadir, pair, timeframe, kind)

    if not force:
        refuse_foreign([target(pair, kind) for pair in pairs for kind in kinds[:1]])
    written, every_file = [], []
    for i, pair in enumerate(pairs):
        frame, _ = simulate(candles, timeframe, market, pair_seed(seed, i), start, flip_at, **process)
        handler.ohlcv_store(pair, timeframe, frame, kinds[0])
        written.append(target(pair, kinds[0]))
        if futures:
            handler.ohlcv_store(pair, timeframe, frame, CandleType.MARK)
            funding = pd.DataFrame({"date": frame["date"], "funding_rate": 0.0})
            handler.ohlcv_store(pair, timeframe, funding, CandleType.FUNDING_RATE)
            every_file += [target(pair, CandleType.MARK), target(pair, CandleType.FUNDING_RATE)]
    mark(datadir, [p for p in [*written, *every_file] if p.is_file()],
         {"market": market, "seed": seed, "candles": candles, "timeframe": timeframe})
    return written


def oracle_auc(rows: pd.DataFrame, pairs: list[str], timeframe: str, candles: int, seed: int = 0,
               start: str = "2024-01-01", **process: float | int | None) -> float:
    """AUC of the true planted score against labelled rows of a market that ``write_market``
    wrote with the same arguments: the best AUC a model can reach on exactly those rows.

    ``rows``: ``pair``, ``date`` (the signal candle, tz-aware) and ``label`` per row, e.g. a
    strategy's trades (``ml.dataset``).
    """
    from sklearn.metrics import roc_auc_score

    scores = []
    for i, pair in enumerate(pairs):
        frame, score = simulate(candles, timeframe, "planted", pair_seed(seed, i), start, **process)
        mine = rows[rows["pair"] == pair]
        lookup = pd.Series(score.to_numpy(), index=pd.DatetimeIndex(frame["date"]))
        scores.append(pd.DataFrame({"label": mine["label"].to_numpy(),
                                    "score": lookup.reindex(pd.DatetimeIndex(mine["date"])).to_numpy()}))
    both = pd.concat(scores, ignore_index=True).dropna()
    return float(roc_auc_score(both["label"], both["score"]))
