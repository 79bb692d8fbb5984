"""Another model a run starts from — the weights of `init_from`, a distillation teacher, the layers a student starts
from: found at a path, with the tokenizer it reads text with and (an slmkit run) its config, and what a run takes from
it below its recipe.

This is the one "start from another model" path. A local transformers folder (config.json, no config.yaml) is
recognised here; importing one as an slmkit model (the export table read backwards) plugs in at `starting_point`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from slmkit.checkpoint.files import locate_run
from slmkit.checkpoint.run_folder import RunFolder
from slmkit.config import RunConfig, load_run_config
from slmkit.errors import SlmkitError
from slmkit.tokenizer import tokenizer_differences

HF_CONFIG = "config.json"  # a transformers model folder's config


@dataclass(frozen=True)
class StartingPoint:
    """A model found at `path` (given as the setting `key`): an slmkit run (`run` and `config` set) or a transformers
    folder (both None)."""

    key: str
    path: Path
    run: Optional[RunFolder]
    config: Optional[RunConfig]
    tokenizer_path: Optional[Path]

    @property
    def is_transformers(self) -> bool:
        return self.run is None

    def layer(self, model: bool) -> dict[str, Any]:
        """What a run takes from this model below its recipe: its tokenizer file (a model reads text only with the
        tokenizer it was trained with) and, with `model`, its model section (the weights have its shapes)."""
        taken: dict[str, Any] = {}
        if self.tokenizer_path is not None:
            taken["tokenizer"] = {"path": str(self.tokenizer_path)}
        if model:
            if self.config is None:
                raise SlmkitError(
                    f"{self.key}={self.path} is a transformers model folder ({HF_CONFIG}, no config.yaml), and "
                    f"{self.key} takes its architecture from an slmkit run: give the slmkit run it was exported from"
                )
            taken["model"] = dataclasses.asdict(self.config.model)
        return taken

    def check_same_tokenizer(self, chosen: Path) -> None:
        """Refuses a run that would read text with another tokenizer than this model was trained with, saying what
        differs."""
        if self.tokenizer_path is None:
            return
        differences = tokenizer_differences(self.tokenizer_path, chosen, (self.key, "tokenizer.path"))
        if differences:
            raise SlmkitError(
                f"tokenizer.path={chosen} is not the tokenizer of {self.key}={self.path} ({self.tokenizer_path}): "
                f"{'; '.join(differences)}. A model can only continue with the tokenizer it was trained with; drop "
                "the tokenizer.path override"
            )


def starting_point(path: str | Path, key: str) -> StartingPoint:
    """The model at `path`: an slmkit run folder, a `latest` link or a checkpoint in a run, or a transformers folder."""
    source = Path(path).expanduser()
    if source.is_dir() and (source / HF_CONFIG).is_file() and not RunFolder(source).is_run():
        tokenizer = RunFolder(source).tokenizer
        return StartingPoint(key, source, None, None, tokenizer if tokenizer.is_file() else None)
    run = RunFolder(locate_run(source, key))
    return StartingPoint(key, source, run, load_run_config(run.config), run.tokenizer if run.tokenizer.is_file() else None)
