"""Distillation: a student learns from a frozen teacher's outputs as well as from the data — next-token prediction
on windows of the token shards (distill_lm) or a classification task, whose inputs are joined by unlabeled in-domain
text that only the teacher labels (distill_classification).

loss = (1 - alpha) * cross-entropy on the data + alpha * T^2 * KL(teacher_T || student_T) [+ hidden_weight * cosine]
(reverse KL with distill.kl=reverse). Validation reports the data's cross-entropy alone, so a distilled run's val_loss
compares with the same recipe trained without a teacher.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import nn

from slmkit.distill.cache import TeacherTopkWindows, check_cache_k, teacher_topk_cache
from slmkit.distill.losses import blend, hidden_cosine_loss, kl_at_temperature, masked_mean
from slmkit.distill.student_init import check_student_fits, init_student
from slmkit.distill.teacher import TeacherSpec, check_teacher_fits, describe_teacher
from slmkit.errors import SlmkitError
from slmkit.model import CLASSIFIER_HEAD, IGNORE_INDEX, LM_HEAD, HeadSpec, Model
from slmkit.objectives.base import OBJECTIVES, Batch, Example, Objective
from slmkit.objectives.classification import SequenceClassification
from slmkit.objectives.language_model import next_token_loss
from slmkit.streamed import token_shards
from slmkit.tokenizer import load_tokenizer

if TYPE_CHECKING:
    from slmkit.config import RunConfig



class Distiller(nn.Module):
    """The teacher's part of the loss: the frozen teacher and, for the hidden-state loss between models of different
    widths, the learned projection of the student's hidden states.

    The projection is a submodule: it trains with the student and is saved in the training checkpoint (not in the
    student's model.safetensors). The teacher is not: see FrozenTeacher for why it stays outside the module tree.
    """

    def __init__(self, config: "RunConfig", spec: TeacherSpec, head: str, load_teacher: bool):
        super().__init__()
        settings = config.distill
        self.alpha, self.temperature, self.direction = settings.alpha, settings.temperature, settings.kl
        self.hidden_weight = settings.hidden_weight
        self.teacher = spec.load(head) if load_teacher and self.uses_teacher else None
        width = config.model.d_model
        self.projection = nn.Linear(width, spec.width, bias=False) if self.hidden_weight and width != spec.width else None

    @property
    def uses_teacher(self) -> bool:
        return bool(self.alpha or self.hidden_weight)

    def teacher_outputs(self, model: Model, input_ids: torch.Tensor, padding_mask: Optional[torch.Tensor] = None):
        """The teacher's (logits, last hidden states or None) for the student's batch, on the student's device and
        dtype; under mixed precision the surrounding autocast runs it in the training precision."""
        self.teacher.follow(input_ids.device, model.body.tok_embeddings.weight.dtype)
        return self.teacher(input_ids, padding_mask, hidden=bool(self.hidden_weight))

    def kl(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, teacher_ids: Optional[torch.Tensor] = None,
           teacher_tail: Optional[torch.Tensor] = None) -> torch.Tensor:
        return kl_at_temperature(student_logits, teacher_logits, self.temperature, self.direction, teacher_ids, teacher_tail)

    def hidden_loss(self, student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                    mask: Optional[torch.Tensor]) -> torch.Tensor:
        projected = self.projection(student_hidden) if self.projection is not None else student_hidden
        return self.hidden_weight * hidden_cosine_loss(projected, teacher_hidden, mask)


def teacher_of(config: "RunConfig") -> TeacherSpec:
    if not config.distill.teacher:
        raise SlmkitError(
            f"objective {config.objective.name} learns from a teacher: set distill.teacher=PATH (an slmkit run folder "
            "or checkpoint, or a local Hugging Face model folder), e.g. `slmkit distill teacher=PATH recipe=NAME`"
        )
    return describe_teacher(config.distill.teacher)


def check_student_start(config: "RunConfig", spec: TeacherSpec) -> None:
    """A student starts from one set of weights: its teacher's layers or init_from, not both."""
    if not config.distill.init_from_teacher:
        return
    if config.init_from:
        raise SlmkitError("init_from and distill.init_from_teacher both give the student its starting weights: keep one")
    check_student_fits(config.model, spec, config.distill.init_every_k)


@OBJECTIVES.register("distill_lm")
class DistillLanguageModeling(Objective):
    """Next-token prediction from the data and from the teacher's distribution over the next token, at every position.

    The teacher's logits come from the teacher on the fly, or from a top-k cache beside the shards (distill.cache=topk),
    in which case the teacher is never loaded while the student trains.
    """

    @classmethod
    def heads(cls, config) -> list[HeadSpec]:
        return [HeadSpec(LM_HEAD)]

    @classmethod
    def check(cls, config: "RunConfig") -> None:
        spec = teacher_of(config)
        check_teacher_fits(config, spec, LM_HEAD)
        check_student_start(config, spec)
        if config.distill.cache == "topk" and config.distill.hidden_weight:
            raise SlmkitError(
                "distill.hidden_weight needs the teacher's hidden states, which the top-k cache does not hold: set "
                "distill.cache=none (the teacher runs beside the student) or distill.hidden_weight=0"
            )
        if config.distill.cache == "topk":
            check_cache_k(config.distill.cache_k, load_tokenizer(config.tokenizer.path).get_vocab_size(with_added_tokens=True))

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.vocabulary = tokenizer.get_vocab_size(with_added_tokens=True)  # rows past it are padding, never distilled
        self.teacher_spec = teacher_of(config)
        self.distiller = Distiller(config, self.teacher_spec, LM_HEAD, load_teacher=config.distill.cache == "none")

    def init_weights(self, model: Model) -> list[str]:
        if not self.config.distill.init_from_teacher:
            return []
        return init_student(model, self.teacher_spec, self.config.distill.init_every_k)

    def train_windows(self, shards_dir: Path) -> Optional[TeacherTopkWindows]:
        if self.config.distill.cache != "topk" or not self.distiller.uses_teacher:
            return None
        cache = teacher_topk_cache(self.config, self.teacher_spec, shards_dir, self.vocabulary, self.config.trainer.progress_bar)
        return TeacherTopkWindows(token_shards(shards_dir, "train"), self.config.model.block_size, cache)

    def loss(self, model: Model, batch: Batch) -> torch.Tensor:
        ids, targets = batch["input_ids"], batch["targets"]
        distiller = self.distiller
        hidden = model.body(ids) if distiller.hidden_weight else None
        logits = model.heads[LM_HEAD](hidden) if hidden is not None else model(ids, head=LM_HEAD)
        data = next_token_loss(logits, targets)
        if not distiller.uses_teacher:
            return data
        real = targets != IGNORE_INDEX
        vocabulary = self.vocabulary
        student = logits[..., :vocabulary].reshape(-1, vocabulary)
        if "teacher_logits" in batch:
            k = batch["teacher_logits"].size(-1)
            kl = distiller.kl(student, batch["teacher_logits"].reshape(-1, k), batch["teacher_ids"].reshape(-1, k),
                              batch["teacher_tail"].reshape(-1))
            teacher_hidden = None
        else:
            teacher_logits, teacher_hidden = distiller.teacher_outputs(model, ids)
            kl = distiller.kl(student, teacher_logits[..., :vocabulary].reshape(-1, vocabulary))
        loss = blend(data, masked_mean(kl, real.reshape(-1)), distiller.alpha, distiller.temperature)
        if hidden is not None:
            loss = loss + distiller.hidden_loss(hidden, teacher_hidden, real)
        return loss

    def validation_loss(self, model: Model, batch: Batch) -> torch.Tensor:
        return next_token_loss(model(batch["input_ids"], head=LM_HEAD), batch["targets"])


@OBJECTIVES.register("distill_classification")
class DistillClassification(SequenceClassification):
    """A classifier learning from a classifier teacher's soft labels on the task's training inputs (whose gold labels
    also give cross-entropy) and on unlabeled in-domain inputs (distill.unlabeled), rendered with the task's prompt.

    The cross-entropy is the mean over labelled inputs of a batch, the KL the mean over all of them.
    """

    @classmethod
    def check(cls, config: "RunConfig") -> None:
        spec = teacher_of(config)
        if config.distill.cache != "none":
            raise SlmkitError(
                "distill.cache=topk caches a language model's logits over token windows; a classifier teacher's soft "
                "labels are computed on the fly: set distill.cache=none"
            )
        complete = cls.complete(config)
        check_teacher_fits(complete, spec, CLASSIFIER_HEAD, complete.objective.labels)
        check_student_start(config, spec)
        if config.distill.unlabeled:
            unlabeled_files(config)

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.teacher_spec = teacher_of(config)
        self.distiller = Distiller(config, self.teacher_spec, CLASSIFIER_HEAD, load_teacher=True)

    def init_weights(self, model: Model) -> list[str]:
        if not self.config.distill.init_from_teacher:
            return []
        return init_student(model, self.teacher_spec, self.config.distill.init_every_k)

    def examples(self, split: str) -> list[Example]:
        from slmkit.eval.encoding import sequence_input

        examples = super().examples(split)
        if split == "train" and self.config.distill.unlabeled:
            examples += [{"input_ids": sequence_input(self.tokenizer, text, self.max_length, self.prefix_id), "label": IGNORE_INDEX}  # labelled by the teacher alone: the KL only, no cross-entropy
                         for text in unlabeled_inputs(self.config, self.spec.options.prompt)]
        return examples

    def loss(self, model: Model, batch: Batch) -> torch.Tensor:
        ids, mask, labels = batch["input_ids"], batch["padding_mask"], batch["labels"]
        distiller = self.distiller
        hidden = model.body(ids, padding_mask=mask) if distiller.hidden_weight else None
        logits = (model.heads[CLASSIFIER_HEAD](hidden, mask) if hidden is not None
                  else model(ids, padding_mask=mask, head=CLASSIFIER_HEAD))
        labelled = labels != IGNORE_INDEX
        data = masked_mean(F.cross_entropy(logits, labels.clamp(min=0), reduction="none"), labelled)
        if not distiller.uses_teacher:
            return data
        teacher_logits, teacher_hidden = distiller.teacher_outputs(model, ids, mask)
        loss = blend(data, distiller.kl(logits, teacher_logits).mean(), distiller.alpha, distiller.temperature)
        if hidden is not None:
            loss = loss + distiller.hidden_loss(hidden, teacher_hidden, mask)
        return loss

    def validation_loss(self, model: Model, batch: Batch) -> torch.Tensor:
        return super().loss(model, batch)


def unlabeled_files(config: "RunConfig") -> str:
    """distill.unlabeled as a path or glob that exists: as given, else under data.root ($SLMKIT_DATA, ./data)."""
    from slmkit.eval.records import data_files

    pattern = os.path.expanduser(config.distill.unlabeled)
    if not os.path.isabs(pattern) and not Path(pattern).exists():
        pattern = str(Path(config.data.root or os.environ.get("SLMKIT_DATA") or "data") / pattern)
    try:
        data_files(pattern, f"distill.unlabeled={config.distill.unlabeled}")
    except SlmkitError:
        raise SlmkitError(f"distill.unlabeled={config.distill.unlabeled}: no file matches it (as given, or under "
                          f"data.root / $SLMKIT_DATA: {pattern}); point it at records of in-domain text") from None
    return pattern


def unlabeled_inputs(config: "RunConfig", prompt: str) -> list[str]:
    """The unlabeled records rendered with the task's prompt: each record's distill.unlabeled_field cut at
    distill.unlabeled_split into separate inputs, at most distill.unlabeled_limit of them (a seeded subset)."""
    from slmkit.eval.records import read_records, subset
    from slmkit.eval.templates import render

    settings = config.distill
    field = settings.unlabeled_field
    # "^" makes each line of a plain text file a record; record formats (jsonl, csv, ...) ignore it.
    records = read_records(unlabeled_files(config), f"distill.unlabeled={settings.unlabeled}", text_field=field,
                           split_documents="^")
    try:
        splitter = re.compile(settings.unlabeled_split) if settings.unlabeled_split else None
    except re.error as err:
        raise SlmkitError(f"distill.unlabeled_split={settings.unlabeled_split!r} is not a regular expression: {err}") from None
    pieces = []
    for record in records:
        text = record.get(field)
        if not isinstance(text, str):
            raise SlmkitError(f"distill.unlabeled: a record has no text field {field!r} (it has: {', '.join(record)}); "
                              "set distill.unlabeled_field")
        for piece in (splitter.split(text) if splitter else [text]):
            if piece.strip():
                pieces.append({**record, field: piece.strip()})
    if not pieces:
        raise SlmkitError(f"distill.unlabeled={settings.unlabeled}: no text in its records")
    chosen = subset(pieces, settings.unlabeled_limit, config.trainer.seed)
    return [render(prompt, record, "distill.unlabeled") for record in chosen]
