"""MeanReversion, gated by the ML model trained on its own trades (see TrendPullbackML).

    ftml train -c config.json --strategy MeanReversion
    ftml freqtrade --offline backtesting -c config.json --strategy-list MeanReversionML MeanReversion
"""

from MeanReversion import MeanReversion

from ml.gate import MLGate


class MeanReversionML(MLGate, MeanReversion):
    pass
