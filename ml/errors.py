"""One base class for every failure a user can fix, so one handler maps them to exit code 2.

Kept import-free: ``ftml`` catches these without loading pandas, freqtrade or sklearn.
"""


class FtmlError(Exception):
    """A problem the user can fix; the message is one line that says what to do."""

    exit_code = 2
