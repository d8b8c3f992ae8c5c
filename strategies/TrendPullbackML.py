"""TrendPullback, gated by the ML model trained on its own trades: the one line below.

    ftml train -c config.json --strategy TrendPullback
    ftml freqtrade --offline backtesting -c config.json --strategy-list TrendPullbackML TrendPullback
"""

from TrendPullback import TrendPullback

from ml.gate import MLGate


class TrendPullbackML(MLGate, TrendPullback):
    pass
