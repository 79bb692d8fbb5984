"""Optimizers by name: AdamW everywhere, or Muon on the hidden matrices with AdamW on the rest.

Each entry builds one torch optimizer from the trainable parameters, so the trainer, the lr schedule and the
checkpoint see a single optimizer whatever is inside it. Matrices (ndim >= 2) take weight decay; biases and norm
weights do not. Under μP (model.parametrization=mup) the hidden matrices' groups take the learning rate scaled by the
width multiplier m: 1/m for AdamW (Tensor Programs V), 1/sqrt(m) for Muon (see `muon_lr_multiplier`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable

import torch
from torch import nn

from slmkit.config import OptimConfig
from slmkit.errors import SlmkitError
from slmkit.model import CRF_PREFIX
from slmkit.model.config import ModelConfig
from slmkit.registry import Registry

# (named trainable parameters, optim config, model config or None) -> optimizer; the model config says the
# parametrization (μP scales some groups' learning rates by width).
OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry(
    "optimizer", "build(named trainable parameters, optim config, model config or None) -> one torch optimizer."
)


def decay_groups(params: list[nn.Parameter], weight_decay: float) -> list[dict]:
    """Decay on matrices and embeddings (ndim >= 2), none on biases and norm weights; empty groups left out."""
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def adamw_lr_multiplier(name: str, parameter: nn.Parameter, model: ModelConfig | None) -> float:
    """μP with Adam (Tensor Programs V, table 3, in the form with a readout multiplier): a hidden matrix's entries
    move by about lr per step whatever the width, and it sums d_model of them, so its lr is divided by m. Embeddings,
    biases, norm weights and the readout (whose logits the model already divides by m) keep the base lr."""
    if model is None or not model.mup or not is_hidden_matrix(name, parameter):
        return 1.0
    return 1.0 / model.width_multiplier


def muon_lr_multiplier(model: ModelConfig | None) -> float:
    """μP for Muon, by the spectral condition (Yang, Simon & Bernstein 2023): a hidden matrix's update should have a
    spectral norm independent of width (its fan-out / fan-in ratio is). Muon's orthogonalized update has spectral norm
    1 at any width, but slmkit scales it by 0.2 * sqrt(max dim) to match AdamW's RMS (match_rms_adamw), a factor that
    grows like sqrt(m); the Muon lr is divided by sqrt(m) to cancel it."""
    if model is None or not model.mup:
        return 1.0
    return model.width_multiplier ** -0.5


def is_crf_transition(name: str) -> bool:
    """A token head's CRF scores (objective.decoding=crf), which take optim.crf_lr_multiplier."""
    return name.startswith(CRF_PREFIX)


def scaled_groups(named: list[tuple[str, nn.Parameter]], optim: OptimConfig, model: ModelConfig | None) -> list[dict]:
    """decay_groups, split further by AdamW's μP lr multiplier and the CRF's, each group with its own lr; under the
    standard parametrization and without a CRF exactly decay_groups' two groups (so older optimizer states load)."""
    by_multiplier: dict[float, list[nn.Parameter]] = defaultdict(list)
    for name, p in named:
        crf = optim.crf_lr_multiplier if is_crf_transition(name) else 1.0
        by_multiplier[adamw_lr_multiplier(name, p, model) * crf].append(p)
    groups = []
    for multiplier, params in by_multiplier.items():
        for group in decay_groups(params, optim.weight_decay):
            group["lr"] = optim.lr * multiplier
            groups.append(group)
    return groups


@OPTIMIZERS.register("adamw")
def adamw(named: list[tuple[str, nn.Parameter]], optim: OptimConfig, model: ModelConfig | None = None) -> torch.optim.Optimizer:
    return torch.optim.AdamW(scaled_groups(named, optim, model), lr=optim.lr,
                             betas=(optim.beta1, optim.beta2), eps=optim.eps, fused=torch.cuda.is_available() or None)


def is_hidden_matrix(name: str, parameter: nn.Parameter) -> bool:
    """A weight matrix inside a transformer block: what Muon orthogonalizes. Embeddings, heads, norms and biases are
    not (their updates are per row or per element, where orthogonalizing has no meaning)."""
    return parameter.dim() == 2 and name.startswith("body.blocks.")


