"""Starting from an open model: a transformers folder (or hf:ORG/NAME from the Hugging Face cache) read through its
family's row of the export table into slmkit's model config, head and weights.

The row reads the config; writing it forward again must give back every key that matters, or the import is refused
naming the key. Weights stream from safetensors one tensor at a time into the built model, so no second full copy is
ever held; pickle-only weights are refused unless the run allows them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from slmkit.errors import SlmkitError
from slmkit.export.targets import (TAG_DECODING_KEY, TAG_TRANSITIONS_KEY, TARGETS, Piece, Target, head_keywords, same_copies,
                                  target_mismatches, transitions_of)
from slmkit.model import ARGMAX_DECODING, CRF_DECODING, LM_HEAD, TOKEN_HEAD, HeadSpec, Model, ModelConfig
from slmkit.model.tag_decoding import check_decoding
from slmkit.tokenizer import TOKENIZER_FILE, tokenizer_differences

if TYPE_CHECKING:
    from slmkit.checkpoint.files import InitReport
    from slmkit.config import RunConfig

log = logging.getLogger("slmkit")

HF_PREFIX = "hf:"
HF_CONFIG = "config.json"
SAFETENSORS = "*.safetensors"
PICKLES = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")
# Config keys that change no output of the model slmkit computes: token ids (the tokenizer holds them), names,
# versions, dtypes, init and cache settings, and training-only dropout (slmkit's own model.dropout applies).
IGNORED_KEYS = {
    "architectures", "dtype", "torch_dtype", "transformers_version", "_name_or_path", "model_type", "id2label", "label2id",
    "num_labels", "problem_type", "initializer_range", "initializer_cutoff_factor", "use_cache", "pad_token_id",
    "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id", "unk_token_id", "mask_token_id", "output_attentions",
    "output_hidden_states", "return_dict", "tie_word_embeddings", "pretraining_tp", "_attn_implementation_autoset",
    "type_vocab_size",  # slmkit reads every text as segment 0, whose embedding the import folds into the positions
    "max_window_layers",  # reads only when use_sliding_window (then every layer from 0 is windowed, as written)
    "global_attn_every_n_layers",  # ModernBERT's older spelling of layer_types, which is compared
    "reference_compile", "repad_logits_with_grad", "sparse_prediction", "sparse_pred_ignore_index", "deterministic_flash_attn",
    TAG_DECODING_KEY,  # how tags are read from the scores, not the scores: _head_of reads it into the head
    TAG_TRANSITIONS_KEY,  # the same for a crf head's transitions, which describe_import reads into the head's CRF
}
# Keys a config may leave unset (None) for the class to derive from the width, and what it derives.
DERIVED = {"head_dim": lambda c: c.head_dim, "n_inner": lambda c: 4 * c.d_model}
# A rope setting that leaves plain RoPE plain: transformers fills it in for some families and not others.
NEUTRAL_ROPE = {"partial_rotary_factor": 1.0}


def is_transformers_source(source: str | None) -> bool:
    """Whether init_from names a transformers model: hf:ORG/NAME, or a folder with config.json and no slmkit run."""
    if not source:
        return False
    if source.startswith(HF_PREFIX):
        return True
    from slmkit.checkpoint.files import CONFIG_FILE

    path = Path(source).expanduser()
    return path.is_dir() and (path / HF_CONFIG).is_file() and not (path / CONFIG_FILE).is_file()


def resolve_folder(source: str, key: str = "init_from") -> Path:
    """The local folder of `source`: itself, or hf:ORG/NAME's snapshot in the Hugging Face cache (downloaded when
    online; when offline only what is cached, and a plain message when it is not)."""
    if not source.startswith(HF_PREFIX):
        return Path(source).expanduser()
    repo = source[len(HF_PREFIX):]
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise SlmkitError(f"{key}={source}: name a Hub model as hf:ORG/NAME (e.g. hf:openai-community/gpt2)")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    offline = constants.HF_HUB_OFFLINE
    patterns = [HF_CONFIG, "*.safetensors", "*.safetensors.index.json", "tokenizer*", "special_tokens_map.json",
                "generation_config.json", "chat_template*", "vocab*", "merges.txt"]
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=offline))
    except LocalEntryNotFoundError:
        cache = constants.HF_HUB_CACHE
        raise SlmkitError(
            f"{key}={source}: this machine is offline{' (HF_HUB_OFFLINE is set)' if offline else ' (the Hub cannot be reached)'} "
            f"and {repo} is not in the Hugging Face cache ({cache}); download it once where there is network "
            f"(`huggingface-cli download {repo}`) and copy the cache, or pass a local folder as {key}=PATH"
        ) from None
    except RepositoryNotFoundError:
        raise SlmkitError(f"{key}={source}: the Hub has no model {repo} (or it is private and no token is set)") from None


@dataclass
class ImportedModel:
    """What a transformers folder is, from its files: the family row, slmkit's model config, the head its class
    carries (None: the bare body), its tokenizer and its weight files."""

    folder: Path
    target: Target
    model: ModelConfig
    head: HeadSpec | None
    tokenizer_path: Path
    weights: list[Path]
    pickled: bool
    transitions: dict[str, torch.Tensor] | None = None  # a crf head's learned transitions, from config.json

    @property
    def model_class(self) -> str:
        return self.target.heads[self.head.kind].model_class if self.head else f"{self.target.name} body"


def describe_import(source: str, allow_pickle: bool = False, key: str = "init_from") -> ImportedModel:
    """The model at `source` as slmkit represents it; SlmkitError naming what it cannot represent exactly."""
    folder = resolve_folder(source, key)
    if not folder.is_dir():
        raise SlmkitError(f"{key}={source}: nothing there; give a transformers model folder (config.json, "
                          "model.safetensors, tokenizer.json), hf:ORG/NAME, or an slmkit run folder")
    if not (folder / HF_CONFIG).is_file():
        raise SlmkitError(f"{key}={source} is not a model folder: it has no {HF_CONFIG} (transformers) nor config.yaml (slmkit)")
    raw = _read_json(folder / HF_CONFIG, key, source)
    model_type = raw.get("model_type")
    target = next((t for t in TARGETS.values() if t.model_type == model_type), None)
    if target is None:
        raise SlmkitError(
            f"{key}={source} is a {model_type or 'model of no model_type'} model, a family slmkit does not import: it "
            f"imports {', '.join(sorted(t.model_type for t in TARGETS.values()))}. Another family needs its own row in "
            "slmkit/export/targets.py (config both ways and a weight map), and slmkit parts for whatever it computes differently"
        )
    hf = _hf_config(folder, key, source)
    try:
        fields = target.reads(hf)
        config = ModelConfig(**fields).validate()
    except (KeyError, TypeError) as err:
        raise SlmkitError(f"{key}={source}: its {HF_CONFIG} lacks {err} that a {model_type} config has") from None
    except SlmkitError as err:
        raise SlmkitError(f"{key}={source}: slmkit cannot represent this {model_type} model: {err}") from None
    head = _head_of(target, hf)
    transitions = None
    if head is not None and head.decoding == CRF_DECODING:
        try:
            transitions = transitions_of(hf, head.num_labels)
        except SlmkitError as err:
            raise SlmkitError(f"{key}={source}: its {HF_CONFIG} names the crf decoding, but {err}") from None
    differences = config_differences(hf, target, config, head)
    mismatches = target_mismatches(config, target, head.kind if head else LM_HEAD)
    if differences or mismatches:
        raise SlmkitError(
            f"{key}={source}: slmkit cannot represent this {model_type} model exactly — "
            + "; ".join(differences + mismatches)
            + ". slmkit imports only what it computes exactly; a model with these settings needs slmkit parts that compute them"
        )
    weights, pickled = _weight_files(folder, allow_pickle, key, source)
    tokenizer = folder / TOKENIZER_FILE
    if not tokenizer.is_file():
        others = sorted(p.name for p in folder.glob("*") if p.name.startswith(("tokenizer", "vocab", "merges", "spiece")))
        raise SlmkitError(
            f"{key}={source} has no {TOKENIZER_FILE}{f' (only {others})' if others else ''}: slmkit keeps the model's own "
            "tokenizer and reads it as a fast (Rust) tokenizers file; write one with "
            "`AutoTokenizer.from_pretrained(folder).save_pretrained(folder)`"
        )
    _check_tokenizer_fits(tokenizer, config, key, source)
    tokenizer = run_tokenizer(folder, tokenizer, hf, config.causal, key, source)
    return ImportedModel(folder, target, config, head, tokenizer, weights, pickled, transitions)


def _read_json(path: Path, key: str, source: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SlmkitError(f"{key}={source}: {path.name} is not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise SlmkitError(f"{key}={source}: {path.name} is not a transformers config (a JSON object)")
    return data


def _hf_config(folder: Path, key: str, source: str) -> dict[str, Any]:
    """config.json as transformers' config class reads it (defaults filled in, old keys standardized)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True).to_dict()
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SlmkitError(f"{key}={source}: transformers cannot read its {HF_CONFIG} ({str(err).splitlines()[0]})") from None


