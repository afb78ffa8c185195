"""job.json validation: every bad value names its key."""

from __future__ import annotations

import pytest

from tests.workers.lora.conftest import job_config
from workers.lora.config import UserError, parse_config


def test_defaults_fill_missing_hyperparameters(tmp_path):
    raw = job_config(tmp_path)
    raw["hyperparameters"] = {}
    config = parse_config(raw)
    assert config.hyperparameters.n_epochs == 3
    assert config.hyperparameters.lr_scheduler == "cosine"
    assert config.hyperparameters.packing is True


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("hyperparameters", "n_epochs", 0),
        ("hyperparameters", "learning_rate", -1.0),
        ("hyperparameters", "lr_scheduler", "step"),
        ("hyperparameters", "loss_on", "prompt"),
        ("hyperparameters", "packing", "yes"),
        ("hyperparameters", "batch_sise", 8),
        ("lora", "r", 0),
        ("lora", "target_modules", "everything"),
        ("lora", "rank", 8),
    ],
)
def test_bad_values_name_their_key(tmp_path, section, key, value):
    raw = job_config(tmp_path)
    raw[section][key] = value
    with pytest.raises(UserError) as caught:
        parse_config(raw)
    assert key in caught.value.message


def test_rank_above_max_rank_is_a_user_error(tmp_path):
    raw = job_config(tmp_path, max_rank=16)
    raw["lora"]["r"] = 32
    with pytest.raises(UserError, match="max_rank"):
        parse_config(raw)


def test_missing_training_file_is_a_user_error(tmp_path):
    raw = job_config(tmp_path)
    raw["training_file"] = str(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="training_file"):
        parse_config(raw)
