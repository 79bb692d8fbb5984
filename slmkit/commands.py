"""Commands that plugins add to the `slmkit` CLI, each of the form `slmkit GROUP ACTION [flags] recipe=NAME [key=value ...]`.

The CLI parses the flags and resolves the recipe; the command gets the resolved RunConfig and returns what to print.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable

from slmkit.registry import Registry


@dataclass(frozen=True)
class RecipeCommand:
    help: str
    run: Callable[[Any, argparse.Namespace], str]  # (RunConfig, parsed flags) -> text to print
    flags: dict[str, dict[str, Any]] = field(default_factory=dict)  # "--flag" -> argparse add_argument keywords


RECIPE_COMMANDS: Registry[RecipeCommand] = Registry(
    "command", "A RecipeCommand registered under \"GROUP ACTION\" (e.g. \"data prepare\")."
)
