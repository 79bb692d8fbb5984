"""The hf format: a transformers folder (config, safetensors, tokenizer) of the stock class that represents the model.

The class and the mapping come from the target table; the folder is loaded back with transformers and its logits are
compared with slmkit's before it is kept, and a mapping that misses or invents a tensor fails loudly. An encoder's
tokenizer puts the document-start token first, as slmkit reads every text; an embedding model's folder is also a
sentence-transformers model (pooling and normalization as slmkit embeds).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from slmkit.errors import SlmkitError
from slmkit.export.chat_template import chat_template
from slmkit.export.run import EXPORT_FORMATS, ExportContext
from slmkit.export.targets import Target, head_keywords, select_target, transitions_keyword
from slmkit.export.tokenizer_files import write_tokenizer_files
from slmkit.model import EMBEDDING_HEAD, LM_HEAD, HeadSpec, Model, ModelConfig


TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TRANSFORM_WORDS = {"none": "nothing", "prediction": "a prediction head (dense, GELU, norm)", "pooler": "a pooler (dense, tanh)"}
# The largest |logit| difference an export may show against slmkit on the check input: fp32 math in another order.
VERIFY_TOLERANCE = 1e-4


def auto_class(target: Target, head: str = LM_HEAD):
    """The transformers Auto class that loads the target's `head` class."""
    import transformers

    return getattr(transformers, target.heads[head].auto_class)


def hf_config(c: ModelConfig, target: Target, special_ids: dict[str, int | None], head: HeadSpec = HeadSpec(LM_HEAD)):
    """The transformers config object for `c` as `target`'s class for `head`, with token ids, label names (and a
    token head's tag decoding) and the class name recorded."""
    from transformers import AutoConfig

    labels = {}
    if head.labels:
        labels = {"num_labels": head.num_labels, "id2label": dict(enumerate(head.labels)),
                  "label2id": {name: i for i, name in enumerate(head.labels)}}
    config = AutoConfig.for_model(target.model_type, **target.config(c), **special_ids, **labels,
                                  **head_keywords(target, head))
    for name in ("cls_token_id", "sep_token_id"):  # encoders name them too; slmkit's one document token plays both
        if hasattr(config, name) and "eos_token_id" in special_ids:
            setattr(config, name, special_ids["eos_token_id"])
    config.architectures = [target.heads[head.kind].model_class]
    return config


def slmkit_state(model: Model) -> dict[str, torch.Tensor]:
    """The model's tensors as the target table maps them: body modules by their own names (tok_embeddings, blocks.i,
    ...), heads as heads.<kind>.<layer>. The one place that reads the slmkit model's tensors."""
    return {k.removeprefix("body."): v.detach() for k, v in model.state_dict().items()}


def hf_state_dict(model: Model, target: Target, config, head: str = LM_HEAD) -> dict[str, torch.Tensor]:
    """The exported tensors, checked against the names and shapes of the transformers class.

    A bias the class has but slmkit lacks becomes zeros, which computes the same function; anything else missing or
    extra is a bug in the mapping and fails loudly rather than exporting a model that differs.
    """
    state = slmkit_state(model)
    c = model.config
    cls = target.heads[head]
    body = target.body(state, c)
    if cls.body_prefix is not None:
        old, new = cls.body_prefix
        body = {new + k.removeprefix(old) if k.startswith(old) else k: v for k, v in body.items()}
    ours = {**body, **cls.weights(state, c)}
    with torch.device("meta"):
        reference = auto_class(target, head).from_config(config)
    expected = dict(reference.state_dict())
    if c.tie_embeddings:
        expected.pop("lm_head.weight", None)
    out = {}
    for key, meta in expected.items():
        if key in ours:
            tensor = ours[key]
        elif key.endswith(".bias"):
            tensor = torch.zeros(meta.shape)
        else:
            raise RuntimeError(f"export mapping to {cls.model_class} has no tensor for {key}")
        if tuple(tensor.shape) != tuple(meta.shape):
            raise RuntimeError(f"export mapping to {cls.model_class}: {key} is {tuple(tensor.shape)}, expected {tuple(meta.shape)}")
        out[key] = tensor.contiguous().clone()
    extra = sorted(set(ours) - set(expected))
    if extra:
        raise RuntimeError(f"export mapping to {cls.model_class} produced tensors the class does not have: {extra[:3]}")
    return out


def export_head(model: Model) -> HeadSpec:
    """The head an export carries: the model's first (its task); one model, one transformers class."""
    return model.head_specs[0]


def mapped_checkpoint(context: ExportContext) -> tuple[Target, Any, dict[str, torch.Tensor]]:
    """The checkpoint as its transformers class: the target row, the config object and the fp32 tensors."""
    c = context.loaded.config.model
    head = export_head(context.loaded.model)
    target = select_target(c, head.kind)
    cls = target.heads[head.kind]
    if cls.poolings is not None and head.pooling not in cls.poolings:
        raise SlmkitError(
            f"{cls.model_class} pools {' or '.join(cls.poolings)} and this classifier pools "
            f"{head.pooling!r}: no stock class computes it; fine-tune with objective.pooling={cls.poolings[0]} to export"
        )
    if cls.transforms is not None and head.transform not in cls.transforms:
        raise SlmkitError(
            f"{cls.model_class} reads the hidden states through {' or '.join(map(TRANSFORM_WORDS.get, cls.transforms))} "
            f"before its output layer, and this {head.kind} head through {TRANSFORM_WORDS.get(head.transform, head.transform)}: "
            f"no stock class computes it; fine-tune with objective.head_transform={cls.transforms[0]} to export"
        )
    config = hf_config(c, target, context.specials.ids(), head)
    for name, value in transitions_keyword(slmkit_state(context.loaded.model)).items():
        setattr(config, name, value)  # a crf head's transitions: no tensor of the class holds them
    return target, config, hf_state_dict(context.loaded.model, target, config, head.kind)