def newton_schulz(updates: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                  eps: float) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz orthogonalization (bf16, the wide orientation, spectral norm <= 1
    first) over a batch of equal-shape matrices [n, rows, cols]."""
    a, b, c = coefficients
    x = updates.bfloat16()
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class BatchedMuon(torch.optim.Muon):
    """torch.optim.Muon that orthogonalizes all matrices of one shape together (every block's q, k, v, o, gate, up,
    down) instead of one at a time: the same state, hyperparameters and update, in a few batched matmuls. A small
    model's matrices are too small for one matmul each to keep the cores busy; batched, shakespeare-modern's
    Newton-Schulz work takes a third less time on a 2-core CPU (docs/benchmarks.md)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["adjust_lr_fn"] != "match_rms_adamw":
                raise ValueError("BatchedMuon scales updates as match_rms_adamw only")
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            buffers: list[torch.Tensor] = []
            self._init_group(group, params, grads, buffers)
            if not params:
                continue
            momentum = group["momentum"]
            torch._foreach_lerp_(buffers, grads, 1 - momentum)
            by_shape: dict[torch.Size, list[int]] = defaultdict(list)
            for i, p in enumerate(params):
                by_shape[p.shape].append(i)
            for shape, members in by_shape.items():
                updates = torch.stack([grads[i].lerp(buffers[i], momentum) if group["nesterov"] else buffers[i]
                                       for i in members])
                orthogonal = newton_schulz(updates, group["ns_coefficients"], group["ns_steps"], group["eps"])
                # match_rms_adamw: an orthogonal update's RMS is 1/sqrt(max dim); 0.2 * sqrt(max dim) brings it to
                # AdamW's typical update RMS, so Muon takes AdamW's learning rate.
                step_size = group["lr"] * 0.2 * math.sqrt(max(shape))
                for i, update in zip(members, orthogonal):
                    params[i].mul_(1 - group["lr"] * group["weight_decay"])
                    params[i].add_(update, alpha=-step_size)
        return loss


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon (torch.optim.Muon's update, batched by shape) on the hidden matrices and AdamW on every other parameter,
    stepped as one optimizer.

    Both inner optimizers hold the very group dicts listed in `param_groups`, so the lr schedule reaches both, and
    the state dict holds both states for exact resume.
    """

    def __init__(self, hidden: list[nn.Parameter], other: list[tuple[str, nn.Parameter]], optim: OptimConfig,
                 hidden_lr_multiplier: float = 1.0):
        muon_groups = [{"params": hidden, "weight_decay": optim.weight_decay,
                        "lr": (optim.muon_lr or optim.lr) * hidden_lr_multiplier}]
        # Everything AdamW steps here is an embedding, readout, norm, bias or CRF: μP leaves their lr as it is.
        adamw_groups = scaled_groups(other, optim, None)
        super().__init__(muon_groups + adamw_groups, {})
        # match_rms_adamw (Moonshot) scales each update to AdamW's RMS, so Muon takes AdamW's learning rate as it is.
        self.muon = BatchedMuon(muon_groups, lr=optim.muon_lr or optim.lr, weight_decay=optim.weight_decay,
                                     momentum=optim.muon_momentum, adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW(adamw_groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps)
        self._rebind()

    def _rebind(self) -> None:
        self.param_groups = self.muon.param_groups + self.adamw.param_groups

    @torch.no_grad()
    def step(self, closure=None):
        loss = self.muon.step(closure)  # evaluates the closure, if any, once for both
        self.adamw.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self._rebind()  # loading replaces the inner group dicts; the schedule must see the new ones


@OPTIMIZERS.register("muon")
def muon(named: list[tuple[str, nn.Parameter]], optim: OptimConfig, model: ModelConfig | None = None) -> torch.optim.Optimizer:
    if any(".lora_" in name for name, _ in named):
        raise SlmkitError("optim.name=muon orthogonalizes whole weight matrices, and LoRA trains low-rank factors of "
                          "them: use optim.name=adamw with LoRA")
    hidden = [p for name, p in named if is_hidden_matrix(name, p)]
    if not hidden:
        raise SlmkitError("optim.name=muon found no trainable matrix inside the transformer blocks; use optim.name=adamw")
    return MuonWithAdamW(hidden, [(name, p) for name, p in named if not is_hidden_matrix(name, p)], optim,
                         muon_lr_multiplier(model))
