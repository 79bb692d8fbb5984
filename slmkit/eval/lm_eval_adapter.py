"""Lets lm-evaluation-harness evaluate slmkit checkpoints: its LM interface over slmkit's own scorer and decoder.

`lm_eval --model slmkit --model_args checkpoint=runs/x/y` after `import slmkit.eval.lm_eval_adapter`, or pass
`SlmkitLM(checkpoint=...)` (or `SlmkitLM(model=..., tokenizer=...)`) to lm_eval.simple_evaluate.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tokenizers import Tokenizer

from slmkit.errors import SlmkitError
from slmkit.eval.decode import greedy_until
from slmkit.eval.loglikelihood import Scorer


@register_model("slmkit")
class SlmkitLM(LM):
    def __init__(
        self,
        checkpoint: Optional[str] = None,
        model: Optional[torch.nn.Module] = None,
        tokenizer: Optional[Tokenizer] = None,
        batch_size: int | str = 8,
        device: Optional[str] = None,
        max_gen_toks: int = 256,
        **_: Any,  # lm-eval passes max_batch_size and friends, which slmkit does not need
    ):
        super().__init__()
        if checkpoint is not None:
            from slmkit.checkpoint import load_checkpoint

            loaded = load_checkpoint(checkpoint, map_location=device or ("cuda" if torch.cuda.is_available() else "cpu"))
            model, tokenizer = loaded.model, tokenizer or loaded.tokenizer()
        if model is None or tokenizer is None:
            raise SlmkitError("SlmkitLM needs checkpoint=PATH, or both model= and tokenizer=")
        model.eval()
        # lm-eval's "auto" batch size probes memory; slmkit's results do not depend on the batch size, so use 8.
        size = int(batch_size) if str(batch_size).isdigit() else 8
        self.scorer = Scorer(model, tokenizer, batch_size=size)
        self.max_gen_toks = max_gen_toks

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        scores = self.scorer.loglikelihood([tuple(r.args) for r in requests])
        return [(s.logprob, s.is_greedy) for s in scores]

    def loglikelihood_rolling(self, requests) -> list[float]:
        # Disjoint windows, as lm-eval's own models: each token gets as much context as the window allows.
        return [s.logprob for s in self.scorer.rolling([r.args[0] for r in requests], stride=self.scorer.window)]

    def generate_until(self, requests) -> list[str]:
        outputs = []
        for request in requests:
            context, kwargs = request.args
            until = kwargs.get("until", [])
            stops = [until] if isinstance(until, str) else list(until)
            if kwargs.get("do_sample"):
                raise SlmkitError("SlmkitLM decodes greedily; run the task with do_sample=false")
            max_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            outputs.append(greedy_until(self.scorer.model, self.scorer.tokenizer, context, stops, max_new))
        return outputs
