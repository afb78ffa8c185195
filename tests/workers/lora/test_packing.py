"""Packed rows never mix examples: same per-example loss as running each example alone."""

from __future__ import annotations

import pytest
import torch

from tests.workers.lora.conftest import chat_rows, write_jsonl
from workers.lora.batching import Schedule, collate, pack_rows
from workers.lora.config import LoraSettings
from workers.lora.data import load_examples
from workers.lora.modeling import load_base, loss_sum, supports_varlen, wrap_lora


def _examples(tmp_path, tokenizer, count: int) -> list:
    examples, _ = load_examples(
        write_jsonl(tmp_path / "d.jsonl", chat_rows(count)),
        tokenizer,
        max_seq_length=512,
        loss_on="assistant",
        truncation="truncate",
    )
    return examples


def _lora(base, *, active: bool = True):
    """LoRA on `base` without dropout; `active` gives lora_B non-zero weights so the checks
    cover the adapter path as well as the base model."""
    model = wrap_lora(base, LoraSettings(dropout=0.0), "x")
    if active:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.02)
    return model


@pytest.mark.parametrize(
    ("arch", "varlen"),
    [("llama", True), ("llama", False), ("mistral", True), ("qwen2", True), ("gpt2", True)],
)
def test_packed_batch_gives_each_example_its_solo_loss(tmp_path, model_cache, arch, varlen):
    from transformers import AutoTokenizer

    from workers.catalog import resolve

    model_dir = resolve(f"partage/tiny-{arch}")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    examples = _examples(tmp_path, tokenizer, 6)
    torch.manual_seed(0)
    base = load_base(model_dir, torch.device("cpu"), False, max_seq_length=512)
    assert supports_varlen(base)  # every tiny architecture takes the varlen path
    model = _lora(base)
    model.eval()
    with torch.no_grad():
        solo = [
            float(loss_sum(model, collate([e], packing=False, capacity=512, pad_id=0)))
            for e in examples
        ]
        packed = collate(examples, packing=True, capacity=512, pad_id=0, varlen=varlen)
        assert packed.input_ids.shape[0] == 1  # all six really share one row
        assert packed.input_ids.shape[1] == sum(len(e.input_ids) for e in examples)  # no padding
        total = float(loss_sum(model, packed))
        # the same examples padded into one batch also agree (no padding leak)
        padded = float(loss_sum(model, collate(examples, packing=False, capacity=512, pad_id=0)))
        # and packing must actually matter: without restarting positions the loss differs
        broken = collate(examples, packing=True, capacity=512, pad_id=0, varlen=varlen)
        broken.position_ids = torch.arange(broken.input_ids.shape[1]).unsqueeze(0)
        broken.bounds = None
        leaked = float(loss_sum(model, broken))
    assert total == pytest.approx(sum(solo), rel=1e-5)
    assert padded == pytest.approx(sum(solo), rel=1e-5)
    assert abs(leaked - sum(solo)) > 1e-3


def test_varlen_gradients_match_solo_examples(
    tmp_path, model_cache, tiny_llama_dir, tiny_tokenizer
):
    """Backward through the varlen path gives the same LoRA gradients as examples run alone."""
    examples = _examples(tmp_path, tiny_tokenizer, 4)
    torch.manual_seed(0)
    model = _lora(load_base(tiny_llama_dir, torch.device("cpu"), False))
    params = [p for p in model.parameters() if p.requires_grad]
    loss_sum(model, collate(examples, packing=True, capacity=512, pad_id=0, varlen=True)).backward()
    packed_grads = [p.grad.clone() for p in params]
    model.zero_grad()
    for example in examples:
        loss_sum(model, collate([example], packing=False, capacity=512, pad_id=0)).backward()
    for packed, solo in zip(packed_grads, (p.grad for p in params), strict=True):
        assert torch.allclose(packed, solo, atol=1e-6, rtol=1e-4)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(
    tmp_path, model_cache, tiny_llama_dir, tiny_tokenizer
):
    examples = _examples(tmp_path, tiny_tokenizer, 4)
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = _lora(load_base(tiny_llama_dir, torch.device("cpu"), checkpointing), active=False)
        model.train()
        loss = loss_sum(model, collate(examples, packing=True, capacity=512, pad_id=0, varlen=True))
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results.append((float(loss), grads))
    assert model.get_base_model().is_gradient_checkpointing
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for plain, recomputed in zip(results[0][1], results[1][1], strict=True):
        assert torch.allclose(plain, recomputed, atol=1e-7)


def test_per_example_losses_in_a_packed_row_match_solo(
    tmp_path, model_cache, tiny_llama_dir, tiny_tokenizer
):
    examples = _examples(tmp_path, tiny_tokenizer, 3)
    torch.manual_seed(0)
    model = _lora(load_base(tiny_llama_dir, torch.device("cpu"), False), active=False)
    model.eval()
    with torch.no_grad():
        packed = collate(examples, packing=True, capacity=512, pad_id=0)
        logits = model(input_ids=packed.input_ids, position_ids=packed.position_ids).logits[0]
        (row,) = pack_rows([len(e.input_ids) for e in examples], 512)
        offset = 0
        for example in (examples[i] for i in row):
            n = len(example.input_ids)
            alone = model(input_ids=torch.tensor([example.input_ids])).logits[0]
            assert torch.allclose(logits[offset : offset + n], alone, atol=1e-5)
            offset += n


def test_pack_rows_respects_capacity_and_keeps_every_example():
    lengths = [5, 9, 3, 7, 2, 8, 1]
    rows = pack_rows(lengths, capacity=10)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 4  # 35 tokens in rows of 10: first-fit decreasing is optimal here


def test_schedule_covers_each_example_once_per_epoch():
    schedule = Schedule(n_examples=10, batch_size=3, grad_accum=2, n_epochs=2, seed=1)
    assert schedule.steps_per_epoch == 2 and schedule.total_steps == 4
    for epoch in range(2):
        seen = [
            i for s in range(2) for mb in schedule.step_micro_batches(epoch * 2 + s) for i in mb
        ]
        assert sorted(seen) == list(range(10))
    assert schedule.epoch_order(0) != schedule.epoch_order(1)


def test_varlen_is_used_only_where_it_is_exact(tiny_llama_dir):
    from transformers import AutoConfig, MistralConfig

    from workers.lora.attention import IMPLEMENTATION
    from workers.lora.modeling import attention_implementation

    assert (
        attention_implementation(AutoConfig.from_pretrained(tiny_llama_dir), 512) == IMPLEMENTATION
    )
    windowed = MistralConfig(sliding_window=256)
    # a sliding window shorter than the sequence needs the masked SDPA path
    assert attention_implementation(windowed, 512) == "sdpa"
    assert attention_implementation(windowed, 256) == IMPLEMENTATION
    assert attention_implementation(AutoConfig.for_model("bloom"), 512) == "sdpa"
