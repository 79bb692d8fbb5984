"""Heads by name: what the body's hidden states become — next-token logits, masked-token logits, a label per sequence
or per token, a span, an embedding.

Each head is built as `HEADS.get(kind)(config, spec, body)` and called as head(hidden [B, T, d_model], padding_mask)
with padding_mask bool [B, T] (True = real token) or None. Outputs are fp32, whatever the body computes in.
Layer names and biases follow the Hugging Face classes (score, qa_outputs) so every head exports exactly; a task head
may first pass the hidden states through a transform by name (BERT's pooler, the BERT / ModernBERT prediction head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from slmkit.errors import SlmkitError
from slmkit.model.config import ModelConfig
from slmkit.model.crf import TagTransitions
from slmkit.model.norms import NORMS
from slmkit.model.transformer import Transformer
from slmkit.registry import Registry


# The head kinds, by the name a HeadSpec, a config.yaml, Model.heads and every caller use for them.
LM_HEAD = "lm"
MASKED_LM_HEAD = "masked_lm"
CLASSIFIER_HEAD = "sequence_classification"
TOKEN_HEAD = "token_classification"
SPAN_HEAD = "span"
EMBEDDING_HEAD = "embedding"

# The target of a position (or the label of a token) that no loss reads: PyTorch's cross_entropy default, and the
# convention of transformers' data collators, so encoded tasks mean the same on both sides.
IGNORE_INDEX = -100

# How a token-classification head's scores are read unless its spec says otherwise: each token's best label
# (slmkit.model.tag_decoding holds the decodings by name; the model only records the choice).
ARGMAX_DECODING = "argmax"
# The one decoding with weights of its own: a CRF's learned transitions, which the head then carries (slmkit.model.crf),
# named in the model's state by CRF_PREFIX + their names in TagTransitions (the optimizer and export find them so).
CRF_DECODING = "crf"
CRF_PREFIX = f"heads.{TOKEN_HEAD}.crf."


@dataclass(frozen=True)
class HeadSpec:
    """Which head, and what it needs beyond the model config: its label names (in output order), its pooling and the
    transform its hidden states pass through first; and, for a token-classification head, how its scores become tags
    (the layers do not depend on it, but it travels with them to every evaluation and prediction)."""

    kind: str
    labels: tuple[str, ...] = ()
    pooling: str = "last"
    transform: str = "none"
    decoding: str = ARGMAX_DECODING

    @property
    def num_labels(self) -> int:
        return len(self.labels)


Pooling = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]
POOLINGS: Registry[Pooling] = Registry("pooling", "pool(hidden [B, T, d], padding_mask [B, T] or None) -> [B, d].")


AUTO_POOLING = "auto"


def resolve_pooling(pooling: str, causal: bool) -> str:
    """`auto` as the pooling a body calls for: the last real token of a causal model (the only one that has seen the
    whole text), the mean over tokens of a bidirectional one; any other name as it is."""
    if pooling != AUTO_POOLING:
        return pooling
    return "last" if causal else "mean"


@POOLINGS.register("last")
def last_token(hidden: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """The last real token: the only one a causal model lets see the whole sequence (right padding assumed)."""
    if padding_mask is None:
        return hidden[:, -1]
    last = padding_mask.long().sum(dim=1).clamp(min=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


@POOLINGS.register("first")
def first_token(hidden: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """The first token (BERT's [CLS] position): sees everything only in a bidirectional model."""
    return hidden[:, 0]


@POOLINGS.register("mean")
def mean_of_tokens(hidden: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """The average over real tokens."""
    if padding_mask is None:
        return hidden.mean(dim=1)
    weights = padding_mask.to(hidden.dtype)[..., None]
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


TRANSFORMS: Registry[Callable[[ModelConfig], nn.Module]] = Registry(
    "head transform", "What a task head applies to the hidden states before its output layer, built as cls(config)."
)


@TRANSFORMS.register("none")
class NoTransform(nn.Identity):
    """The hidden states as they are (the decoder families' task classes, BERT's token and span classes)."""

    def __init__(self, config: ModelConfig):
        super().__init__()


@TRANSFORMS.register("prediction")
class PredictionTransform(nn.Module):
    """norm(gelu(dense(x))) with the model's norm and the exact GELU: the prediction head of BERT's masked LM and of
    every ModernBERT head."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.norm = NORMS.get(config.norm)(config.d_model, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(x)))


@TRANSFORMS.register("pooler")
class Pooler(nn.Module):
    """tanh(dense(x)): BERT's pooler, which its sequence classifier reads the first token through."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x))


class Head(nn.Module):
    """The contract of a head; `reset_parameters` gives it the body's normal(0, init_std) init."""

    def __init__(self, config: ModelConfig, spec: HeadSpec):
        super().__init__()
        self.spec = spec
        self.init_std = config.init_std

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=self.init_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)


HEADS: Registry[type[Head]] = Registry("head", "A Head subclass, built as cls(config, spec, body).")


def _needs_labels(spec: HeadSpec, at_least: int) -> None:
    if spec.num_labels < at_least:
        raise SlmkitError(f"a {spec.kind} head needs at least {at_least} labels, got {spec.num_labels}")


@HEADS.register(LM_HEAD)
class LanguageModelHead(Head):
    """Logits over the vocabulary at every position; shares the token embeddings when model.tie_embeddings, and
    with model.logit_softcap squashes them smoothly into (-cap, cap) (Gemma 2, modded-nanogpt). Under μP the readout
    starts at zero and its logits are multiplied by the readout multiplier before any cap."""

    def __init__(self, config: ModelConfig, spec: HeadSpec, body: Transformer):
        super().__init__(config, spec)
        self.proj = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.softcap = config.logit_softcap
        self.multiplier = config.readout_multiplier
        self.reset_parameters()
        if config.mup and config.mup_readout_init == "zero":
            nn.init.zeros_(self.proj.weight)  # μP's zero readout: the logits start at 0 whatever the width
        if config.tie_embeddings:
            self.proj.weight = body.tok_embeddings.weight

    def forward(self, hidden: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.proj(hidden).float()
        if self.multiplier != 1.0:
            logits = logits * self.multiplier
        return logits if self.softcap is None else self.softcap * torch.tanh(logits / self.softcap)


@HEADS.register(MASKED_LM_HEAD)
class MaskedLanguageModelHead(Head):
    """Logits over the vocabulary for (masked) positions: the prediction transform, then `decoder` with a bias, its
    weight shared with the token embeddings when model.tie_embeddings (BERT's and ModernBERT's masked-LM head).

    Called on hidden states [..., d_model] of any leading shape, so an objective may pass only the masked positions.
    """

    def __init__(self, config: ModelConfig, spec: HeadSpec, body: Transformer):
        super().__init__(config, spec)
        self.transform = PredictionTransform(config)
        self.decoder = nn.Linear(config.d_model, config.vocab_size)
        self.reset_parameters()
        if config.tie_embeddings:
            self.decoder.weight = body.tok_embeddings.weight

    def forward(self, hidden: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(self.transform(hidden)).float()


@HEADS.register(CLASSIFIER_HEAD)
class SequenceClassificationHead(Head):
    """One label per sequence: the pooled hidden state through the transform and `score` (no bias, as the decoder
    families' classes; an encoder class's classifier bias is exported as zeros)."""

    def __init__(self, config: ModelConfig, spec: HeadSpec, body: Transformer):
        super().__init__(config, spec)
        _needs_labels(spec, 2)
        self.pool = POOLINGS.get(spec.pooling)
        self.transform = TRANSFORMS.get(spec.transform)(config)
        self.score = nn.Linear(config.d_model, spec.num_labels, bias=False)
        self.reset_parameters()

    def forward(self, hidden: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, num_labels]."""
        return self.score(self.transform(self.pool(hidden, padding_mask))).float()


@HEADS.register(TOKEN_HEAD)
class TokenClassificationHead(Head):
    """One label per token: the transform, dropout (training only) and `score` with a bias, as transformers' token
    classifiers. Under the crf decoding the head also carries the CRF's transitions (`crf`), which its scores do not
    pass through: they are read by the training loss and the decoding."""

    def __init__(self, config: ModelConfig, spec: HeadSpec, body: Transformer):
        super().__init__(config, spec)
        _needs_labels(spec, 2)
        self.transform = TRANSFORMS.get(spec.transform)(config)
        self.dropout = nn.Dropout(config.dropout)
        self.score = nn.Linear(config.d_model, spec.num_labels)
        self.crf = TagTransitions(spec.num_labels) if spec.decoding == CRF_DECODING else None
        self.reset_parameters()

    def forward(self, hidden: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, num_labels]."""
        return self.score(self.dropout(self.transform(hidden))).float()


@HEADS.register(SPAN_HEAD)
class SpanHead(Head):
    """Extractive question answering: the transform, then a start and an end logit per token (`qa_outputs`, as
    transformers)."""

    def __init__(self, config: ModelConfig, spec: HeadSpec, body: Transformer):
        super().__init__(config, spec)
        self.transform = TRANSFORMS.get(spec.transform)(config)
        self.qa_outputs = nn.Linear(config.d_model, 2)
        self.reset_parameters()

    def forward(self, hidden: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, 2]: [..., 0] starts, [..., 1] ends."""
        return self.qa_outputs(self.transform(hidden)).float()


@HEADS.register(EMBEDDING_HEAD)
class EmbeddingHead(Head):
    """One unit-length vector per sequence: the pooled hidden state, L2-normalized, so a dot product is the cosine.
    No weights of its own: what a contrastive objective trains is the body."""

    def __init__(self, config: ModelConfig, spec: HeadSpec, body: Transformer):
        super().__init__(config, spec)
        self.pool = POOLINGS.get(spec.pooling)

    def forward(self, hidden: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings [B, d_model]."""
        return F.normalize(self.pool(hidden, padding_mask).float(), dim=-1)
