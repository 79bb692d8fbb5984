"""The teacher of a distillation run: found at a path (an slmkit run or checkpoint, or a local transformers folder),
described without loading its weights (what the student must match), and loaded frozen when its outputs are needed.

Checks run before any work: a teacher that is not a model, reads text with another tokenizer, sees a shorter context,
lacks the head the objective learns from or names its labels differently is refused with what to change.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import torch
from torch import nn

from slmkit.checkpoint import locate_weights, run_heads
from slmkit.checkpoint.starting_point import HF_CONFIG, starting_point
from slmkit.checkpoint.unpickling import load_problem
from slmkit.errors import SlmkitError
from slmkit.model import CLASSIFIER_HEAD, LM_HEAD
from slmkit.tokenizer import TOKENIZER_FILE, load_tokenizer, tokenizer_differences

if TYPE_CHECKING:
    from slmkit.config import RunConfig
    from slmkit.model import ModelConfig

KEY = "distill.teacher"
SLMKIT, TRANSFORMERS = "slmkit", "transformers"
# The transformers classes a teacher may be, by the slmkit head whose output they give.
HF_HEADS = {"ForCausalLM": LM_HEAD, "LMHeadModel": LM_HEAD, "ForSequenceClassification": CLASSIFIER_HEAD}  # GPT2LMHeadModel
HF_AUTO_CLASSES = {LM_HEAD: "AutoModelForCausalLM", CLASSIFIER_HEAD: "AutoModelForSequenceClassification"}


@dataclass
class TeacherSpec:
    """What a teacher is, read from its config files alone: enough to check it against a student before any work."""

    path: Path
    format: str  # SLMKIT or TRANSFORMERS
    heads: tuple[str, ...]  # head kinds whose outputs it gives
    labels: tuple[str, ...]  # its classifier's labels, in output order (empty without one)
    block_size: int
    vocab_size: int
    width: int
    n_layer: int
    tokenizer_path: Optional[Path]
    identity_files: tuple[Path, ...]  # config and weights: their bytes are the teacher's identity
    model_config: Optional["ModelConfig"] = None  # an slmkit teacher's architecture
    _fingerprint: Optional[str] = field(default=None, repr=False)

    def fingerprint(self) -> str:
        """sha256 over the teacher's config and weight files: another or retrained teacher has another one."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for path in self.identity_files:
                files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
                for file in files:
                    digest.update(file.name.encode("utf-8"))
                    with open(file, "rb") as f:
                        for chunk in iter(lambda: f.read(1 << 22), b""):
                            digest.update(chunk)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def load(self, head: str) -> "FrozenTeacher":
        """The teacher's weights, frozen and in eval mode, giving `head`'s output (and the last hidden states)."""
        if self.format == SLMKIT:
            from slmkit.checkpoint import load_checkpoint

            return FrozenTeacher(load_checkpoint(self.path).model, _slmkit_outputs, head)
        import transformers

        auto = getattr(transformers, HF_AUTO_CLASSES[head])
        try:
            model = auto.from_pretrained(self.path, local_files_only=True, dtype=torch.float32)
        except Exception as err:  # transformers raises many types; a pickled weights file's refusal among them
            refused = "Weights only load failed" in str(err) or isinstance(err, pickle.UnpicklingError)
            problem = load_problem(err) if refused else (str(err).splitlines() or [type(err).__name__])[0]
            raise SlmkitError(f"{KEY}={self.path}: transformers cannot load it as {HF_AUTO_CLASSES[head]} "
                              f"({problem}); point it at a complete model folder, with model.safetensors "
                              "weights (a pickled pytorch_model.bin that is not tensors only may be unsafe)") from None
        return FrozenTeacher(model, _transformers_outputs, head)


def describe_teacher(path: str | Path) -> TeacherSpec:
    """The teacher at `path`, from its config files; SlmkitError when nothing there is a model."""
    if not Path(path).expanduser().exists():
        raise SlmkitError(
            f"{KEY}={path}: nothing there; give an slmkit run folder (runs/<recipe>/latest) or checkpoint, or a local "
            "Hugging Face model folder (config.json + weights, as `slmkit export` writes)"
        )
    try:
        source = starting_point(path, KEY)
        weights = None if source.is_transformers else locate_weights(source.path, KEY)
    except SlmkitError as err:
        raise SlmkitError(
            f"{KEY}={path} is not a model: {err}. Give an slmkit run folder or checkpoint (config.yaml beside it), "
            f"or a Hugging Face model folder ({HF_CONFIG} + weights)"
        ) from None
    if weights is None:
        return _describe_transformers(source.path)
    heads = run_heads(source.config)
    classifier = next((h for h in heads if h.kind == CLASSIFIER_HEAD), None)
    m = source.config.model
    return TeacherSpec(source.path, SLMKIT, tuple(h.kind for h in heads), tuple(classifier.labels) if classifier else (),
                       m.block_size, m.vocab_size, m.d_model, m.n_layer, source.tokenizer_path,
                       (source.run.config, weights), model_config=m)