def _head_of(target: Target, hf: dict[str, Any]) -> HeadSpec | None:
    """The head the folder's class carries, with its labels, pooling and transform; None for the bare body."""
    architecture = (hf.get("architectures") or [""])[0]
    kind = next((kind for kind, head in target.heads.items() if head.model_class == architecture and not head.bare), None)
    if kind is None:
        return None
    head = target.heads[kind]
    labels = ()
    if kind in ("sequence_classification", "token_classification"):
        id2label = {int(i): str(name) for i, name in (hf.get("id2label") or {}).items()}
        labels = tuple(id2label[i] for i in sorted(id2label))
    spec = HeadSpec(kind, labels, pooling=(head.poolings or ("last",))[0], transform=(head.transforms or ("none",))[0])
    if kind == TOKEN_HEAD:
        decoding = str(hf.get(TAG_DECODING_KEY, ARGMAX_DECODING))
        try:
            check_decoding(decoding, labels)
        except SlmkitError as err:
            raise SlmkitError(f"the {HF_CONFIG} of this token classifier names {TAG_DECODING_KEY}={decoding!r}, which "
                              f"slmkit cannot use ({err}); delete that key to read its tags by argmax") from None
        spec = dataclasses.replace(spec, decoding=decoding)
    return dataclasses.replace(spec, **head.reads(hf))


