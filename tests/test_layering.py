"""The arrows between packages point one way: read from every module's imports (its source, not a running process).

data_prep builds on slmkit's base modules only; slmkit reaches data_prep only through plugin registration; the model
is plain PyTorch, free of Lightning, DeepSpeed and the run's config, CLI and training; eval, generate, predict, embed
and export start from a checkpoint, never from training's internals; and no module imports, however indirectly, a
module that imports it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

# What data_prep may use of slmkit: the error type, atomic files, fsspec file systems, documented options, registries
# and plugin registration, the data and tokenizer contracts. Never the model, training, the run config or the CLI.
SLMKIT_BASE = (
    "slmkit.atomic",
    "slmkit.commands",
    "slmkit.data",
    "slmkit.data_config",
    "slmkit.errors",
    "slmkit.filesystems",
    "slmkit.options",
    "slmkit.registry",
    "slmkit.tokenizer",
)
NOT_IN_MODEL = ("lightning", "pytorch_lightning", "deepspeed", "slmkit.config", "slmkit.cli", "slmkit.training")
# What starts from a checkpoint, and what of training it never reaches into: the loop, the objectives (the heads are
# read from the checkpoint's config), distillation.
FROM_A_CHECKPOINT = ("slmkit.checkpoint", "slmkit.eval", "slmkit.export", "slmkit.generate", "slmkit.predict",
                     "slmkit.embed", "slmkit.decoding")
TRAINING_INTERNALS = ("slmkit.training", "slmkit.objectives", "slmkit.distill", "lightning", "pytorch_lightning")


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


@pytest.mark.parametrize("path", [p for p in modules("slmkit") if is_within(module_name(p), FROM_A_CHECKPOINT)],
                         ids=lambda p: module_name(p))
def test_what_starts_from_a_checkpoint_stays_out_of_training(path):
    reached = sorted(m for m in imports(path) if is_within(m, TRAINING_INTERNALS))
    assert not reached, f"{module_name(path)} imports {reached}: it must start from a checkpoint (slmkit.checkpoint)"


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of the repository it imports (top-level and inside functions alike); a package's
    `from slmkit.x import submodule` in its own __init__ is no arrow to itself."""
    paths = modules("slmkit") + modules("data_prep")
    names = {module_name(path) for path in paths}
    return {module_name(path): {m for m in imports(path) if m in names} - {module_name(path)} for path in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a set of modules that import each
    other round a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_package():
    found = cycles(import_graph())
    assert not found, "modules that import each other round a circle: " + "; ".join(" <-> ".join(c) for c in found)


def test_loading_a_checkpoint_imports_no_training_eval_or_distillation():
    code = ("import sys, slmkit.checkpoint; "
            "print(sorted(m for m in sys.modules if m.startswith(('slmkit.objectives', 'slmkit.eval', 'slmkit.distill', "
            "'slmkit.training'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
