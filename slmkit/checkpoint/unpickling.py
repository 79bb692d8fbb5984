"""What went wrong when torch.load(weights_only=True) refused a file, said without PyTorch's own advice.

Every slmkit path that unpickles (a Lightning checkpoint, a DeepSpeed shard, a resume) reports through here, so no
message ever invites the user to retry with weights_only=False, which would run whatever code the file carries.
"""

from __future__ import annotations

import pickle
import re

# What unpickling bytes that are no pickle raises, besides torch's own refusal.
NOT_A_PICKLE = (pickle.UnpicklingError, EOFError, IndexError, KeyError)


def load_problem(err: Exception) -> str:
    """The first line of a torch.load error, without PyTorch's advice to retry with weights_only=False: for a
    checkpoint that is not tensors only, that would run whatever code it carries."""
    text = str(err)
    found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", text)
    if found or re.search(r"[Uu]nsupported (?:global|class)", text):
        return "it holds Python objects other than tensors" + (f", such as {found.group(1)}" if found else "")
    if "Weights only load failed" in text or isinstance(err, NOT_A_PICKLE):
        # Anything else the unpickler stumbled on: bytes that are no pickle at all (random or damaged data).
        return "it is not a PyTorch checkpoint: its bytes do not read as tensors"
    return text.splitlines()[0] if text else type(err).__name__
