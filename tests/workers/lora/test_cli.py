"""The core's CLI as a user meets it: --help, local base models, schedules, threads,
checkpoint retention, and rows bounded by max_seq_length (issue 15)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import subprocess
import sys
from typing import Any

import pytest
import torch

from tests.workers.lora.conftest import job_config
from workers import catalog
from workers.executors.base import EXIT_OK, EXIT_USER_ERROR
from workers.lora import trainer as trainer_module
from workers.lora.__main__ import main
from workers.lora.batching import micro_batch_rows
from workers.lora.config import (
    EvalSettings,
    Hyperparameters,
    JobConfig,
    LoraSettings,
    UserError,
    parse_config,
    parse_hyperparameters,
)
from workers.lora.data import Example

REPO = pathlib.Path(__file__).resolve().parents[3]


def _run(tmp_path: pathlib.Path, capsys: Any, config: dict[str, Any], *extra: str):
    path = tmp_path / "job.json"
    path.write_text(json.dumps(config))
    code = main(["--config", str(path), *extra])
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines() if line.strip()]


# --------------------------------------------------------------------------- --help


def test_help_documents_every_job_file_key_with_type_default_and_meaning():
    result = subprocess.run(
        [sys.executable, "-m", "workers.lora", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    sections = [
        ("", JobConfig, None),
        ("hyperparameters.", Hyperparameters, Hyperparameters()),
        ("lora.", LoraSettings, LoraSettings()),
        ("evaluation.", EvalSettings, EvalSettings()),
    ]
    for prefix, cls, defaults in sections:
        for field in dataclasses.fields(cls):
            assert f"  {prefix}{field.name}: {field.type}\n" in text, field.name
            assert field.metadata["help"] in text.replace("\n      ", " "), field.name
            if defaults is not None:
                assert f"(default {json.dumps(getattr(defaults, field.name))})" in text
    assert "--threads" in text and "--resume" in text


# --------------------------------------------------------------------------- schedules


def test_warmup_steps_and_ratio_together_are_refused_naming_the_key():
    with pytest.raises(UserError, match="warmup_steps") as caught:
        parse_hyperparameters({"warmup_steps": 3, "warmup_ratio": 0.1})
    assert caught.value.details["param"] == "warmup_steps"
    with pytest.raises(UserError, match=r"hyperparameters\.warmup_steps") as caught:
        parse_hyperparameters({"warmup_steps": -1})
    assert caught.value.details["param"] == "warmup_steps"
    with pytest.raises(UserError, match=r"hyperparameters\.lr_scheduler.*constant"):
        parse_hyperparameters({"lr_scheduler": "step"})
    hp = parse_hyperparameters({"warmup_steps": 2, "lr_scheduler": "constant"})
    assert (hp.warmup_steps, hp.warmup_ratio, hp.lr_scheduler) == (2, 0.0, "constant")


def test_constant_schedule_with_warmup_steps(tmp_path, capsys, model_cache):
    config = job_config(
        tmp_path,
        hyperparameters={"lr_scheduler": "constant", "warmup_steps": 2, "learning_rate": 1e-3},
    )
    code, events = _run(tmp_path, capsys, config)
    assert code == EXIT_OK
    lrs = [e["learning_rate"] for e in events if e["event"] == "progress"]
    assert len(lrs) == 8
    assert lrs[:3] == pytest.approx([0.0, 5e-4, 1e-3])
    assert lrs[3:] == pytest.approx([1e-3] * 5)  # flat after warmup, no decay
    manifest = json.loads((tmp_path / "out" / "adapter" / "manifest.json").read_text())
    assert manifest["hyperparameters"]["warmup_steps"] == 2
    assert manifest["hyperparameters"]["lr_scheduler"] == "constant"


def test_warmup_steps_beyond_the_run_is_a_user_error(tmp_path, capsys, model_cache):
    config = job_config(tmp_path, hyperparameters={"warmup_steps": 9})  # the run has 8 steps
    code, events = _run(tmp_path, capsys, config)
    assert code == EXIT_USER_ERROR
    assert events[-1]["param"] == "warmup_steps"
    assert "exceeds the run's 8 steps" in events[-1]["message"]


# --------------------------------------------------------------------------- threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("in_file", "flag", "expected"), [(1, None, 1), (2, "1", 1)])
def test_thread_count_is_applied_before_training(
    tmp_path, capsys, model_cache, monkeypatch, restore_threads, in_file, flag, expected
):
    seen: list[int] = []
    real_step = trainer_module.Trainer.train_step

    def spy(self: Any, step: int) -> dict[str, float]:
        seen.append(torch.get_num_threads())
        return real_step(self, step)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", spy)
    torch.set_num_threads(2)
    config = job_config(tmp_path, hyperparameters={"max_steps": 2}, num_threads=in_file)
    code, _ = _run(tmp_path, capsys, config, *(["--threads", flag] if flag else []))
    assert code == EXIT_OK
    assert seen == [expected, expected]


def test_bad_thread_count_is_refused(tmp_path, capsys):
    with pytest.raises(UserError, match="num_threads") as caught:
        parse_config(job_config(tmp_path, num_threads=0))
    assert caught.value.details["param"] == "num_threads"
    with pytest.raises(SystemExit):
        main(["--config", "x.json", "--threads", "0"])


# --------------------------------------------------------------------------- retention


def test_only_the_newest_checkpoints_are_kept(tmp_path, capsys, model_cache):
    config = job_config(
        tmp_path, hyperparameters={"checkpoint_every_steps": 1, "keep_checkpoints": 2}
    )
    code, events = _run(tmp_path, capsys, config)
    assert code == EXIT_OK
    written = [e["step"] for e in events if e["event"] == "checkpoint"]
    assert written == [1, 2, 3, 4, 5, 6, 7]
    left = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert left == ["step-000006", "step-000007"]


def test_a_failed_checkpoint_leaves_the_older_ones(tmp_path, capsys, model_cache, monkeypatch):
    from workers.lora import checkpoint as ckpt

    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # the third checkpoint's state
            raise OSError("disk full")
        real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    config = job_config(
        tmp_path, hyperparameters={"checkpoint_every_steps": 1, "keep_checkpoints": 1}
    )
    _run(tmp_path, capsys, config)
    done = sorted(p.name for p in (tmp_path / "out" / "checkpoints").glob("step-??????"))
    assert done == ["step-000002"]  # the newest complete one survived the failed write


def test_keep_checkpoints_must_be_positive():
    with pytest.raises(UserError, match=r"hyperparameters\.keep_checkpoints"):
        parse_hyperparameters({"keep_checkpoints": 0})


# --------------------------------------------------------------------------- base_model


def test_a_local_model_directory_trains_and_the_manifest_names_it(
    tmp_path, capsys, model_cache, tiny_llama_dir
):
    local = tmp_path / "models" / "my-llama"
    shutil.copytree(tiny_llama_dir, local)
    config = job_config(tmp_path, base_model=str(local), hyperparameters={"max_steps": 2})
    code, events = _run(tmp_path, capsys, config)
    assert code == EXIT_OK, events[-1]
    adapter = tmp_path / "out" / "adapter"
    manifest = json.loads((adapter / "manifest.json").read_text())
    assert manifest["base_model"] == {
        "id": str(local.resolve()),
        "source": "local_dir",
        "path": str(local.resolve()),
        "weights_sha256": catalog.weights_sha256(local),
    }
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(local.resolve())


def test_a_catalog_id_still_works_and_its_manifest_names_the_cache_dir(
    tmp_path, capsys, model_cache, tiny_llama_dir
):
    config = job_config(tmp_path, hyperparameters={"max_steps": 2})
    code, events = _run(tmp_path, capsys, config)
    assert code == EXIT_OK, events[-1]
    manifest = json.loads((tmp_path / "out" / "adapter" / "manifest.json").read_text())
    assert manifest["base_model"]["id"] == "partage/tiny-llama"
    assert manifest["base_model"]["source"] == "catalog"
    assert manifest["base_model"]["path"] == str(tiny_llama_dir.resolve())


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "neither a catalog id"),
        ("empty", "has no config.json"),
        ("no_weights", "has no *.safetensors weights"),
    ],
)
def test_a_bad_local_model_directory_is_a_user_error(tmp_path, capsys, layout, message):
    local = tmp_path / "model"
    if layout != "missing":
        local.mkdir()
    if layout == "no_weights":
        (local / "config.json").write_text("{}")
    code, events = _run(tmp_path, capsys, job_config(tmp_path, base_model=str(local)))
    assert code == EXIT_USER_ERROR
    assert events[-1]["param"] == "base_model" and message in events[-1]["message"]


def test_a_foreign_dir_at_the_cache_path_is_not_trusted(tmp_path):
    reference = catalog.resolve("partage/tiny-llama", cache_dir=tmp_path / "ref")
    cache = tmp_path / "cache"
    squatter = cache / "partage--tiny-llama"
    squatter.mkdir(parents=True)
    (squatter / "config.json").write_text("{}")
    path = catalog.resolve("partage/tiny-llama", cache_dir=cache)
    assert path == squatter
    assert catalog.weights_sha256(path) == catalog.weights_sha256(reference)
    assert catalog.cached_problem(path, "partage/tiny-llama") is None


def test_tampered_cached_weights_are_rebuilt(tmp_path):
    path = catalog.resolve("partage/tiny-llama", cache_dir=tmp_path)
    good = catalog.weights_sha256(path)
    other = catalog.build_tiny_model(tmp_path / "other", arch="llama", seed=5)
    shutil.copy(other / "model.safetensors", path / "model.safetensors")
    assert "do not match" in (catalog.cached_problem(path, "partage/tiny-llama") or "")
    assert catalog.resolve("partage/tiny-llama", cache_dir=tmp_path) == path
    assert catalog.weights_sha256(path) == good
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


# --------------------------------------------------------------------------- bounded rows


def _example(n: int) -> Example:
    return Example(line=n, input_ids=list(range(1, n + 1)), loss_mask=[True] * n)


@pytest.mark.parametrize("varlen", [True, False])
def test_every_row_holds_at_most_max_seq_length_tokens(varlen):
    examples = [_example(n) for n in (60, 50, 40, 30, 20, 10, 64, 5)]
    batches = micro_batch_rows(examples, packing=True, capacity=64, pad_id=0, varlen=varlen)
    assert max(b.input_ids.shape[1] for b in batches) <= 64
    assert sum(b.tokens for b in batches) == sum(len(e.input_ids) for e in examples)
    assert sum(b.loss_tokens for b in batches) == sum(e.loss_tokens for e in examples)
    if varlen:
        assert all(b.input_ids.shape[0] == 1 and b.bounds for b in batches)
        seen = sorted(t for b in batches for t in b.input_ids[0].tolist())
        assert seen == sorted(t for e in examples for t in e.input_ids)


def test_training_never_runs_a_row_longer_than_max_seq_length(
    tmp_path, capsys, model_cache, monkeypatch
):
    lengths: list[tuple[int, int]] = []  # (rows, row length) of every forward
    real_loss_sum = trainer_module.loss_sum

    def spy(model: Any, batch: Any) -> torch.Tensor:
        lengths.append(tuple(batch.input_ids.shape))
        return real_loss_sum(model, batch)

    monkeypatch.setattr(trainer_module, "loss_sum", spy)
    config = job_config(tmp_path, hyperparameters={"max_seq_length": 64, "batch_size": 8})
    code, events = _run(tmp_path, capsys, config)
    assert code == EXIT_OK
    report = events[0]
    assert report["event"] == "data_report" and report["tokens"] > 2 * 64  # several rows' worth
    assert lengths and max(length for _, length in lengths) <= 64