def config_differences(hf: dict[str, Any], target: Target, c: ModelConfig, head: HeadSpec | None) -> list[str]:
    """Every key of the folder's config that `c`, written forward by the row, does not give back: 'key=value
    (slmkit writes ...)'. Empty when slmkit represents the config exactly."""
    from transformers import AutoConfig

    token_ids = {name: hf[name] for name in IGNORED_KEYS if name.endswith("token_id") and name in hf}
    keywords = head_keywords(target, head) if head else {}
    ours = AutoConfig.for_model(target.model_type, **target.config(c), **keywords, **token_ids).to_dict()
    found = []
    for name in sorted(set(hf) | set(ours)):
        if name in IGNORED_KEYS or "dropout" in name or "pdrop" in name:
            continue
        theirs, written = _neutral(hf.get(name)), _neutral(ours.get(name))
        if theirs is None and name in DERIVED:  # unset: derived from the width, as slmkit derives it too
            theirs = float(DERIVED[name](c))
        if theirs != written:
            found.append(f"{name}={theirs!r} (slmkit represents {target.model_type} only with {name}={written!r})")
    return found


def _neutral(value: Any) -> Any:
    """A config value with neutral rope settings dropped and numbers compared as floats."""
    if isinstance(value, dict):
        return {k: _neutral(v) for k, v in value.items() if NEUTRAL_ROPE.get(k, object()) != v}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def _weight_files(folder: Path, allow_pickle: bool, key: str, source: str) -> tuple[list[Path], bool]:
    safetensors = sorted(folder.glob(SAFETENSORS))
    if safetensors:
        return safetensors, False
    pickles = sorted(p for pattern in PICKLES for p in folder.glob(pattern))
    if not pickles:
        raise SlmkitError(f"{key}={source} has a {HF_CONFIG} but no weights (model.safetensors): it is not a complete model folder")
    if not allow_pickle:
        raise SlmkitError(
            f"{key}={source} holds its weights only as pickle ({', '.join(p.name for p in pickles)}): unpickling a file "
            "from elsewhere can run code, so slmkit reads weights from safetensors. Convert them (transformers: "
            "`model.save_pretrained(folder, safe_serialization=True)`), or, trusting the file, set init_from_allow_pickle=true "
            "(read with torch.load(weights_only=True))"
        )
    return pickles, True


