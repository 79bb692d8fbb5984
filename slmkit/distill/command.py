"""`slmkit distill teacher=PATH recipe=NAME [key=value ...]`: the `slmkit train` run it stands for.

A distillation is a train run of the student recipe with a teacher and the distillation objective of what the recipe
learns, so a pretraining recipe and a classification recipe both become students as they are.
"""

from __future__ import annotations

from typing import Sequence

from slmkit.errors import SlmkitError

# The distillation objective that teaches what a recipe's objective learns.
DISTILLED = {"causal_lm": "distill_lm", "classification": "distill_classification"}


def train_arguments(args: Sequence[str]) -> list[str]:
    """The `slmkit train` arguments of a distill command: teacher=PATH becomes distill.teacher=PATH, and the recipe's
    objective becomes its distillation counterpart (causal_lm -> distill_lm, classification -> distill_classification)."""
    from slmkit.recipe import resolve_recipe

    teachers = [a.split("=", 1)[1] for a in args if a.startswith("teacher=")]
    rest = [a for a in args if not a.startswith("teacher=")]
    if len(teachers) > 1:
        raise SlmkitError("give one teacher=PATH")
    if teachers:
        rest.append(f"distill.teacher={teachers[0]}")
    recipes = [a.split("=", 1)[1] for a in rest if a.startswith("recipe=")]
    if not recipes:
        raise SlmkitError("name the student's recipe: slmkit distill teacher=PATH recipe=NAME (see `slmkit recipes`)")
    chosen = [a.split("=", 1)[1] for a in rest if a.startswith("objective.name=")]
    objective = chosen[-1] if chosen else resolve_recipe(recipes[-1], follow_init_from=False).objective.name
    if objective in DISTILLED:
        rest.append(f"objective.name={DISTILLED[objective]}")
    elif objective not in DISTILLED.values():
        raise SlmkitError(
            f"recipe {recipes[-1]} trains objective {objective}, and distillation teaches "
            f"{' or '.join(DISTILLED)} students: choose a recipe of one of those"
        )
    if not teachers and not any(a.startswith("distill.teacher=") for a in rest) and \
            not resolve_recipe(recipes[-1], follow_init_from=False).distill.teacher:
        raise SlmkitError(f"recipe {recipes[-1]} names no teacher: slmkit distill teacher=PATH recipe={recipes[-1]}")
    return rest
