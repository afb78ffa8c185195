"""Training-file parsing, rendering and loss masks."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from tests.workers.lora.conftest import chat_rows, write_jsonl
from workers.lora.config import UserError
from workers.lora.data import load_examples


def _load(tmp_path: pathlib.Path, tokenizer: Any, rows: list[Any], **kw: Any):
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    options = {"max_seq_length": 512, "loss_on": "assistant", "truncation": "truncate"} | kw
    return load_examples(path, tokenizer, **options)


def _loss_text(tokenizer: Any, example) -> str:
    ids = [t for t, m in zip(example.input_ids, example.loss_mask, strict=True) if m]
    return tokenizer.decode(ids)


def test_chat_mask_covers_exactly_the_assistant_turns(tmp_path, tiny_tokenizer):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Name a fruit."},
                {"role": "assistant", "content": "Apple."},
                {"role": "user", "content": "Another one?"},
                {"role": "assistant", "content": "Pear, of course."},
            ]
        }
    ]
    (example,), report = _load(tmp_path, tiny_tokenizer, rows)
    assert _loss_text(tiny_tokenizer, example) == "Apple.<|im_end|>Pear, of course.<|im_end|>"
    full = tiny_tokenizer.decode(example.input_ids)
    assert "Name a fruit." in full and "Another one?" in full
    assert report.loss_tokens == sum(example.loss_mask[1:])
    assert report.tokens == len(example.input_ids)


def test_chat_mask_matches_the_templates_generation_markers(tmp_path, tiny_tokenizer):
    """Cross-check the prefix-rendering mask against transformers' assistant_masks."""
    rows = chat_rows(5)
    examples, _ = _load(tmp_path, tiny_tokenizer, rows)
    for row, example in zip(rows, examples, strict=True):
        reference = tiny_tokenizer.apply_chat_template(
            row["messages"], return_assistant_tokens_mask=True, return_dict=True
        )
        assert reference["input_ids"] == example.input_ids
        assert [bool(m) for m in reference["assistant_masks"]] == example.loss_mask


def test_loss_on_all_covers_every_token(tmp_path, tiny_tokenizer):
    (example,), _ = _load(tmp_path, tiny_tokenizer, chat_rows(1), loss_on="all")
    assert all(example.loss_mask)


def test_prompt_completion_mask(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "Translate cat:", "completion": " chat"}]
    (example,), _ = _load(tmp_path, tiny_tokenizer, rows)
    assert _loss_text(tiny_tokenizer, example) == " chat<|im_end|>"
    assert tiny_tokenizer.decode(example.input_ids).startswith("<|endoftext|>Translate cat:")
    (example_all,), _ = _load(tmp_path, tiny_tokenizer, rows, loss_on="all")
    assert all(example_all.loss_mask)


def test_text_format_trains_on_everything(tmp_path, tiny_tokenizer):
    (example,), _ = _load(tmp_path, tiny_tokenizer, [{"text": "Once upon a time."}])
    assert all(example.loss_mask)
    assert tiny_tokenizer.decode(example.input_ids) == "<|endoftext|>Once upon a time.<|im_end|>"


def test_truncation_counts_and_no_loss_examples_are_reported(tmp_path, tiny_tokenizer):
    long_prompt = {"prompt": "word " * 200, "completion": " end"}
    short = {"prompt": "hi", "completion": " there"}
    examples, report = _load(
        tmp_path, tiny_tokenizer, [short, long_prompt, short], max_seq_length=64
    )
    # the long example's completion is cut away entirely: reported, never trained on
    assert report.truncated == 1
    assert report.no_loss_tokens == [2]
    assert report.examples == 2 and [e.line for e in examples] == [1, 3]


def test_drop_policy_counts_dropped(tmp_path, tiny_tokenizer):
    long_text = {"text": "word " * 200}
    examples, report = _load(
        tmp_path,
        tiny_tokenizer,
        [long_text, {"text": "short"}],
        max_seq_length=64,
        truncation="drop",
    )
    assert report.dropped == 1 and report.truncated == 0
    assert [e.line for e in examples] == [2]


def test_truncated_example_keeps_its_surviving_loss_tokens(tmp_path, tiny_tokenizer):
    row = {"prompt": "short prompt", "completion": " long answer" * 50}
    (example,), report = _load(tmp_path, tiny_tokenizer, [row], max_seq_length=32)
    assert report.truncated == 1 and len(example.input_ids) == 32
    assert example.loss_tokens > 0


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "not_an_object"),
        ('{"foo": 1}', "missing_messages"),
        ('{"messages": [{"content": "x"}]}', "message_missing_key"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "unrecognized_role"),
        ('{"messages": [{"role": "user"}]}', "missing_content"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "no_assistant_message"),
        ('{"text": "   "}', "empty_example"),
        ('{"text": "a", "prompt": "b", "completion": "c"}', "mixed_formats"),
    ],
)
def test_bad_lines_are_reported_with_line_number_and_reason(tmp_path, tiny_tokenizer, line, reason):
    with pytest.raises(UserError) as caught:
        _load(tmp_path, tiny_tokenizer, [{"text": "fine"}, line])
    assert caught.value.details["bad_lines"] == [{"line": 2, "reason": reason}]


def test_mixed_formats_across_lines_is_an_error(tmp_path, tiny_tokenizer):
    with pytest.raises(UserError) as caught:
        _load(tmp_path, tiny_tokenizer, [{"text": "a"}, {"prompt": "b", "completion": "c"}])
    assert caught.value.details["bad_lines"][0]["reason"] == "mixed_formats"
