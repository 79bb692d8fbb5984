"""Plugins: packages that extend slmkit by registering parts, found by entry point (group `slmkit.plugins`).

slmkit never imports a plugin by name; data_prep, for one, registers its data preparer, commands, tokenizer kinds
and filter languages when its entry point loads, so the dependency runs one way: data_prep -> slmkit.
"""

from __future__ import annotations

import logging
from importlib import metadata

from slmkit.errors import SlmkitError

ENTRY_POINT_GROUP = "slmkit.plugins"
REINSTALL = "reinstall slmkit with `pip install -e .` (it declares data_prep as a plugin) and check that it imports"

log = logging.getLogger("slmkit")
_loaded = False
_failures: dict[str, str] = {}  # entry point name -> why it did not load


def load_plugins() -> None:
    """Imports every installed plugin once; each registers what it provides as it is imported.

    A plugin that fails to import is remembered, not raised: slmkit's own commands still work, and whatever only the
    plugin provides fails with `missing_plugin`, which says why.
    """
    global _loaded
    if _loaded:
        return
    _loaded = True  # first: a plugin's own registry lookups while it imports must not load it again
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry_point.load()
        except Exception as error:  # any import-time failure of a plugin; its traceback goes to the (info) log
            log.info("slmkit plugin %s (%s) did not load", entry_point.name, entry_point.value, exc_info=True)
            _failures[entry_point.name] = f"{type(error).__name__}: {error}"


def plugin_problem() -> str | None:
    """Why a part that a plugin should provide may be missing (a plugin that failed to load, or none installed);
    None when every installed plugin loaded."""
    load_plugins()
    if _failures:
        return "; ".join(f"plugin {name} did not load ({why})" for name, why in sorted(_failures.items()))
    if not list(metadata.entry_points(group=ENTRY_POINT_GROUP)):
        return f"no slmkit plugin is installed (entry point group {ENTRY_POINT_GROUP})"
    return None


def missing_plugin(what: str) -> SlmkitError:
    """The error for something only a plugin provides (`what` names it and the plugin, e.g. data_prep)."""
    return SlmkitError(f"{what} is not available: {plugin_problem() or 'no installed plugin provides it'}; {REINSTALL}")
