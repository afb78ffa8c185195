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


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
    n_epochs: int = 3
    batch_size: int = 8
    learning_rate: float = 2e-4
    max_seq_length: int = 512
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    packing: bool = True
    loss_on: str = "assistant"
    truncation: str = "truncate"
    gradient_checkpointing: bool = False
    checkpoint_every_steps: int = 50
    max_steps: int | None = None


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"
    use_rslora: bool = False


@dataclasses.dataclass(frozen=True)
class JobConfig:
    job_id: str
    base_model: str
    training_file: pathlib.Path
    validation_file: pathlib.Path | None
    output_dir: pathlib.Path
    seed: int
    hyperparameters: Hyperparameters
    lora: LoraSettings
    max_rank: int
    evaluation: EvalSettings = dataclasses.field(default_factory=EvalSettings)

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
    return Hyperparameters(
        n_epochs=_int(sec, "n_epochs", v["n_epochs"], 1),
        batch_size=_int(sec, "batch_size", v["batch_size"], 1),
        learning_rate=_float(sec, "learning_rate", v["learning_rate"], 0.0, 1.0, open_low=True),
        max_seq_length=_int(sec, "max_seq_length", v["max_seq_length"], 8),
        warmup_ratio=_float(sec, "warmup_ratio", v["warmup_ratio"], 0.0, 1.0, open_low=False),
        lr_scheduler=_choice(sec, "lr_scheduler", v["lr_scheduler"], ("cosine", "linear")),
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
    return JobConfig(
        job_id=raw["job_id"],
        base_model=raw["base_model"],
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
    )


def load_config(path: str | pathlib.Path) -> JobConfig:
    try:
        raw = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise UserError(f"config file {str(path)!r} not found") from e
    except json.JSONDecodeError as e:
        raise UserError(f"config file is not valid JSON: {e}") from e
    return parse_config(raw)
