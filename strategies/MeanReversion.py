"""Plain mean-reversion strategy, no ML: the un-gated twin of MeanReversionML.

Entry: close below the lower Bollinger band (20, 2) and RSI(14) < 35
(``ml.signals.mean_reversion``). Exits as TrendPullback: ROI, stop-loss, time exit.
"""

from TrendPullback import TrendPullback

from ml.signals import mean_reversion


class MeanReversion(TrendPullback):
    base_signal = staticmethod(mean_reversion)
