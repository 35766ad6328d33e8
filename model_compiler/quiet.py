"""`tandem-compile --quiet`: silence the progress bars and INFO chatter of the libraries a compile runs.

NNCF draws rich progress bars and logs INFO lines through its own stdout handler (not the root logger, so
--log-level cannot reach it); tqdm bars appear in some converters. Warnings and errors still show.
"""

from __future__ import annotations

import logging
import os

__all__ = ["silence_third_party_progress"]


def silence_third_party_progress() -> None:
    """Turn off tqdm and rich progress output and NNCF's INFO lines for the rest of this process."""
    os.environ["TQDM_DISABLE"] = "1"  # read by every tqdm bar as it is created (tqdm >= 4.66)
    try:
        import rich

        rich.get_console().quiet = True  # the console rich.progress (NNCF's bars) draws on when given none
    except ImportError:
        pass
    try:
        # NNCF sets its logger to INFO when imported, so it has to be imported before it can be quieted.
        from nncf.common.logging.logger import set_log_level
    except ImportError:
        return
    set_log_level(logging.WARNING)
