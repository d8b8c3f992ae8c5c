"""Passwords out of anything written down: URLs of the form scheme://user:password@host.

Storage URLs travel through argv (the registry's event log records the command), logs,
bundle.json and W&B. Light on purpose (no optuna/pandas): the registry imports it.
"""

from __future__ import annotations

import re

_CREDENTIALS = re.compile(r"(://[^:/@\s]*):([^@\s]*)@")


def redact_urls(text: str | None) -> str | None:
    """``text`` with the password of every URL in it replaced by ***."""
    return _CREDENTIALS.sub(r"\1:***@", text) if text else text
