"""A student that starts from its teacher's weights: embeddings, final norm, heads, and every k-th block — DistilBERT
started from every other layer of BERT.

The student must have the teacher's architecture in everything but depth (and what changes no weight); a tensor
whose shape still differs (learned positions over a shorter context) keeps its fresh init and is reported.
"""

from __future__ import annotations

import dataclasses

from slmkit.distill.teacher import KEY, TeacherSpec
from slmkit.errors import SlmkitError
from slmkit.model import Model, ModelConfig

# Model settings a student may choose for itself: none changes what a copied weight means.
OWN_SETTINGS = ("n_layer", "block_size", "dropout", "init_std", "scaled_residual_init", "attention_kernel", "sliding_window")
BLOCKS = "body.blocks."


def teacher_blocks(spec: TeacherSpec, student_layers: int, every_k: int | None) -> list[int]:
    """The teacher block each student block starts from: i * k, k = every_k or teacher layers // student layers."""
    k = every_k or max(spec.n_layer // student_layers, 1)
    picked = [i * k for i in range(student_layers)]
    if picked[-1] >= spec.n_layer:
        raise SlmkitError(
            f"distill.init_from_teacher: {student_layers} student blocks from every {k}-th block need a teacher of at "
            f"least {picked[-1] + 1} blocks, and {spec.path} has {spec.n_layer}; lower distill.init_every_k or model.n_layer"
        )
    return picked


def check_student_fits(student: ModelConfig, spec: TeacherSpec, every_k: int | None) -> list[int]:
    """The teacher blocks the student starts from; SlmkitError naming every setting that keeps the layers from fitting."""
    if spec.model_config is None:
        raise SlmkitError(
            f"distill.init_from_teacher copies an slmkit teacher's layers, and {KEY}={spec.path} is a transformers "
            "folder: distill from it with a freshly initialized student (drop distill.init_from_teacher), or give the "
            "slmkit run it was exported from"
        )
    teacher = spec.model_config
    differing = [
        f"model.{f.name} is {getattr(teacher, f.name)} in the teacher and {getattr(student, f.name)} here"
        for f in dataclasses.fields(ModelConfig)
        if f.name not in OWN_SETTINGS and getattr(teacher, f.name) != getattr(student, f.name)
        and not (f.name == "vocab_size" and student.vocab_size <= 0)  # 0 = the tokenizer's size, known later
    ]
    if differing:
        raise SlmkitError(
            f"distill.init_from_teacher copies the teacher's layers, so the student must have the teacher's "
            f"architecture in all but depth: {'; '.join(differing)}. Drop those model.* settings (the student's model "
            "section defaults to the teacher's) or drop distill.init_from_teacher"
        )
    return teacher_blocks(spec, student.n_layer, every_k)


def init_student(student: Model, spec: TeacherSpec, every_k: int | None) -> list[str]:
    """Copies the teacher's weights into `student` where they fit; returns lines that say what came from where."""
    from slmkit.checkpoint import load_checkpoint

    picked = check_student_fits(student.config, spec, every_k)
    source = load_checkpoint(spec.path).model.state_dict()
    target = student.state_dict()
    taken, fresh = {}, []
    for name, tensor in target.items():
        origin = name
        if name.startswith(BLOCKS):
            index, rest = name[len(BLOCKS):].split(".", 1)
            origin = f"{BLOCKS}{picked[int(index)]}.{rest}"
        if origin in source and source[origin].shape == tensor.shape:
            taken[name] = source[origin].to(tensor.dtype)
        else:
            fresh.append(name)
    student.load_state_dict(taken, strict=False)
    heads = sorted({name.split(".")[1] for name in taken if name.startswith("heads.")})
    lines = [f"student blocks 0..{len(picked) - 1} start from teacher blocks {picked}; {len(taken)} of {len(target)} "
             f"tensors copied from the teacher, heads included: {', '.join(heads) or 'none'}"]
    if fresh:
        lines.append(f"tensors the teacher has no fitting weight for, initialized fresh: {', '.join(fresh[:4])}"
                     f"{'...' if len(fresh) > 4 else ''}")
    return lines
