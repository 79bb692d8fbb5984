"""The run's typed config: one dataclass tree that a recipe plus overrides resolve into, validated once.

Each section documents its own keys; `slmkit recipes --keys` prints them from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from slmkit.atomic import atomic_write_text
from slmkit.data_config import DataConfig, TokenizerConfig
from slmkit.errors import SlmkitError
from slmkit.model.config import ModelConfig
from slmkit.model.heads import ARGMAX_DECODING, LM_HEAD, HeadSpec
from slmkit.options import FRACTION, SEED, above, at_least, between, check_values, documented_keys, option
from slmkit.registry import did_you_mean


@dataclass
class OptimConfig:
    name: str = option("adamw", "Optimizer by name; muon orthogonalizes the updates of the matrices inside the blocks and uses AdamW for embeddings, heads, norms and biases.", choices="slmkit.training.optimizers:OPTIMIZERS")
    lr: float = option(6e-4, "Peak learning rate.", bounds=above(0))
    min_lr: float = option(6e-5, "Learning rate at the end of the decay.", bounds=at_least(0))
    weight_decay: float = option(0.1, "Decoupled weight decay, applied to matrices only (not to norms or biases).", bounds=at_least(0))
    beta1: float = option(0.9, "AdamW beta1.", bounds=between(0, 1, high_open=True))
    beta2: float = option(0.95, "AdamW beta2.", bounds=between(0, 1, high_open=True))
    eps: float = option(1e-8, "AdamW epsilon.", bounds=above(0))
    schedule: str = option("cosine", "Learning-rate schedule by name; wsd is warmup-stable-decay.", choices="slmkit.training.schedule:SCHEDULES")
    warmup_steps: int = option(100, "Linear warmup steps from 0 to lr.", bounds=at_least(0))
    decay_steps: Optional[int] = option(None, "Step at which the decay reaches min_lr; None = trainer.max_steps.", bounds=at_least(1))
    wsd_decay_fraction: float = option(0.2, "wsd only: the final fraction of decay_steps spent decaying to min_lr.", bounds=FRACTION)
    muon_lr: Optional[float] = option(None, "muon only: peak learning rate of the block matrices (scaled to AdamW's update size); None = lr.", bounds=above(0))
    crf_lr_multiplier: float = option(30.0, "objective.decoding=crf only: the learning rate of the token head's CRF scores (start, tag-to-tag, end) as a multiple of lr. They start at zero and Adam moves each by about its rate per step, so at a fine-tuning rate they would barely leave zero in a short run (NCBI disease NER, 600 steps at lr 1e-3: entity F1 0.790 at 1x, 0.813 at 30x; docs/benchmarks.md).", bounds=above(0))
    muon_momentum: float = option(0.95, "muon only: momentum of the block matrices' updates (Nesterov).", bounds=between(0, 1, high_open=True))


@dataclass
class TrainerConfig:
    accelerator: str = option("auto", "auto, cpu or gpu.", choices=("auto", "cpu", "gpu"))
    devices: int = option(-1, "Devices per node; -1 = all visible (one process each).", bounds=at_least(1, also=(-1,)))
    num_nodes: int = option(1, "Number of nodes (multi-node runs are launched by torchrun or SLURM).", bounds=at_least(1))
    strategy: str = option("auto", "Distribution by name: auto (one device), ddp, deepspeed.", choices=("auto", "ddp", "deepspeed"))
    zero_stage: int = option(2, "deepspeed only: ZeRO stage 1, 2 or 3.", bounds=between(1, 3))
    offload_optimizer: bool = option(False, "deepspeed only: keep optimizer state in CPU memory.")
    offload_params: bool = option(False, "deepspeed ZeRO-3 only: keep parameters in CPU memory.")
    precision: str = option("fp32", "Numeric precision: fp32, bf16 (mixed), fp16 (mixed, loss-scaled), bf16-true.", choices=("fp32", "bf16", "fp16", "bf16-true"))
    max_steps: int = option(1000, "Optimizer steps to train for.", bounds=at_least(1))
    micro_batch_size: int = option(8, "Sequences per device per forward pass.", bounds=at_least(1))
    grad_accum: int = option(1, "Micro-batches accumulated per optimizer step (global batch = micro*accum*devices*nodes).", bounds=at_least(1))
    grad_clip: float = option(1.0, "Clip the global gradient norm to this; 0 disables clipping.", bounds=at_least(0))
    log_every: int = option(10, "Log train metrics every this many steps.", bounds=at_least(1))
    val_every: int = option(250, "Run validation every this many steps (and at the end).", bounds=at_least(1))
    val_batches: int = option(20, "Micro-batches per validation run.", bounds=at_least(0))
    checkpoint_every: int = option(1000, "Write a checkpoint every this many steps (and at the end); 0 = only at the end.", bounds=at_least(0))
    keep_checkpoints: int = option(2, "Periodic checkpoints to keep (the newest); the final one is always kept.", bounds=at_least(1))
    compile: bool = option(False, "torch.compile the model.")
    activation_checkpointing: bool = option(False, "Recompute block activations in the backward pass to save memory.")
    seed: int = option(1337, "Seed of model init, data order and dropout.", bounds=SEED)
    num_workers: int = option(0, "DataLoader worker processes.", bounds=at_least(0))
    data_order: str = option("random_windows", "Order of the token windows: random_windows (drawn per step from (seed, step); resumes exactly at the same world size) or global_index (a seeded permutation of non-overlapping windows, its position saved in the checkpoint; resumes exactly at any world size).", choices=("random_windows", "global_index"))
    progress_bar: bool = option(True, "Show a progress bar with step, loss and tokens/s.")


@dataclass
class EvalConfig:
    tasks: list[str] = option([], "Evaluation tasks (names or task files) run during and after training.")
    every: int = option(0, "Run the tasks every this many steps during training; 0 = only after training.", bounds=at_least(0))
    limit: Optional[int] = option(None, "Evaluate at most this many examples per task (quick checks).", bounds=at_least(1))
    batch_size: int = option(8, "Sequences per evaluation forward pass.", bounds=at_least(1))


@dataclass
class ObjectiveConfig:
    name: str = option("causal_lm", "What the run trains the model to do, by name; it decides the model's heads and the data it reads.", choices="slmkit.objectives:OBJECTIVES")
    task: Optional[str] = option(None, "Fine-tuning objectives: the task (built-in name or task YAML) whose `train` records are learned and whose `data` records are scored.")
    labels: list[str] = option([], "Classification heads: label names in output order; empty = the task's labels (filled in when the run starts and saved with it).")
    pooling: str = option("auto", "Sequence classification and embeddings (contrastive): how one vector stands for the sequence, by name (last, first, mean); auto = last for a causal model, mean for a bidirectional one.")
    loss_on_prompt: bool = option(False, "sft: also learn to predict prompt tokens; by default only the completion (and its end token) carries loss.")
    head_transform: str = option("none", "Task heads: what the hidden states pass through before the output layer; an encoder's stock classes need theirs to export (ModernBERT: prediction; BERT's sequence classifier: pooler).", choices="slmkit.model.heads:TRANSFORMS")
    decoding: str = option(ARGMAX_DECODING, "token_classification: how the head's per-token scores become tags wherever the model predicts (evaluation's entity F1, slmkit predict), saved with its head: argmax = each token's best label; bio = the best valid BIO sequence (Viterbi over the log-softmax scores; I-X only after B-X or I-X), which needs labels named O, B-TYPE, I-TYPE; crf = a linear-chain CRF on the head (learned start, tag-to-tag and end scores, trained with the sentence's likelihood instead of per-token cross-entropy) decoded by Viterbi, valid BIO when the labels are BIO.", choices="slmkit.model.tag_decoding:TAG_DECODINGS")
    mask_token: str = option("<|mask|>", "masked_lm: the tokenizer's mask token (list it in tokenizer.special_tokens after the end-of-document token).")
    mask_rate: float = option(0.15, "masked_lm: fraction of tokens to predict (BERT 0.15, ModernBERT 0.3); of those, 80% become the mask token, 10% a random token, 10% stay.", bounds=between(0, 1, low_open=True, high_open=True))
    whole_word_masking: bool = option(False, "masked_lm: mask whole words (every token of a chosen word) instead of single tokens.")
    temperature: float = option(0.05, "contrastive: softmax temperature of the in-batch similarity (cosine / temperature).", bounds=above(0))


@dataclass
class LoraConfig:
    rank: int = option(0, "LoRA rank r of the low-rank updates; 0 = no LoRA (every weight trains).", bounds=at_least(0))
    alpha: float = option(16.0, "LoRA scale numerator: an update B @ A is scaled by alpha / rank.", bounds=above(0))
    dropout: float = option(0.0, "Dropout on the input of each LoRA branch.", bounds=between(0, 1, high_open=True))
    targets: list[str] = option(["q_proj", "k_proj", "v_proj", "o_proj"], "Linear layers that get adapters, by module name (the last part, e.g. q_proj, or a full dotted name).")


@dataclass
class DistillConfig:
    teacher: Optional[str] = option(None, "The model the student learns from: an slmkit run folder or checkpoint, or a local Hugging Face model folder (one `slmkit export` wrote); the run reads text with its tokenizer.")
    alpha: float = option(0.5, "Weight of the teacher: loss = (1 - alpha) * cross-entropy on the data + alpha * T^2 * KL at temperature T.", bounds=FRACTION)
    temperature: float = option(2.0, "Temperature T of the softmax of teacher and student in the KL term; above 1 softens both.", bounds=above(0))
    kl: str = option("forward", "forward = KL(teacher || student), covers all the teacher's mass (Hinton); reverse = KL(student || teacher), seeks its modes.", choices=("forward", "reverse"))
    hidden_weight: float = option(0.0, "Weight of a cosine loss between the student's and the teacher's last hidden states (DistilBERT), added to the loss; a learned projection maps the student's width to the teacher's when they differ. Needs the teacher in memory (cache none).", bounds=at_least(0))
    init_from_teacher: bool = option(False, "Start the student from the teacher's weights: embeddings, final norm, heads and every k-th block (DistilBERT). The student's model section defaults to the teacher's; it may differ only in depth. An slmkit teacher only.")
    init_every_k: Optional[int] = option(None, "init_from_teacher: student block i starts from teacher block i * k; None = teacher layers // student layers.", bounds=at_least(1))
    cache: str = option("none", "Teacher logits: none = computed on the fly by the frozen teacher; topk = computed once into a top-k cache beside the token shards and read while the student trains, with no teacher in memory (language modelling only).", choices=("none", "topk"))
    cache_k: int = option(64, "topk: the teacher's most likely tokens kept per position, with the rest of its mass as one more category; k = the vocabulary gives the exact KL.", bounds=at_least(1))
    cache_windows: int = option(0, "topk: block_size windows of the train split to cache, the windows the student then draws from; 0 = as many as one device draws in the run.", bounds=at_least(0))
    cache_dir: Optional[str] = option(None, "topk: folder of the cache; default <token shards>/teacher-logits/<key of teacher, data, k, temperature, windows>. A folder holding a cache built from another teacher or other data is refused.")
    unlabeled: Optional[str] = option(None, "distill_classification: unlabeled in-domain records (a file or glob in a task data format; a relative path is under data.root or $SLMKIT_DATA), rendered with the task's prompt and learned from the teacher's soft labels alone.")
    unlabeled_field: str = option("text", "distill_classification: the field of an unlabeled record that unlabeled_split cuts (a text file's lines are records with this field).")
    unlabeled_split: Optional[str] = option(None, "distill_classification: a regular expression at which each unlabeled text is cut into separate inputs (e.g. between sentences); None = one input per record.")
    unlabeled_limit: Optional[int] = option(None, "distill_classification: at most this many unlabeled inputs, a seeded subset.", bounds=at_least(1))


@dataclass
class HeadConfig:
    kind: str = option(LM_HEAD, "The head's kind, by name: what the body's hidden states become.", choices="slmkit.model.heads:HEADS")
    labels: list[str] = option([], "Label names in output order (classification heads); their number is the head's width.")
    pooling: str = option("last", "How one vector stands for the sequence (sequence classification, embedding), by name.", choices="slmkit.model.heads:POOLINGS")
    transform: str = option("none", "What the hidden states pass through before the head's output layer, by name.", choices="slmkit.model.heads:TRANSFORMS")
    decoding: str = option(ARGMAX_DECODING, "Token classification: how the head's per-token scores become tags, by name (the objective's decoding, recorded here).", choices="slmkit.model.tag_decoding:TAG_DECODINGS")

    def spec(self) -> HeadSpec:
        return HeadSpec(self.kind, tuple(self.labels), self.pooling, self.transform, self.decoding)

    @classmethod
    def of(cls, spec: HeadSpec) -> "HeadConfig":
        return cls(spec.kind, list(spec.labels), spec.pooling, spec.transform, spec.decoding)


@dataclass
class TrackConfig:
    mlflow_uri: Optional[str] = option(None, "logger mlflow: the tracking URI (a server, or a database URL); None = sqlite:///<the folder holding the run folder>/mlflow.db.")
    mlflow_experiment: Optional[str] = option(None, "logger mlflow: the experiment; None = the recipe's name.")
    wandb_project: str = option("slmkit", "logger wandb: the W&B project.")
    wandb_mode: str = option("offline", "logger wandb: offline writes <run>/wandb/ for `wandb sync` later; online sends as it goes.", choices=("offline", "online"))


@dataclass
class ProvenanceConfig:
    commit: Optional[str] = option(None, "Written when the run starts (a recipe leaves it unset): the git commit of the slmkit source, '-dirty' with uncommitted changes, or unknown.")
    version: Optional[str] = option(None, "Written when the run starts: the slmkit version.")
    config_hash: Optional[str] = option(None, "Written when the run starts: a hash of the resolved config without trainer.seed, out_dir and resume, so that the seeds of one configuration group together.")
    machine: Optional[str] = option(None, "Written when the run starts: host, cores, architecture, torch version and GPUs.")


@dataclass
class RunConfig:
    name: str = option("run", "Name of the recipe / run; the default out_dir is runs/<name>/<timestamp>.")
    out_dir: Optional[str] = option(None, "Run folder: config.yaml, checkpoints/, metrics.jsonl, TensorBoard events.")
    resume: Optional[str] = option(None, "true = continue from the latest checkpoint in out_dir; or a checkpoint path.")
    init_from: Optional[str] = option(None, "Start from the weights of this slmkit run folder or checkpoint, or of a transformers model (a local folder with config.json, safetensors and tokenizer.json, or hf:ORG/NAME from the Hugging Face cache); fresh optimizer and schedule; the model section and tokenizer default to its own.")
    init_from_allow_pickle: bool = option(False, "init_from a transformers folder whose weights are only pickle files (pytorch_model.bin): read them (tensors only) instead of refusing. Unpickling a file from elsewhere can run code: convert to safetensors when you can.")
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    heads: list[HeadConfig] = field(default_factory=list, metadata={"doc": "The model's heads, resolved from the objective when the run starts and saved in its config.yaml, so that its checkpoints rebuild the model without the objective; written by slmkit, not set in a recipe."})
    logger: list[str] = option(["tensorboard"], "Experiment trackers the run reports every metric to (several at once); metrics.jsonl is always written. A tracker that fails mid-run is reported and dropped.", choices="slmkit.training.trackers:LOGGERS")
    track: TrackConfig = field(default_factory=TrackConfig)
    provenance: ProvenanceConfig = field(default_factory=ProvenanceConfig)


# ---------------------------------------------------------------------------------------------------------------------
# Building a RunConfig from YAML layers and dotted overrides, with errors a user can act on.

def build_config(schema: type, *layers: Any, overrides: Sequence[str] = (), check: bool = True) -> Any:
    """Merges dict/DictConfig layers and `key.sub=value` overrides onto a dataclass schema and returns the dataclass.

    Unknown keys and values of the wrong type raise SlmkitError naming the key, with a did-you-mean; with `check`, so
    do values outside a key's choices or bounds.
    """
    merged = OmegaConf.structured(schema)
    try:
        for layer in layers:
            merged = OmegaConf.merge(merged, layer)
        for override in overrides:
            if "=" not in override:
                raise SlmkitError(f"override {override!r} is not of the form key=value (e.g. trainer.max_steps=100)")
            key, value = override.split("=", 1)
            if _is_text_field(schema, key):
                # Taken literally: a prompt like "ROMEO:" must not be read as YAML (a mapping); a bare null still
                # unsets an optional text (init_from=null), as it would in the YAML.
                literal = None if value == "null" else value.strip("\"'") if value[:1] in "\"'" else value
                OmegaConf.update(merged, key, literal)
            else:
                try:
                    parsed = OmegaConf.from_dotlist([override])
                except yaml.YAMLError as err:
                    raise SlmkitError(f"override {override!r} is not valid YAML ({yaml_problem(err)}): close every "
                                      "bracket and quote, e.g. model.n_layer=4 or eval.tasks=[a,b]") from None
                merged = OmegaConf.merge(merged, parsed)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise _explain(err, schema) from None
    if check:
        check_values(config)
    return config


def yaml_problem(err: yaml.YAMLError) -> str:
    """What is wrong with a YAML text, and where: "expected ',' or ']', but got '<stream end>' (line 1, column 4)"."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem:
        mark = err.problem_mark
        return err.problem + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else "")
    return str(err).splitlines()[0]


