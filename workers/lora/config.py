"""Parse and validate job.json into typed settings. Every problem is a UserError naming its key."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any

from workers.lora.evaluation_settings import EvalSettings


class UserError(Exception):
    """Bad data or settings supplied by the user: exit code 3."""

    def __init__(self, message: str, *, code: str = "user_error", **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details


def _field(default: Any, help: str) -> Any:
    """A dataclass field with its `--help` text (see `job_file_help`)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
    n_epochs: int = _field(3, "passes over the training file")
    batch_size: int = _field(8, "examples per micro-batch")
    learning_rate: float = _field(2e-4, "peak learning rate of AdamW, in (0, 1]")
    max_seq_length: int = _field(
        512,
        "tokens per example (longer ones are cut or dropped, see truncation) and per packed "
        "row: it bounds peak memory",
    )
    warmup_ratio: float = _field(
        0.03, "linear warmup over ceil(warmup_ratio x total_steps) steps, in [0, 1]"
    )
    warmup_steps: int | None = _field(
        None, "linear warmup over this many steps (>= 0); replaces warmup_ratio (not both)"
    )
    lr_scheduler: str = _field(
        "cosine", "after warmup: cosine or linear decay to 0, or constant (flat at learning_rate)"
    )
    gradient_accumulation_steps: int = _field(1, "micro-batches per optimizer step")
    max_grad_norm: float = _field(1.0, "gradient clipping norm (0 disables clipping)")
    weight_decay: float = _field(0.0, "AdamW weight decay")
    packing: bool = _field(True, "pack several examples per row (attention never crosses them)")
    loss_on: str = _field("assistant", "assistant (assistant turns only) or all (every token)")
    truncation: str = _field("truncate", "examples over max_seq_length: truncate or drop")
    gradient_checkpointing: bool = _field(
        False, "recompute activations in the backward pass (less memory, slower)"
    )
    checkpoint_every_steps: int = _field(50, "write a resumable checkpoint every N steps")
    keep_checkpoints: int = _field(
        3, "keep the newest N checkpoints; older ones are deleted once a newer one is written"
    )
    max_steps: int | None = _field(None, "cap on the total number of optimizer steps")


LR_SCHEDULERS = ("cosine", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    r: int = _field(8, "LoRA rank, at most max_rank")
    alpha: int = _field(16, "LoRA alpha (integer); the update is scaled by alpha / r")
    dropout: float = _field(0.05, "dropout on the LoRA input, in [0, 0.9]")
    target_modules: str | tuple[str, ...] = _field(
        "all-linear",
        '"all-linear" (every linear layer but the output head) or a list of module leaf names',
    )
    use_rslora: bool = _field(False, "rank-stabilised scaling alpha / sqrt(r)")


@dataclasses.dataclass(frozen=True)
class JobConfig:
    job_id: str = dataclasses.field(metadata={"help": "required; the job's id, echoed in outputs"})
    base_model: str = dataclasses.field(
        metadata={
            "help": "required; a catalog id (python -m workers.catalog list) or a local "
            "directory holding config.json, *.safetensors weights and a tokenizer"
        }
    )
    training_file: pathlib.Path = dataclasses.field(
        metadata={"help": "required; JSONL training file (chat, prompt/completion or text)"}
    )
    validation_file: pathlib.Path | None = dataclasses.field(
        metadata={"help": "optional JSONL file for valid_loss and the evaluation (default null)"}
    )
    output_dir: pathlib.Path = dataclasses.field(
        metadata={"help": "required; checkpoints/, adapter/ and eval.json are written here"}
    )
    seed: int = dataclasses.field(metadata={"help": "data order and LoRA init (default 42)"})
    hyperparameters: Hyperparameters = dataclasses.field(
        metadata={"help": "training settings, below"}
    )
    lora: LoraSettings = dataclasses.field(metadata={"help": "adapter settings, below"})
    max_rank: int = dataclasses.field(metadata={"help": "upper bound on lora.r (default 64)"})
    evaluation: EvalSettings = dataclasses.field(
        default_factory=EvalSettings, metadata={"help": "eval.json settings, below"}
    )
    num_threads: int | None = dataclasses.field(
        default=None,
        metadata={
            "help": "CPU threads for torch (torch.set_num_threads) before training; "
            "null keeps torch's default; --threads overrides it"
        },
    )

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "base_model": self.base_model,
            "training_file": str(self.training_file),
            "validation_file": str(self.validation_file) if self.validation_file else None,
            "output_dir": str(self.output_dir),
            "seed": self.seed,
            "hyperparameters": dataclasses.asdict(self.hyperparameters),
            "lora": {
                **dataclasses.asdict(self.lora),
                "target_modules": (
                    self.lora.target_modules
                    if isinstance(self.lora.target_modules, str)
                    else list(self.lora.target_modules)
                ),
            },
            "max_rank": self.max_rank,
            "evaluation": dataclasses.asdict(self.evaluation),
            "num_threads": self.num_threads,
        }


