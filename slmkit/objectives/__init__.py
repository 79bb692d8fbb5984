"""Training objectives by name: what a run teaches the model, which heads that needs and which data it reads.

Importing this package registers every built-in objective.
"""

from slmkit.objectives import classification, language_model, sft, span_qa, token_classification  # noqa: F401
from slmkit.objectives import contrastive, masked_lm  # noqa: F401
from slmkit.objectives import distill  # noqa: F401  (after classification and language_model, which it builds on)
from slmkit.objectives.base import OBJECTIVES, TASK_EXAMPLES, TOKEN_WINDOWS, Objective, TaskObjective, objective_heads

__all__ = ["OBJECTIVES", "TASK_EXAMPLES", "TOKEN_WINDOWS", "Objective", "TaskObjective", "objective_heads"]
