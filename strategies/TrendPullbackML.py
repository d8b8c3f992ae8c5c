"""Trend pullback, gated by the production model 'trend_pullback' (see ml.strategy).

Compare with its un-gated twin in one run:
    ftml freqtrade --offline backtesting -c config.json --strategy-list TrendPullbackML TrendPullback
"""

from ml.strategy import MLGatedStrategy


class TrendPullbackML(MLGatedStrategy):
    signal_name = "trend_pullback"