_TOP_KEYS = {
    "job_id",
    "base_model",
    "training_file",
    "validation_file",
    "output_dir",
    "seed",
    "hyperparameters",
    "lora",
    "max_rank",
    "evaluation",
    "num_threads",
}


def _int(section: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{section}{key} must be an integer >= {minimum}, got {value!r}", param=key)
    return value


def _float(section: str, key: str, value: Any, low: float, high: float, *, open_low: bool) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if open_low else value >= low) and value <= high
    if not ok:
        bracket = "(" if open_low else "["
        raise UserError(
            f"{section}{key} must be a number in {bracket}{low}, {high}], got {value!r}", param=key
        )
    return float(value)


def _bool(section: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{section}{key} must be true or false, got {value!r}", param=key)
    return value


def _choice(section: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise UserError(f"{section}{key} must be one of {list(choices)}, got {value!r}", param=key)
    return str(value)


def _unknown(section: str, given: dict[str, Any], known: set[str]) -> None:
    extra = sorted(set(given) - known)
    if extra:
        raise UserError(
            f"unknown key {section}{extra[0]!r}; allowed: {sorted(known)}", param=extra[0]
        )


def parse_hyperparameters(raw: Any) -> Hyperparameters:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError("hyperparameters must be an object", param="hyperparameters")
    sec = "hyperparameters."
    fields = {f.name for f in dataclasses.fields(Hyperparameters)}
    _unknown(sec, raw, fields)
    d = Hyperparameters()
    v = {k: raw.get(k, getattr(d, k)) for k in fields}
    max_steps = v["max_steps"]
    warmup_steps = v["warmup_steps"]
    if warmup_steps is not None:
        warmup_steps = _int(sec, "warmup_steps", warmup_steps, 0)
        if "warmup_ratio" in raw:
            raise UserError(
                "hyperparameters.warmup_steps and hyperparameters.warmup_ratio are both set; "
                "give one of them",
                param="warmup_steps",
            )
        v["warmup_ratio"] = 0.0  # the manifest then names the one warmup that applied
    return Hyperparameters(
        n_epochs=_int(sec, "n_epochs", v["n_epochs"], 1),
        batch_size=_int(sec, "batch_size", v["batch_size"], 1),
        learning_rate=_float(sec, "learning_rate", v["learning_rate"], 0.0, 1.0, open_low=True),
        max_seq_length=_int(sec, "max_seq_length", v["max_seq_length"], 8),
        warmup_ratio=_float(sec, "warmup_ratio", v["warmup_ratio"], 0.0, 1.0, open_low=False),
        warmup_steps=warmup_steps,
        lr_scheduler=_choice(sec, "lr_scheduler", v["lr_scheduler"], LR_SCHEDULERS),
        gradient_accumulation_steps=_int(
            sec, "gradient_accumulation_steps", v["gradient_accumulation_steps"], 1
        ),
        max_grad_norm=_float(sec, "max_grad_norm", v["max_grad_norm"], 0.0, 1e6, open_low=False),
        weight_decay=_float(sec, "weight_decay", v["weight_decay"], 0.0, 10.0, open_low=False),
        packing=_bool(sec, "packing", v["packing"]),
        loss_on=_choice(sec, "loss_on", v["loss_on"], ("assistant", "all")),
        truncation=_choice(sec, "truncation", v["truncation"], ("truncate", "drop")),
        gradient_checkpointing=_bool(sec, "gradient_checkpointing", v["gradient_checkpointing"]),
        checkpoint_every_steps=_int(sec, "checkpoint_every_steps", v["checkpoint_every_steps"], 1),
        keep_checkpoints=_int(sec, "keep_checkpoints", v["keep_checkpoints"], 1),
        max_steps=None if max_steps is None else _int(sec, "max_steps", max_steps, 1),
    )


def parse_lora(raw: Any, max_rank: int) -> LoraSettings:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError("lora must be an object", param="lora")
    sec = "lora."
    fields = {f.name for f in dataclasses.fields(LoraSettings)}
    _unknown(sec, raw, fields)
    d = LoraSettings()
    v = {k: raw.get(k, getattr(d, k)) for k in fields}
    r = _int(sec, "r", v["r"], 1)
    if r > max_rank:
        raise UserError(f"lora.r={r} exceeds max_rank={max_rank}", param="r")
    targets = v["target_modules"]
    if isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets):
        target_modules: str | tuple[str, ...] = tuple(targets)
    elif targets == "all-linear":
        target_modules = "all-linear"
    else:
        raise UserError(
            'lora.target_modules must be "all-linear" or a non-empty list of module names',
            param="target_modules",
        )
    return LoraSettings(
        r=r,
        alpha=_int(sec, "alpha", v["alpha"], 1),
        dropout=_float(sec, "dropout", v["dropout"], 0.0, 0.9, open_low=False),
        target_modules=target_modules,
        use_rslora=_bool(sec, "use_rslora", v["use_rslora"]),
    )


def parse_evaluation(raw: Any) -> EvalSettings:
    if raw is None:
        return EvalSettings()
    if not isinstance(raw, dict):
        raise UserError("evaluation must be an object", param="evaluation")
    sec = "evaluation."
    _unknown(sec, raw, {f.name for f in dataclasses.fields(EvalSettings)})
    d = EvalSettings()
    return EvalSettings(
        max_samples=_int(sec, "max_samples", raw.get("max_samples", d.max_samples), 0),
        max_new_tokens=_int(sec, "max_new_tokens", raw.get("max_new_tokens", d.max_new_tokens), 1),
    )


def _path(key: str, value: Any, *, must_exist: bool) -> pathlib.Path:
    if not isinstance(value, str) or not value:
        raise UserError(f"{key} must be a path string", param=key)
    path = pathlib.Path(value)
    if must_exist and not path.is_file():
        raise UserError(f"{key} {value!r} does not exist", param=key)
    return path


def is_local_model(base_model: str) -> bool:
    """A base_model that is not a catalog id names a local model directory."""
    from workers import catalog

    return not any(entry.id == base_model for entry in catalog.CATALOG)


def _base_model(value: str) -> str:
    """A catalog id as is; a local directory checked (config.json + safetensors weights)."""
    if not value:
        raise UserError("base_model must not be empty", param="base_model")
    if not is_local_model(value):
        return value
    from workers import catalog

    path = pathlib.Path(value).expanduser()
    if not path.is_dir():
        known = ", ".join(e.id for e in catalog.CATALOG)
        raise UserError(
            f"base_model {value!r} is neither a catalog id ({known}) nor an existing directory",
            param="base_model",
        )
    if not (path / "config.json").is_file():
        raise UserError(
            f"base_model directory {value!r} has no config.json (a Hugging Face model directory "
            "is expected)",
            param="base_model",
        )
    if not any(path.glob("*.safetensors")):
        raise UserError(
            f"base_model directory {value!r} has no *.safetensors weights (convert the weights "
            "with save_pretrained(safe_serialization=True))",
            param="base_model",
        )
    return value


def job_file_help() -> str:
    """Every job.json key with its type, default and meaning, read from the dataclasses above
    (a field without help text is a bug: this raises, and a test runs it)."""

    def lines(cls: type, prefix: str, defaults: Any) -> list[str]:
        out = []
        for field in dataclasses.fields(cls):
            text = field.metadata.get("help")
            if not text:
                raise RuntimeError(f"{cls.__name__}.{field.name} has no help text")
            if defaults is not None:
                default = getattr(defaults, field.name)
                text = f"{text} (default {json.dumps(default)})"
            out.append(f"  {prefix}{field.name}: {field.type}\n      {text}")
        return out

    parts = ["job.json keys (a JSON object; unknown keys are refused):"]
    parts += lines(JobConfig, "", None)
    parts += ["", "hyperparameters (every key optional):"]
    parts += lines(Hyperparameters, "hyperparameters.", Hyperparameters())
    parts += ["", "lora (every key optional):"]
    parts += lines(LoraSettings, "lora.", LoraSettings())
    parts += ["", "evaluation (every key optional):"]
    parts += lines(EvalSettings, "evaluation.", EvalSettings())
    return "\n".join(parts)


def parse_config(raw: Any) -> JobConfig:
    if not isinstance(raw, dict):
        raise UserError("the job config must be a JSON object")
    _unknown("", raw, _TOP_KEYS)
    for key in ("job_id", "base_model", "training_file", "output_dir"):
        if key not in raw:
            raise UserError(f"missing required key {key!r}", param=key)
    if not isinstance(raw["job_id"], str) or not isinstance(raw["base_model"], str):
        raise UserError("job_id and base_model must be strings", param="base_model")
    max_rank = _int("", "max_rank", raw.get("max_rank", 64), 1)
    seed = _int("", "seed", raw.get("seed", 42) if raw.get("seed") is not None else 42, 0)
    validation = raw.get("validation_file")
    threads = raw.get("num_threads")
    return JobConfig(
        job_id=raw["job_id"],
        base_model=_base_model(raw["base_model"]),
        training_file=_path("training_file", raw["training_file"], must_exist=True),
        validation_file=None
        if validation is None
        else _path("validation_file", validation, must_exist=True),
        output_dir=_path("output_dir", raw["output_dir"], must_exist=False),
        seed=seed,
        hyperparameters=parse_hyperparameters(raw.get("hyperparameters")),
        lora=parse_lora(raw.get("lora"), max_rank),
        max_rank=max_rank,
        evaluation=parse_evaluation(raw.get("evaluation")),
        num_threads=None if threads is None else _int("", "num_threads", threads, 1),
    )


def load_config(path: str | pathlib.Path) -> JobConfig:
    try:
        raw = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise UserError(f"config file {str(path)!r} not found") from e
    except json.JSONDecodeError as e:
        raise UserError(f"config file is not valid JSON: {e}") from e
    return parse_config(raw)
