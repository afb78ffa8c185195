"""The evaluation every run ends with: eval.json, base vs adapter answers on held-out prompts."""

from __future__ import annotations

import json
import pathlib

from tests.workers.lora.conftest import chat_rows, job_config, write_jsonl
from tests.workers.lora.test_train import run_inprocess
from workers.executors.base import EXIT_OK
from workers.lora.evaluation import holdout_lines


def _eval_of(events: list[dict]) -> dict:
    done = events[-1]
    assert done["event"] == "completed"
    return json.loads(pathlib.Path(done["eval_file"]).read_text())


def test_without_a_validation_file_a_seeded_slice_is_held_out_and_answered(
    tmp_path, capsys, tiny_llama_dir
):
    config = job_config(
        tmp_path,
        hyperparameters={"learning_rate": 1e-2, "n_epochs": 3},
        evaluation={"max_samples": 2, "max_new_tokens": 8},
    )
    config["training_file"] = str(write_jsonl(tmp_path / "train.jsonl", chat_rows(20)))
    code, events = run_inprocess(tmp_path, capsys, config)
    assert code == EXIT_OK
    report = events[0]
    held = report["held_out_for_eval"]
    assert len(held) == 2 and held == sorted(
        holdout_lines(list(range(1, 21)), seed=7, max_samples=2)
    )
    # 18 examples trained on, batch 4: 5 micro-batches per epoch, 3 epochs
    assert [e for e in events if e["event"] == "progress"][-1]["total_steps"] == 15
    result = _eval_of(events)
    assert result["source"] == "training_holdout" and result["held_out"] is True
    assert [s["line"] for s in result["samples"]] == held
    rows = chat_rows(20)
    for sample in result["samples"]:
        expected = rows[sample["line"] - 1]["messages"]
        assert sample["reference"] == expected[-1]["content"]
        assert sample["prompt"] == expected[1]["content"]
        assert sample["messages"] == expected[:2]
        assert isinstance(sample["base_answer"], str) and isinstance(sample["adapter_answer"], str)
        assert sample["adapter_loss"] < sample["base_loss"]  # it learned the task's shape
    assert result["decoding"] == {
        "greedy": True,
        "temperature": 0.0,
        "max_new_tokens": 8,
        "seed": 7,
    }
    assert any(s["base_answer"] != s["adapter_answer"] for s in result["samples"])


def test_with_a_validation_file_its_prompts_and_loss_are_used(tmp_path, capsys, tiny_llama_dir):
    config = job_config(tmp_path, evaluation={"max_samples": 3, "max_new_tokens": 4})
    config["validation_file"] = str(write_jsonl(tmp_path / "valid.jsonl", chat_rows(5)))
    code, events = run_inprocess(tmp_path, capsys, config)
    assert code == EXIT_OK
    assert events[0]["held_out_for_eval"] == []
    result = _eval_of(events)
    assert result["source"] == "validation_file" and result["file"] == "valid.jsonl"
    assert len(result["samples"]) == 3
    assert result["validation_loss"] == events[-1]["valid_loss"]
    assert result["job_id"] == "ftjob-test" and result["base_model"] == "partage/tiny-llama"


def test_a_small_training_file_is_not_starved_and_says_so(tmp_path, capsys, tiny_llama_dir):
    config = job_config(tmp_path, evaluation={"max_samples": 2, "max_new_tokens": 2})
    config["training_file"] = str(write_jsonl(tmp_path / "train.jsonl", chat_rows(6)))
    code, events = run_inprocess(tmp_path, capsys, config)
    assert code == EXIT_OK
    assert events[0]["held_out_for_eval"] == [] and events[0]["examples"] == 6
    result = _eval_of(events)
    assert result["source"] == "training_file" and result["held_out"] is False
    assert len(result["samples"]) == 2


def test_prompt_completion_and_text_files_are_split_into_prompt_and_reference(
    tmp_path, capsys, tiny_llama_dir
):
    config = job_config(tmp_path, evaluation={"max_samples": 1, "max_new_tokens": 2})
    rows = [{"prompt": f"Say {i}:", "completion": f" {i} {i}"} for i in range(4)]
    config["training_file"] = str(write_jsonl(tmp_path / "train.jsonl", rows))
    code, events = run_inprocess(tmp_path, capsys, config)
    assert code == EXIT_OK
    [sample] = _eval_of(events)["samples"]
    assert sample["prompt"] == rows[sample["line"] - 1]["prompt"]
    assert sample["reference"] == rows[sample["line"] - 1]["completion"]
    assert sample["messages"] is None
