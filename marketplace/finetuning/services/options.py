"""A new job's training options: hyperparameters and LoRA settings, checked and given defaults."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from marketplace.errors import InvalidInput

DEFAULT_LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"}


def _int_or_auto(value: Any, name: str, *, low: int, high: int, auto: int | None) -> int | None:
    if value in (None, "auto"):
        return auto
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(
            f"hyperparameters.{name} must be 'auto' or an integer from {low} to {high}.",
            param=f"hyperparameters.{name}",
        )
    return value


def normalize_hyperparameters(raw: dict[str, Any] | None) -> dict[str, Any]:
    raw = dict(raw or {})
    known = {"n_epochs", "batch_size", "learning_rate_multiplier", "max_seq_length"}
    unknown = set(raw) - known
    if unknown:
        raise InvalidInput(
            f"Unknown hyperparameter(s): {', '.join(sorted(unknown))}. "
            f"Known: {', '.join(sorted(known))}.",
            param="hyperparameters",
        )
    multiplier = raw.get("learning_rate_multiplier", "auto")
    if multiplier == "auto":
        multiplier = 1.0
    if (
        isinstance(multiplier, bool)
        or not isinstance(multiplier, int | float)
        or not (0 < multiplier <= 100)
    ):
        raise InvalidInput(
            "hyperparameters.learning_rate_multiplier must be 'auto' or a number in (0, 100].",
            param="hyperparameters.learning_rate_multiplier",
        )
    return {
        "n_epochs": _int_or_auto(raw.get("n_epochs"), "n_epochs", low=1, high=50, auto=3),
        "batch_size": _int_or_auto(raw.get("batch_size"), "batch_size", low=1, high=256, auto=8),
        "learning_rate_multiplier": float(multiplier),
        "max_seq_length": _int_or_auto(
            raw.get("max_seq_length"), "max_seq_length", low=16, high=32768, auto=1024
        ),
    }


def normalize_lora(raw: dict[str, Any] | None) -> dict[str, Any]:
    raw = dict(raw or {})
    unknown = set(raw) - {"r", "alpha", "dropout", "target_modules", "use_rslora"}
    if unknown:
        raise InvalidInput(
            f"Unknown LoRA option(s): {', '.join(sorted(unknown))}. "
            "Known: r, alpha, dropout, target_modules, use_rslora.",
            param="lora",
        )
    lora = {**DEFAULT_LORA, **raw}
    r = lora["r"]
    cap = settings.PARTAGE_MAX_ADAPTER_RANK
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= cap:
        raise InvalidInput(f"lora.r must be an integer from 1 to {cap}.", param="lora.r")
    alpha = lora["alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha <= 0:
        raise InvalidInput("lora.alpha must be a positive number.", param="lora.alpha")
    dropout = lora["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise InvalidInput("lora.dropout must be a number in [0, 1).", param="lora.dropout")
    targets = lora["target_modules"]
    if targets != "all-linear" and (
        not isinstance(targets, list)
        or not targets
        or not all(isinstance(t, str) and t for t in targets)
    ):
        raise InvalidInput(
            "lora.target_modules must be 'all-linear' or a list of module names "
            "such as ['q_proj', 'v_proj'].",
            param="lora.target_modules",
        )
    if not isinstance(lora.get("use_rslora", False), bool):
        raise InvalidInput("lora.use_rslora must be true or false.", param="lora.use_rslora")
    return lora
