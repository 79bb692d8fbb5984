"""data_prep plugs into slmkit by entry point: slmkit finds its commands, data preparer, tokenizer kinds and filter
languages without importing it, and says so plainly when it cannot load it."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

from slmkit.commands import RECIPE_COMMANDS
from slmkit.data import data_preparer
from slmkit.data_config import STOPWORD_LANGUAGES
from slmkit.tokenizer import TOKENIZER_KINDS

# Runs slmkit with data_prep unimportable, as in an installation that lacks it.
WITHOUT_DATA_PREP = "import sys; sys.modules['data_prep'] = None; from slmkit.cli import main; sys.exit(main(sys.argv[1:]))"


def test_data_prep_is_declared_as_a_plugin_and_registers_its_parts():
    assert "data_prep.plugin" in [entry.value for entry in metadata.entry_points(group="slmkit.plugins")]
    assert {"data prepare", "data report", "tokenizer train"} <= set(RECIPE_COMMANDS.names())
    assert {"bpe", "char"} <= set(TOKENIZER_KINDS.names()) and "en" in STOPWORD_LANGUAGES
    assert data_preparer().prepare.__module__ == "data_prep.pipeline"


def test_without_data_prep_the_cli_says_that_the_plugin_did_not_load():
    for args in (["data", "prepare", "recipe=legal-tiny"], ["train", "recipe=legal-tiny", "--dry-run"]):
        result = subprocess.run([sys.executable, "-c", WITHOUT_DATA_PREP, *args], capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 2, result.stderr
        assert "plugin data_prep did not load" in result.stderr and "pip install -e ." in result.stderr
        assert "Traceback" not in result.stderr