def _check_tokenizer_fits(tokenizer: Path, c: ModelConfig, key: str, source: str) -> None:
    from slmkit.tokenizer import load_tokenizer

    size = load_tokenizer(tokenizer).get_vocab_size(with_added_tokens=True)
    if size > c.vocab_size:
        raise SlmkitError(f"{key}={source}: its {TOKENIZER_FILE} has {size} tokens and the model {c.vocab_size} "
                          "embedding rows: the tokenizer does not belong to these weights")


def document_token(folder: Path, hf: dict[str, Any], causal: bool) -> str | None:
    """The token that plays slmkit's document token for this model: its end-of-text token (a decoder), or the token
    it reads every text after (an encoder's [CLS]); from the tokenizer's config, else the model's; None when unnamed."""
    name = "eos_token" if causal else "cls_token"
    for file in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / file
        if path.is_file():
            try:
                value = json.loads(path.read_text(encoding="utf-8")).get(name)
            except (OSError, ValueError):
                value = None
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str) and value:
                return value
    token_id = hf.get(f"{name}_id")
    if isinstance(token_id, list):
        token_id = token_id[0] if token_id else None
    if token_id is None:
        return None
    from slmkit.tokenizer import load_tokenizer

    return load_tokenizer(folder / TOKENIZER_FILE).id_to_token(int(token_id))


def run_tokenizer(folder: Path, tokenizer: Path, hf: dict[str, Any], causal: bool, key: str, source: str) -> Path:
    """The tokenizer file a run from this model reads: the model's own, ids and all.

    slmkit takes the lowest-id special token as its document token (end_of_document_id). Where the model's own is
    another (Llama's </s> after <unk> and <s>, BERT's [CLS] after [PAD] and [UNK]), the run reads a copy in which the
    special tokens below it are plain added tokens: the same ids and the same encoding, only no longer skipped when
    decoding. The copy lives in slmkit's cache, named by its content.
    """
    from slmkit.atomic import atomic_write_bytes
    from slmkit.data import cache_root
    from slmkit.tokenizer import end_of_document_id, load_tokenizer, tokenizer_sha256

    token = document_token(folder, hf, causal)
    loaded = load_tokenizer(tokenizer)
    token_id = loaded.token_to_id(token) if token else None
    if token is None or token_id is None:
        return tokenizer
    try:
        if end_of_document_id(loaded) == token_id:
            return tokenizer
    except SlmkitError:
        pass
    data = json.loads(tokenizer.read_text(encoding="utf-8"))
    specials = [t for t in data.get("added_tokens", []) if t.get("special")]
    if not any(t["id"] == token_id for t in specials):
        raise SlmkitError(f"{key}={source}: its tokenizer names {token!r} as its {'end-of-text' if causal else 'first'} "
                          f"token, and {TOKENIZER_FILE} does not hold it as a special token: the tokenizer files disagree")
    for t in specials:
        if t["id"] < token_id:
            t["special"] = False
    text = json.dumps(data, ensure_ascii=False).encode("utf-8")
    path = cache_root() / "imported-tokenizers" / hashlib.sha256(text).hexdigest()[:16] / TOKENIZER_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, text)
    return path


