"""The console: one line per event. The CLI logs through one root handler at WARNING (INFO with -v); libraries that
bring their own console handler (Lightning) are routed through it once, at its level, so their routine notices,
advertisements and deprecation notes stay out of a normal run and `-v` shows everything, once.
"""

from __future__ import annotations

import logging
import warnings

# Loggers that install a console handler of their own on import, which would print each line a second time.
LIBRARY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


def verbose() -> bool:
    """Whether the user asked to see everything (`slmkit -v`)."""
    return logging.getLogger().getEffectiveLevel() <= logging.INFO


def route_library_logs() -> None:
    """Called once the libraries are imported: their records go to the root handler only, at its level; a normal run
    also hides the deprecation notes libraries raise about each other's APIs."""
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
            logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    if not verbose():
        # Lightning's own use of a torch API it was told is deprecated: nothing the user can act on.
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