def literal_text(value: Any) -> Any:
    """`value` with OmegaConf's interpolations escaped, in every string it holds: `${oc.env:SECRET}` stays that text."""
    if isinstance(value, str):
        return value.replace("${", "\\${")
    if isinstance(value, dict):
        return {k: literal_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [literal_text(v) for v in value]
    return value


def _is_text_field(schema: type, key: str) -> bool:
    """Whether a dotted key names a str (or Optional[str]) field of the dataclass schema."""
    import typing

    node: Any = schema
    for part in key.split("."):
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return False
        hints = typing.get_type_hints(node)
        if part not in hints:
            return False
        node = hints[part]
    return node is str or node == Optional[str]


def _explain(err: OmegaConfBaseException, schema: type) -> SlmkitError:
    key = getattr(err, "full_key", None) or ""
    if isinstance(err, ConfigKeyError) or "not in" in str(err) or "Key '" in str(err):
        known = [k.key for k in documented_keys(schema)]
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        siblings = [k for k in known if k.rsplit(".", 1)[0] == parent] if parent else known
        return SlmkitError(
            f"unknown key {key}{did_you_mean(key, known)}"
            + (f"; valid keys under {parent}: {', '.join(k.rsplit('.', 1)[1] for k in siblings)}" if parent and siblings else "")
        )
    if isinstance(err, ValidationError):
        value = getattr(err, "value", None)
        return SlmkitError(f"bad value {value!r} for {key}: {str(err).splitlines()[0]}" if key else f"bad config value: {err}")
    return SlmkitError(f"bad config: {str(err).splitlines()[0]}" + (f" (key {key})" if key else ""))


def config_to_yaml(config: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def save_run_config(config: RunConfig, path: str | Path) -> None:
    atomic_write_text(path, config_to_yaml(config))


def run_config_layer(path: str | Path) -> dict[str, Any]:
    """A run's config.yaml as a plain-data layer (for build_config), its resolvers escaped."""
    path = Path(path)
    if not path.is_file():
        raise SlmkitError(f"no config.yaml at {path}: point at an slmkit run folder or checkpoint")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        problem = yaml_problem(err) if isinstance(err, yaml.YAMLError) else str(err)
        raise SlmkitError(f"{path} is not a readable YAML config ({problem}): use the config.yaml the run wrote") from None
    if not isinstance(raw, dict):
        raise SlmkitError(f"{path} holds no mapping of keys: it is not an slmkit run config")
    # Read as plain data: a run folder may come from anyone, and a resolver in it (${oc.env:SECRET}) would put this
    # machine's environment into whatever is made from the run, such as an exported model card.
    return literal_text(raw)


def load_run_config(path: str | Path) -> RunConfig:
    config = build_config(RunConfig, run_config_layer(path), check=False)
    # What rebuilds the model is checked; the training choices (objective, optimizer, ...) were checked when the run
    # started, and looking them up would need the code that trained it (a plugin objective) just to load its weights.
    check_values(config.model, prefix="model.")
    for i, head in enumerate(config.heads):
        check_values(head, prefix=f"heads[{i}].")
    return config
