"""The arrows between packages point one way: read from every module's imports (its source, not a running process).

data_prep builds on slmkit's base modules only; slmkit reaches data_prep only through plugin registration; the model
is plain PyTorch, free of Lightning, DeepSpeed and the run's config, CLI and training.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

# What data_prep may use of slmkit: the error type, atomic files, documented options, registries and plugin
# registration, the data and tokenizer contracts. Never the model, training, the run config or the CLI.
SLMKIT_BASE = (
    "slmkit.atomic",
    "slmkit.commands",
    "slmkit.data",
    "slmkit.data_config",
    "slmkit.errors",
    "slmkit.options",
    "slmkit.registry",
    "slmkit.tokenizer",
)
NOT_IN_MODEL = ("lightning", "pytorch_lightning", "deepspeed", "slmkit.config", "slmkit.cli", "slmkit.training")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module the file imports, at the top or inside functions; `from a import b` counts a.b when b is a module."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            for alias in node.names:
                candidate = REPO_ROOT.joinpath(*f"{base}.{alias.name}".split("."))
                if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
                    found.add(f"{base}.{alias.name}")
    return found


def is_within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def modules(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", modules("slmkit"), ids=lambda p: module_name(p))
def test_no_slmkit_module_imports_data_prep(path):
    assert not [m for m in imports(path) if is_within(m, ("data_prep",))], (
        f"{module_name(path)} imports data_prep: reach it through slmkit.plugins registrations instead"
    )


@pytest.mark.parametrize("path", modules("slmkit/model"), ids=lambda p: module_name(p))
def test_the_model_is_plain_pytorch(path):
    assert not [m for m in imports(path) if is_within(m, NOT_IN_MODEL)]


@pytest.mark.parametrize("path", modules("data_prep"), ids=lambda p: module_name(p))
def test_data_prep_uses_only_slmkit_base_modules(path):
    beyond = sorted(m for m in imports(path) if is_within(m, ("slmkit",)) and not is_within(m, SLMKIT_BASE))
    assert not beyond, f"{module_name(path)} imports {beyond}; data_prep may use only {', '.join(SLMKIT_BASE)}"