def _describe_transformers(folder: Path) -> TeacherSpec:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise SlmkitError(f"{KEY}={folder}: {HF_CONFIG} is not a transformers model config ({str(err).splitlines()[0]})") from None
    architecture = (getattr(config, "architectures", None) or [""])[0]
    head = next((kind for suffix, kind in HF_HEADS.items() if architecture.endswith(suffix)), None)
    if head is None:
        raise SlmkitError(
            f"{KEY}={folder} is a {architecture or 'model of no named class'}: a teacher is a causal language model "
            "(...ForCausalLM) or a sequence classifier (...ForSequenceClassification)"
        )
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("pytorch_model*.bin"))
    if not weights:
        raise SlmkitError(f"{KEY}={folder} has a {HF_CONFIG} but no weights (model.safetensors): it is not a complete model folder")
    block_size = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    n_layer = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if not (block_size and width and n_layer and getattr(config, "vocab_size", None)):
        raise SlmkitError(f"{KEY}={folder}: its {HF_CONFIG} does not say the context length, width, depth and vocabulary")
    labels = tuple(config.id2label[i] for i in range(config.num_labels)) if head == CLASSIFIER_HEAD else ()
    tokenizer = folder / TOKENIZER_FILE
    return TeacherSpec(folder, TRANSFORMERS, (head,), labels, int(block_size), int(config.vocab_size), int(width),
                       int(n_layer), tokenizer if tokenizer.is_file() else None, (folder / HF_CONFIG, *weights))


def teacher_layer(config: "RunConfig") -> dict[str, Any]:
    """What a run takes from its teacher below its recipe: the tokenizer file (logit distillation compares the two
    models token by token) and, when it starts from the teacher's layers, the teacher's model section."""
    describe_teacher(config.distill.teacher)  # refuses, in a teacher's terms, what is no model
    source = starting_point(config.distill.teacher, KEY)
    # A transformers teacher has no slmkit layers to start from: check_student_fits says so when the run starts.
    return source.layer(model=config.distill.init_from_teacher and not source.is_transformers)


def check_teacher_fits(config: "RunConfig", spec: TeacherSpec, head: str, labels: Sequence[str] = ()) -> None:
    """Refuses a teacher whose outputs cannot teach this student: another head or labels, a shorter context, another
    tokenizer, or a vocabulary smaller than the tokenizer's."""
    name = config.objective.name
    if head not in spec.heads:
        raise SlmkitError(
            f"{KEY}={spec.path} has {' and '.join(spec.heads)} outputs, and objective {name} learns from a teacher's "
            f"{head} outputs: give a teacher trained with that head"
        )
    if head == CLASSIFIER_HEAD and tuple(labels) != spec.labels:
        raise SlmkitError(
            f"{KEY}={spec.path} classifies into {list(spec.labels)} and this run into {list(labels)}: soft labels "
            "only teach a student with the same labels in the same order; set objective.labels to the teacher's"
        )
    if spec.block_size < config.model.block_size:
        raise SlmkitError(
            f"{KEY}={spec.path} sees at most {spec.block_size} tokens and the student's model.block_size is "
            f"{config.model.block_size}: the teacher cannot score the student's whole window; set model.block_size "
            f"to at most {spec.block_size}"
        )
    if spec.tokenizer_path is None:
        raise SlmkitError(
            f"{KEY}={spec.path} has no {TOKENIZER_FILE}: distillation compares teacher and student token by token, "
            "so the teacher's tokenizer must be known; add its tokenizer.json to the folder"
        )
    if not config.tokenizer.path:
        raise SlmkitError(
            f"this run trains its own tokenizer, and distillation needs the teacher's: set "
            f"tokenizer.path={spec.tokenizer_path} (a recipe resolved with {KEY} does so itself)"
        )
    differences = tokenizer_differences(spec.tokenizer_path, Path(config.tokenizer.path), ("teacher", "student"))
    if differences:
        raise SlmkitError(
            f"{KEY}={spec.path} reads text with another tokenizer than this run's tokenizer.path="
            f"{config.tokenizer.path}: {'; '.join(differences)}. Distillation compares the two models token by token, "
            "so both must use the same tokenizer (same sha256): let the run take the teacher's tokenizer.json (drop "
            "the tokenizer.path override, or an init_from run of another tokenizer), or choose a teacher trained with "
            "this tokenizer"
        )
    size = load_tokenizer(spec.tokenizer_path).get_vocab_size(with_added_tokens=True)
    if spec.vocab_size < size:
        raise SlmkitError(f"{KEY}={spec.path} has {spec.vocab_size} output rows for a tokenizer of {size} tokens: "
                          "its weights do not belong to its tokenizer.json")


class FrozenTeacher:
    """The loaded teacher: eval mode, no gradients, on the student's device and dtype.

    Objectives hold it as a plain attribute, never as a submodule, on purpose: out of the module tree it stays out of
    the optimizer, the checkpoint's state_dict, DDP's parameter broadcast and DeepSpeed's partitioning, and
    Lightning's `train()` and precision casts cannot reach it. It follows the student's device and dtype at each call.
    """

    def __init__(self, module: nn.Module, outputs: Callable[..., tuple[torch.Tensor, Optional[torch.Tensor]]], head: str):
        self.module = module.eval().requires_grad_(False)
        self._outputs = outputs
        self.head = head

    def follow(self, device: torch.device, dtype: torch.dtype) -> None:
        weight = next(self.module.parameters())
        if weight.device != device or weight.dtype != dtype:
            self.module.to(device=device, dtype=dtype)

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                 hidden: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(the head's output, the last hidden states when `hidden`), for the same inputs the student sees."""
        return self._outputs(self.module, input_ids, padding_mask, hidden, self.head)


def _slmkit_outputs(model, input_ids, padding_mask, hidden, head):
    states = model.body(input_ids, padding_mask=padding_mask)
    return model.heads[head](states, padding_mask), states if hidden else None


def _transformers_outputs(model, input_ids, padding_mask, hidden, head):
    mask = None if padding_mask is None else padding_mask.long()
    out = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=hidden)
    return out.logits.float(), out.hidden_states[-1] if hidden else None