class ClassTensors:
    """The folder's tensors by name, read one at a time (safetensors: memory-mapped, nothing loaded up front)."""

    def __init__(self, files: list[Path], pickled: bool):
        self._where: dict[str, Any] = {}
        self._open = []
        for path in files:
            if pickled:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                handle: Any = _DictTensors(state.get("state_dict", state))
            else:
                from safetensors import safe_open

                handle = safe_open(str(path), framework="pt")
            self._open.append(handle)
            for name in handle.keys():
                self._where[name] = handle

    def names(self) -> set[str]:
        return set(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> torch.Tensor:
        return self._where[name].get_tensor(name)

    def shape(self, name: str) -> tuple[int, ...]:
        handle = self._where[name]
        return tuple(handle.get_tensor(name).shape) if isinstance(handle, _DictTensors) else tuple(handle.get_slice(name).get_shape())


@dataclass
class _DictTensors:
    state: dict[str, torch.Tensor]

    def keys(self):
        return self.state.keys()

    def get_tensor(self, name: str) -> torch.Tensor:
        return self.state[name]


def _prefixed(pieces: list[Piece], body_prefix: tuple[str, str] | None) -> list[Piece]:
    if body_prefix is None:
        return pieces
    old, new = body_prefix
    return [dataclasses.replace(p, theirs=tuple(new + t.removeprefix(old) if t.startswith(old) else t for t in p.theirs))
            for p in pieces]


def slmkit_shapes(model: Model) -> dict[str, tuple[int, ...]]:
    """The model's tensor shapes under the table's flat names (as export's slmkit_state names them)."""
    return {k.removeprefix("body."): tuple(v.shape) for k, v in model.state_dict().items()}


def import_weights(model: Model, imported: ImportedModel, source: str, key: str = "init_from") -> "InitReport":
    """Streams the folder's body (all of it) and the head its class carries (when `model` has that head, of the same
    shape) into `model`; other heads keep their fresh init. A weight of another shape is refused, named."""
    from slmkit.checkpoint.files import InitReport

    c, target = model.config, imported.target
    shapes = slmkit_shapes(model)
    head_class = target.heads[imported.head.kind] if imported.head else None
    pieces = _prefixed(target.body.back(c, shapes), head_class.body_prefix if head_class else None)
    tensors = ClassTensors(imported.weights, imported.pickled)
    loaded = []
    if imported.head and imported.head.kind in model.heads:
        # The folder's head starts this run's head of the same kind when it fits (a classifier of as many labels).
        head_pieces = head_class.weights.back(c, shapes)
        if all(len(p.theirs) > 1 or p.theirs[0] not in tensors or _rows_match(tensors.shape(p.theirs[0]), shapes[p.ours])
               for p in head_pieces):
            pieces += head_pieces
            loaded.append(imported.head.kind)
    own = {k.removeprefix("body."): v for k, v in model.state_dict().items()}
    used: set[str] = set()
    read: set[int] = set()  # storage of the slmkit tensors read so far
    with torch.no_grad():
        for piece in pieces:
            target_tensor = own[piece.ours]
            present = tuple(name for name in piece.theirs if name in tensors)
            if target_tensor.data_ptr() in read:
                used.update(present)  # tied to the embeddings read already, as the class ties them when it loads
                continue
            if piece.combine is same_copies and present:
                piece = dataclasses.replace(piece, theirs=present)  # copies of one tensor: those the file keeps
            elif len(present) < len(piece.theirs):
                if piece.ours.endswith(".bias"):
                    continue  # the class has no such bias: slmkit's stays zero, which computes the same
                missing = next(name for name in piece.theirs if name not in tensors)
                raise SlmkitError(f"{key}={source}: its weights lack {missing}, which a {imported.model_class} has: "
                                  "the folder is incomplete or of another class than its config.json says")
            tensor = _combined(piece, tensors, key, source)
            if tuple(tensor.shape) != tuple(target_tensor.shape):
                raise SlmkitError(
                    f"{key}={source}: {piece.theirs[0]} is {tuple(tensor.shape)} and this run's model needs "
                    f"{tuple(target_tensor.shape)} for {piece.ours}: a model.* setting changes the shape of an imported "
                    "weight; drop the model.* overrides that change its size (the imported config sets them)"
                )
            target_tensor.copy_(tensor)
            read.add(target_tensor.data_ptr())
            used.update(piece.theirs)
            del tensor
        crf = model.heads[TOKEN_HEAD].crf if TOKEN_HEAD in loaded else None
        if crf is not None and imported.transitions is not None:
            crf.load_state_dict(imported.transitions)
    _check_leftovers(tensors, used, key, source)
    source_heads = [imported.head.kind] if imported.head else []
    return InitReport(loaded, [name for name in model.heads if name not in loaded],
                      [name for name in source_heads if name not in model.heads])


def _rows_match(theirs: tuple[int, ...], ours: tuple[int, ...]) -> bool:
    return sorted(theirs) == sorted(ours)  # a transposed layer has the same sizes the other way round


def _combined(piece: Piece, tensors: ClassTensors, key: str, source: str) -> torch.Tensor:
    try:
        return piece.combine(*(tensors.get(name).float() for name in piece.theirs))
    except ValueError:
        raise SlmkitError(f"{key}={source}: {', '.join(piece.theirs)} differ, and slmkit keeps one tensor for them "
                          f"({piece.ours}): this model is not one slmkit represents exactly") from None


def _check_leftovers(tensors: ClassTensors, used: set[str], key: str, source: str) -> None:
    """A tensor left unread in a module slmkit read from is one slmkit lacks (a bias, a norm): refused unless it is a
    zero bias (it adds nothing); tensors of other modules (a head this run does not use, a pooler) are skipped, named."""
    modules = {name.rpartition(".")[0] for name in used}
    skipped = []
    for name in sorted(tensors.names() - used):
        if name.rpartition(".")[0] in modules:
            if name.endswith(".bias") and not tensors.get(name).any():
                continue
            raise SlmkitError(f"{key}={source}: its {name} has no place in slmkit's model (slmkit has no such "
                              "parameter there), so slmkit cannot represent this model exactly")
        skipped.append(name)
    if skipped:
        log.warning("%s=%s: not used by this run (another head, or parts slmkit does not compute): %s%s", key, source,
                    ", ".join(skipped[:5]), " ..." if len(skipped) > 5 else "")


def load_transformers_model(source: str, allow_pickle: bool = False, heads: list[HeadSpec] | None = None) -> tuple[Model, ImportedModel]:
    """The transformers model at `source` as an slmkit Model (its own head, or `heads`), in eval mode."""
    from slmkit.model import LM_HEAD

    imported = describe_import(source, allow_pickle)
    chosen = heads or [imported.head or LM_HEAD]
    model = Model(imported.model, chosen)
    import_weights(model, imported, source)
    return model.eval(), imported


# ---------------------------------------------------------------------------------------------------------------------
# A run that starts from a transformers model: what resolve_recipe and train call when init_from names one.

def import_layer(config: "RunConfig") -> dict[str, Any]:
    """The model's config and tokenizer, as the lowest layer of a run that starts from its weights."""
    imported = describe_import(config.init_from, config.init_from_allow_pickle)
    return {"model": dataclasses.asdict(imported.model), "tokenizer": {"path": str(imported.tokenizer_path)}}


def check_import_fits(config: "RunConfig") -> None:
    """Before anything is written: the run keeps the model's tokenizer, and its model.* keys change no imported
    weight's shape (a change of anything else, dropout or the context of a RoPE model, is the run's choice)."""
    imported = describe_import(config.init_from, config.init_from_allow_pickle)
    chosen = Path(config.tokenizer.path)
    own = imported.tokenizer_path
    differences = [] if chosen.resolve() == own.resolve() else tokenizer_differences(own, chosen, ("init_from", "tokenizer.path"))
    if differences:
        raise SlmkitError(
            f"tokenizer.path={chosen} is not the tokenizer of init_from={config.init_from} ({own}): "
            f"{'; '.join(differences)}. A model can only continue with the tokenizer it was trained with; drop the "
            "tokenizer.path override"
        )
    with torch.device("meta"):
        theirs = slmkit_shapes(Model(imported.model))
        try:
            ours = slmkit_shapes(Model(config.model))
        except SlmkitError as err:
            raise SlmkitError(f"init_from={config.init_from}: this run's model section does not build ({err})") from None
    changed = [f"{name} {theirs[name]} -> {ours.get(name)}" for name in theirs if ours.get(name) != theirs[name]]
    changed += [f"{name} (new)" for name in ours if name not in theirs and not name.startswith("heads.")]
    if changed:
        fields = [f"model.{f.name}={getattr(config.model, f.name)!r}" for f in dataclasses.fields(ModelConfig)
                  if getattr(config.model, f.name) != getattr(imported.model, f.name)]
        raise SlmkitError(
            f"init_from={config.init_from}: {', '.join(fields) or 'the model section'} change the shape of imported "
            f"weights ({'; '.join(changed[:3])}{'; ...' if len(changed) > 3 else ''}): drop these model.* overrides, "
            "the imported model's config sets them"
        )


def init_from_source(model: Model, config: "RunConfig") -> "InitReport":
    """init_from's weights into the run's freshly built model: a transformers model, or an slmkit run or checkpoint."""
    if is_transformers_source(config.init_from):
        return import_weights(model, describe_import(config.init_from, config.init_from_allow_pickle), config.init_from)
    from slmkit.checkpoint.files import init_from_checkpoint

    return init_from_checkpoint(model, config.init_from)
