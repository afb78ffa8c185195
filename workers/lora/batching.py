"""Data order, micro-batches and collation (padded rows, or packed rows without cross-talk).

Packed rows concatenate whole examples and position ids restart at 0 for each one. Every row
holds at most `capacity` (= max_seq_length) tokens, so peak memory is bounded by the job's
settings, not by how long the examples of a micro-batch happen to be together. With the varlen
attention (`workers.lora.attention`) a micro-batch is one or more unpadded rows, each with the
(start, end) bounds of its examples, run one after the other (see `micro_batch_rows`); each
example attends only to itself. Otherwise the rows of a micro-batch are padded to the longest
and no 2D attention mask is passed, which makes transformers build a block-diagonal causal mask
(see `masking_utils.find_packed_sequence_indices`). Either way attention never crosses example
boundaries.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from workers.lora.data import Example

IGNORE_INDEX = -100


@dataclasses.dataclass
class Batch:
    input_ids: torch.Tensor  # [rows, length]
    labels: torch.Tensor  # [rows, length], IGNORE_INDEX where no loss
    position_ids: torch.Tensor  # [rows, length]
    attention_mask: torch.Tensor | None  # None for packed rows
    tokens: int  # non-pad tokens
    loss_tokens: int
    # varlen rows: (start, end) of each example in the single row; attention stays inside
    bounds: list[tuple[int, int]] | None = None

    def to(self, device: torch.device) -> Batch:
        mask = None if self.attention_mask is None else self.attention_mask.to(device)
        return dataclasses.replace(
            self,
            input_ids=self.input_ids.to(device),
            labels=self.labels.to(device),
            position_ids=self.position_ids.to(device),
            attention_mask=mask,
        )


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Which examples each optimizer step sees; a pure function of (n, seed, sizes)."""

    n_examples: int
    batch_size: int
    grad_accum: int
    n_epochs: int
    seed: int
    max_steps: int | None = None

    @property
    def micro_per_epoch(self) -> int:
        return math.ceil(self.n_examples / self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.micro_per_epoch / self.grad_accum)

    @property
    def total_steps(self) -> int:
        total = self.steps_per_epoch * self.n_epochs
        return min(total, self.max_steps) if self.max_steps else total

    def epoch_order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_examples, generator=generator).tolist()

    def step_micro_batches(self, step: int) -> list[list[int]]:
        """Example indices of each micro-batch of the 0-based optimizer step `step`."""
        epoch, index_in_epoch = divmod(step, self.steps_per_epoch)
        epoch %= self.n_epochs  # max_steps beyond the epochs would wrap (never with total_steps)
        order = self.epoch_order(epoch)
        first = index_in_epoch * self.grad_accum
        last = min(first + self.grad_accum, self.micro_per_epoch)
        return [order[m * self.batch_size : (m + 1) * self.batch_size] for m in range(first, last)]


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing bin packing of example indices into rows of at most `capacity`."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, free in enumerate(room):
            if lengths[index] <= free:
                rows[r].append(index)
                room[r] -= lengths[index]
                break
        else:
            rows.append([index])
            room.append(capacity - lengths[index])
    return rows


def _labels(example: Example) -> list[int]:
    # the first token of an example is never a target: in a packed row the previous token
    # belongs to another example
    labels = [
        t if m else IGNORE_INDEX for t, m in zip(example.input_ids, example.loss_mask, strict=True)
    ]
    labels[0] = IGNORE_INDEX
    return labels


def collate_varlen(examples: list[Example]) -> Batch:
    """All examples back to back in one row, no padding; `bounds` delimits them."""
    input_ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    bounds = []
    for example in examples:
        start = len(input_ids)
        input_ids += example.input_ids
        labels += _labels(example)
        positions += range(len(example.input_ids))
        bounds.append((start, len(input_ids)))
    return Batch(
        input_ids=torch.tensor([input_ids]),
        labels=torch.tensor([labels]),
        position_ids=torch.tensor([positions]),
        attention_mask=None,
        tokens=len(input_ids),
        loss_tokens=sum(e.loss_tokens for e in examples),
        bounds=bounds,
    )


def collate(
    examples: list[Example], *, packing: bool, capacity: int, pad_id: int, varlen: bool = False
) -> Batch:
    """Padded rows (packing=False), or packed rows: one varlen row when the model supports
    it, else rows of at most `capacity` tokens with block-diagonal masks from position ids."""
    if packing and varlen:
        return collate_varlen(examples)
    if packing:
        rows = [
            [examples[i] for i in row]
            for row in pack_rows([len(e.input_ids) for e in examples], capacity)
        ]
    else:
        rows = [[e] for e in examples]
    length = max(sum(len(e.input_ids) for e in row) for row in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), length), dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    for r, row in enumerate(rows):
        offset = 0
        for example in row:
            n = len(example.input_ids)
            input_ids[r, offset : offset + n] = torch.tensor(example.input_ids)
            labels[r, offset : offset + n] = torch.tensor(_labels(example))
            position_ids[r, offset : offset + n] = torch.arange(n)
            offset += n
        attention[r, :offset] = 1
        # the pad tail is its own "sequence" starting at 0, so it never joins a real example
        position_ids[r, offset:] = torch.arange(length - offset)
    return Batch(
        input_ids=input_ids,
        labels=labels,
        position_ids=position_ids,
        attention_mask=None if packing else attention,
        tokens=sum(len(e.input_ids) for e in examples),
        loss_tokens=sum(e.loss_tokens for e in examples),
    )


def micro_batch_rows(
    examples: list[Example], *, packing: bool, capacity: int, pad_id: int, varlen: bool = False
) -> list[Batch]:
    """The batches one micro-batch is run as: every row at most `capacity` tokens.

    Varlen rows cannot share a tensor (their bounds describe one row), so a micro-batch that
    does not fit one row of `capacity` tokens becomes several single-row batches, packed first
    fit decreasing; otherwise it is the one batch of `collate`."""
    if packing and varlen:
        return [
            collate_varlen([examples[i] for i in row])
            for row in pack_rows([len(e.input_ids) for e in examples], capacity)
        ]
    return [collate(examples, packing=packing, capacity=capacity, pad_id=pad_id)]