@EXPORT_FORMATS.register("hf")
def export_hf(context: ExportContext, folder: Path) -> dict[str, Any]:
    dtype = context.dtype_among(TORCH_DTYPES, "a transformers weight type")
    target, config, state = mapped_checkpoint(context)
    kind = export_head(context.loaded.model).kind
    head = target.heads[kind]
    config.dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[dtype]
    state = {k: v.to(TORCH_DTYPES[dtype]) for k, v in state.items()}
    config.save_pretrained(folder)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model_config = context.loaded.config.model
    block_size = model_config.block_size
    if kind == LM_HEAD:
        _generation_config(context, block_size).save_pretrained(folder)
    # An encoder reads every text after the document-start token (its [CLS]): the exported tokenizer adds it too.
    write_tokenizer_files(context.loaded.tokenizer_path, folder, context.specials, block_size,
                          start_with_document_token=not model_config.causal,
                          chat_template=chat_template(context.loaded.config) if kind == "lm" else None)
    usage = [f"from transformers import {head.auto_class}, AutoTokenizer",
             f'model = {head.auto_class}.from_pretrained("path/to/this/folder")',
             'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")']
    if kind == EMBEDDING_HEAD:
        write_sentence_transformers_files(folder, export_head(context.loaded.model).pooling, model_config)
        usage = ["from sentence_transformers import SentenceTransformer",
                 'model = SentenceTransformer("path/to/this/folder")  # pooling and normalization as slmkit embeds',
                 'vectors = model.encode(["a text", "another text"])']
    if context.args.verify:
        verify_hf_export(context.loaded.model, folder, dtype, target, context.specials.eos_id)
    return {
        "format": f"a transformers {head.model_class} ({dtype} safetensors)",
        "details": {"transformers class": head.model_class},
        "usage": ["```python", *usage, "```"],
        "logits_fn": lambda f: hf_outputs(f, target, kind),
    }


SENTENCE_POOLING = {"first": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "last": "pooling_mode_lasttoken"}


def write_sentence_transformers_files(folder: Path, pooling: str, c: ModelConfig) -> None:
    """The modules of a sentence-transformers model around the transformers folder: the encoder (this folder), the
    pooling the embedding head was trained with, and L2 normalization."""
    modules = [("Transformer", ""), ("Pooling", "1_Pooling"), ("Normalize", "2_Normalize")]
    (folder / "modules.json").write_text(json.dumps(
        [{"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
         for i, (kind, path) in enumerate(modules)], indent=2) + "\n")
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": c.block_size, "do_lower_case": False}, indent=2) + "\n")
    (folder / "config_sentence_transformers.json").write_text(json.dumps({"similarity_fn_name": "cosine"}, indent=2) + "\n")
    (folder / "1_Pooling").mkdir()
    modes = {mode: name == pooling for name, mode in SENTENCE_POOLING.items()}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": c.d_model, **modes, "pooling_mode_max_tokens": False,
         "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False, "include_prompt": True},
        indent=2) + "\n")
    (folder / "2_Normalize").mkdir()


def _generation_config(context: ExportContext, block_size: int):
    from transformers import GenerationConfig

    ids = context.specials.ids()
    return GenerationConfig(**ids, max_length=block_size, do_sample=False)


def hf_outputs(folder: Path, target: Target, head: str = LM_HEAD):
    """input_ids -> the exported class's output, shaped as slmkit's `head` returns it."""
    model = auto_class(target, head).from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()
    read = target.heads[head].output
    return lambda ids: read(model(ids))


def verify_hf_export(model: Model, folder: Path, dtype: str, target: Target, pad_id: int) -> None:
    """Loads the folder with transformers and compares outputs with the slmkit model (weights rounded as exported).

    The check input holds no pad token: a sequence classifier of transformers would take it for padding.
    """
    reference = model
    if dtype != "fp32":
        reference = copy.deepcopy(model).eval()
        with torch.no_grad():
            for p in reference.parameters():
                p.copy_(p.to(TORCH_DTYPES[dtype]).float())
    head = export_head(model).kind
    exported = hf_outputs(folder, target, head)
    c = model.config
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, c.vocab_size, (2, min(c.block_size, 64)), generator=generator)
    ids[ids == pad_id] = (pad_id + 1) % c.vocab_size
    with torch.no_grad():
        # A bare encoder class (an embedding model) returns hidden states, which slmkit's body computes.
        ours = reference.body(ids) if target.heads[head].bare else reference(ids, head=head)
        diff = (ours - exported(ids)).abs().max().item()
    if not diff <= VERIFY_TOLERANCE:
        raise RuntimeError(f"the exported model's outputs differ from slmkit's by {diff:.3g} (> {VERIFY_TOLERANCE}): export mapping bug")
