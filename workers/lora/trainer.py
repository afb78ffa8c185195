"""The training loop: data → LoRA steps → checkpoints/events → final adapter.

Signals: SIGTERM asks for a checkpoint at the next micro-batch boundary (a partly accumulated
step is dropped and redone after resume), then exit 4 (preempted); SIGUSR1 asks to stop after
the current step and write the final adapter (exit 0).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import pathlib
import resource
import signal
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import torch

from workers import catalog
from workers.lora import adapter as adapter_io
from workers.lora import checkpoint as ckpt
from workers.lora import evaluation
from workers.lora.batching import Batch, Schedule, micro_batch_rows
from workers.lora.config import JobConfig, UserError, is_local_model
from workers.lora.data import Example, load_examples
from workers.lora.events import emit, log
from workers.lora.modeling import (
    load_base,
    loss_sum,
    supports_varlen,
    trainable_parameters,
    wrap_lora,
)
from workers.protocol import EXIT_OK, EXIT_PREEMPTED


class TrainingGuardError(UserError):
    """NaN/inf loss or a zero LoRA gradient: the user's data/settings make training meaningless."""


class StepAbortedError(Exception):
    """SIGTERM arrived between micro-batches: the step is dropped and redone after resume."""


@dataclasses.dataclass
class StopFlags:
    preempt: bool = False
    stop_early: bool = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGUSR1, self._on_usr1)

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        log("SIGTERM received: checkpointing at the next step boundary")
        self.preempt = True

    def _on_usr1(self, signum: int, frame: FrameType | None) -> None:
        log("SIGUSR1 received: stopping after the current step")
        self.stop_early = True


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup: int, total: int) -> Any:
    """Linear warmup over `warmup` steps, then cosine/linear decay to 0 or constant."""
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    if kind == "constant":
        return get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup)
    make = get_cosine_schedule_with_warmup if kind == "cosine" else get_linear_schedule_with_warmup
    return make(optimizer, num_warmup_steps=warmup, num_training_steps=total)


def warmup_steps(hp: Any, total: int) -> int:
    """The warmup length: `warmup_steps` when given (at most `total`), else the ratio's."""
    if hp.warmup_steps is None:
        return math.ceil(hp.warmup_ratio * total)
    if hp.warmup_steps > total:
        raise UserError(
            f"hyperparameters.warmup_steps={hp.warmup_steps} exceeds the run's {total} steps; "
            "lower it or use warmup_ratio",
            param="warmup_steps",
        )
    return int(hp.warmup_steps)


def resolve_base_model(base_model: str) -> tuple[pathlib.Path, str]:
    """(model dir, name recorded in the adapter): a catalog id's cache dir and the id, or a
    local directory's resolved path (as its name too, so the manifest says what was used)."""
    if is_local_model(base_model):
        path = pathlib.Path(base_model).expanduser().resolve()
        return path, str(path)
    try:
        return catalog.resolve(base_model), base_model
    except catalog.CatalogError as e:
        raise UserError(str(e), param="base_model") from e


class Trainer:
    def __init__(self, config: JobConfig, *, flags: StopFlags | None = None) -> None:
        self.config = config
        self.hp = config.hyperparameters
        self.flags = flags or StopFlags()
        self.device = pick_device()
        self.output_dir = config.output_dir.resolve()
        self.wall_start = time.time()

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        from transformers import AutoTokenizer

        if self.config.num_threads is not None:
            torch.set_num_threads(self.config.num_threads)
            log(f"torch uses {torch.get_num_threads()} CPU threads")
        torch.manual_seed(self.config.seed)
        self.model_dir, self.base_model_name = resolve_base_model(self.config.base_model)
        log(f"loading the base model {self.base_model_name}")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id or 0
        self.train, report = self._load(self.config.training_file)
        self.valid: list[Example] = []
        valid_report = None
        if self.config.validation_file is not None:
            self.valid, vr = self._load(self.config.validation_file)
            valid_report = vr.as_event()
        # Without a validation file, the evaluation's prompts are a slice held out of training.
        self.held_out: list[Example] = []
        if self.config.validation_file is None:
            held = evaluation.holdout_lines(
                [e.line for e in self.train],
                seed=self.config.seed,
                max_samples=self.config.evaluation.max_samples,
            )
            self.held_out = [e for e in self.train if e.line in held]
            self.train = [e for e in self.train if e.line not in held]
        emit(
            "data_report",
            **report.as_event(),
            validation=valid_report,
            held_out_for_eval=[e.line for e in self.held_out],
        )
        self.schedule = Schedule(
            n_examples=len(self.train),
            batch_size=self.hp.batch_size,
            grad_accum=self.hp.gradient_accumulation_steps,
            n_epochs=self.hp.n_epochs,
            seed=self.config.seed,
            max_steps=self.hp.max_steps,
        )
        base = load_base(
            self.model_dir,
            self.device,
            self.hp.gradient_checkpointing,
            self.hp.max_seq_length,
        )
        torch.manual_seed(self.config.seed)  # LoRA init does not depend on loading order
        self.varlen = supports_varlen(base)
        self.model = wrap_lora(base, self.config.lora, self.base_model_name)
        self.params = [p for _, p in trainable_parameters(self.model)]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=self.hp.learning_rate, weight_decay=self.hp.weight_decay
        )
        total = self.schedule.total_steps
        warmup = warmup_steps(self.hp, total)
        self.scheduler = make_scheduler(self.optimizer, self.hp.lr_scheduler, warmup, total)

    def _load(self, path: pathlib.Path) -> tuple[list[Example], Any]:
        if self.tokenizer.chat_template is None:
            log("the base model has no chat template: chat files will be rejected")
        try:
            return load_examples(
                path,
                self.tokenizer,
                max_seq_length=self.hp.max_seq_length,
                loss_on=self.hp.loss_on,
                truncation=self.hp.truncation,
            )
        except ValueError as e:  # e.g. a tokenizer without chat template
            raise UserError(f"{path.name}: {e}") from e

    # ------------------------------------------------------------------ steps
    def _rows(self, indices: list[int], examples: list[Example]) -> list[Batch]:
        """A micro-batch as the batches it runs as, each row at most max_seq_length tokens."""
        return [
            b.to(self.device)
            for b in micro_batch_rows(
                [examples[i] for i in indices],
                packing=self.hp.packing,
                capacity=self.hp.max_seq_length,
                pad_id=self.pad_id,
                varlen=self.varlen,
            )
        ]

    def _batch(self, indices: list[int], examples: list[Example]) -> Batch:
        (batch,) = self._rows(indices, examples)  # callers pass one example
        return batch

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield

    def train_step(self, step: int) -> dict[str, float]:
        self.model.train()
        micro = self.schedule.step_micro_batches(step)
        micro_rows = [self._rows(indices, self.train) for indices in micro]
        batches = [b for rows in micro_rows for b in rows]
        loss_tokens = sum(b.loss_tokens for b in batches)
        total_loss = 0.0
        for index, rows in enumerate(micro_rows):
            if index and self.flags.preempt:
                # within the pod's grace period: do not finish a long accumulated step
                raise StepAbortedError
            for batch in rows:
                with self._autocast():
                    loss = loss_sum(self.model, batch) / loss_tokens
                if not torch.isfinite(loss):
                    raise TrainingGuardError(
                        f"loss became {loss.item()} at step {step + 1}; lower the learning rate or check the data",
                        code="nan_loss",
                        step=step + 1,
                    )
                loss.backward()
                total_loss += float(loss.detach())
        grad_norm = float(
            torch.nn.utils.clip_grad_norm_(self.params, self.hp.max_grad_norm or float("inf"))
        )
        if not math.isfinite(grad_norm):
            raise TrainingGuardError(
                f"gradient norm became {grad_norm} at step {step + 1}",
                code="nan_loss",
                step=step + 1,
            )
        if grad_norm == 0.0:
            raise TrainingGuardError(
                f"the LoRA gradient norm is zero at step {step + 1}: nothing would be learned",
                code="zero_grad",
                step=step + 1,
            )
        learning_rate = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "train_loss": total_loss,
            "grad_norm": grad_norm,
            "learning_rate": learning_rate,
            "tokens": float(sum(b.tokens for b in batches)),
            "loss_tokens": float(loss_tokens),
        }

    @torch.no_grad()
    def evaluate(self) -> float | None:
        if not self.valid:
            return None
        self.model.eval()
        total, count = 0.0, 0
        for start in range(0, len(self.valid), self.hp.batch_size):
            indices = list(range(start, min(start + self.hp.batch_size, len(self.valid))))
            for batch in self._rows(indices, self.valid):
                with self._autocast():
                    total += float(loss_sum(self.model, batch))
                count += batch.loss_tokens
        self.model.train()
        return total / count

    # ------------------------------------------------------------------ run
    def run(self, *, resume: bool) -> int:
        self.flags.install()
        self.setup()
        total = self.schedule.total_steps
        progress: dict[str, Any] = {"trained_tokens": 0, "train_loss": None, "valid_loss": None}
        start = 0
        if resume:
            latest = ckpt.latest_checkpoint(self.output_dir)
            if latest is None:
                log("--resume: no checkpoint found, starting from step 0")
            else:
                progress = ckpt.load_checkpoint(
                    latest,
                    peft_model=self.model,
                    optimizer=self.optimizer,
                    scheduler=self.scheduler,
                )
                start = int(progress.pop("step"))
                log(f"resumed from {latest} at step {start}")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        log(f"training {total} steps on {self.device} ({len(self.train)} examples)")
        loop_start = time.time()
        last_checkpoint_step = start
        step = start
        while step < total:
            if self.flags.preempt:
                return self._preempt(step, progress, last_checkpoint_step)
            step_start = time.time()
            rng = _rng_state()
            try:
                metrics = self.train_step(step)
            except StepAbortedError:
                # forget the partial step: state is exactly that after `step` steps
                self.optimizer.zero_grad(set_to_none=True)
                _set_rng_state(rng)
                log(f"SIGTERM during step {step + 1}: dropped it, checkpointing step {step}")
                return self._preempt(step, progress, last_checkpoint_step)
            step += 1
            progress["trained_tokens"] += int(metrics["tokens"])
            progress["train_loss"] = metrics["train_loss"]
            self._emit_progress(step, total, metrics, progress, step_start, loop_start, start)
            if step % self.hp.checkpoint_every_steps == 0 and step < total:
                self._checkpoint(step, progress)
                last_checkpoint_step = step
            if self.flags.stop_early:
                break
        if self.flags.preempt and step < total:
            return self._preempt(step, progress, last_checkpoint_step)
        return self._finish(step, progress, stopped_early=step < total)

    def _emit_progress(
        self,
        step: int,
        total: int,
        metrics: dict[str, float],
        progress: dict[str, Any],
        step_start: float,
        loop_start: float,
        first_step: int,
    ) -> None:
        now = time.time()
        step_time = max(now - step_start, 1e-9)
        per_step = (now - loop_start) / max(step - first_step, 1)
        emit(
            "progress",
            step=step,
            total_steps=total,
            epoch=step / self.schedule.steps_per_epoch,
            train_loss=metrics["train_loss"],
            learning_rate=metrics["learning_rate"],
            tokens_per_s=metrics["tokens"] / step_time,
            loss_tokens_per_s=metrics["loss_tokens"] / step_time,
            eta_s=per_step * (total - step),
            peak_memory_bytes=peak_memory_bytes(self.device),
            grad_norm=metrics["grad_norm"],
            trained_tokens=progress["trained_tokens"],
        )

    def _checkpoint(self, step: int, progress: dict[str, Any]) -> pathlib.Path:
        valid_loss = self.evaluate()
        if valid_loss is not None:
            progress["valid_loss"] = valid_loss
            emit("validation", step=step, valid_loss=valid_loss)
        path = ckpt.save_checkpoint(
            self.output_dir,
            step,
            peft_model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            progress=progress,
            keep=self.hp.keep_checkpoints,
        )
        log(f"saved a checkpoint at step {step}")
        emit(
            "checkpoint",
            step=step,
            path=str(path),
            metrics={"step": step, "train_loss": progress["train_loss"], "valid_loss": valid_loss},
        )
        return path

    def _preempt(self, step: int, progress: dict[str, Any], last_checkpoint_step: int) -> int:
        if step == 0:
            latest = None
        elif step == last_checkpoint_step and ckpt.checkpoint_dir(self.output_dir, step).exists():
            latest = ckpt.checkpoint_dir(self.output_dir, step)
        else:
            latest = ckpt.save_checkpoint(
                self.output_dir,
                step,
                peft_model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                progress=progress,
                keep=self.hp.keep_checkpoints,
            )
            emit(
                "checkpoint",
                step=step,
                path=str(latest),
                metrics={
                    "step": step,
                    "train_loss": progress["train_loss"],
                    "valid_loss": progress.get("valid_loss"),
                },
            )
        emit("preempted", step=step, checkpoint=str(latest) if latest else None)
        return EXIT_PREEMPTED

    def _evaluate_answers(self, valid_loss: float | None) -> pathlib.Path | None:
        """eval.json: base vs adapter answers on held-out prompts. A failure here is reported in
        the file and the log; the adapter is already written and verified, the job stands."""
        settings = self.config.evaluation
        if self.config.validation_file is not None:
            source, path, pool = "validation_file", self.config.validation_file, self.valid
            held_out = True
        elif self.held_out:
            source, path, pool = "training_holdout", self.config.training_file, self.held_out
            held_out = True
        else:
            source, path, pool = "training_file", self.config.training_file, self.train
            held_out = False
        chosen = evaluation.choose(pool, settings.max_samples, self.config.seed)
        evaluator = evaluation.Evaluator(
            model=self.model,
            tokenizer=self.tokenizer,
            batch_of=lambda example: self._batch([0], [example]),
            loss_sum=self._loss_sum,
            settings=settings,
            seed=self.config.seed,
            autocast=self._autocast,
        )
        try:
            report = evaluation.run_eval(
                evaluator,
                examples=chosen,
                path=path,
                source=source,
                held_out=held_out,
                validation_loss=valid_loss,
            )
        except Exception as e:  # the adapter is verified: an evaluation bug must not lose it
            log(f"evaluation failed: {type(e).__name__}: {e}")
            report = {"format": evaluation.EVAL_FORMAT, "error": f"{type(e).__name__}: {e}"}
        report["job_id"] = self.config.job_id
        report["base_model"] = self.base_model_name
        return evaluation.write_eval(self.output_dir, report)

    def _loss_sum(self, model: Any, batch: Batch) -> torch.Tensor:
        with self._autocast():
            return loss_sum(model, batch)

    def _finish(self, step: int, progress: dict[str, Any], *, stopped_early: bool) -> int:
        valid_loss = self.evaluate()
        if valid_loss is not None:
            emit("validation", step=step, valid_loss=valid_loss)
        adapter_dir = self.output_dir / "adapter"
        adapter_io.save_adapter(self.model, adapter_dir)
        gpus = torch.cuda.device_count() if self.device.type == "cuda" else 0
        adapter_io.write_manifest(
            adapter_dir,
            {
                "job_id": self.config.job_id,
                "base_model": {
                    "id": self.base_model_name,
                    "source": "local_dir" if is_local_model(self.config.base_model) else "catalog",
                    "path": str(self.model_dir.resolve()),
                    "weights_sha256": catalog.weights_sha256(self.model_dir),
                },
                "tokenizer": adapter_io.tokenizer_hashes(self.model_dir, self.tokenizer),
                "training_file": {
                    "name": self.config.training_file.name,
                    "sha256": adapter_io.sha256_file(self.config.training_file),
                },
                "validation_file": None
                if self.config.validation_file is None
                else {
                    "name": self.config.validation_file.name,
                    "sha256": adapter_io.sha256_file(self.config.validation_file),
                },
                "hyperparameters": self.config.as_dict()["hyperparameters"],
                "lora": self.config.as_dict()["lora"],
                "seed": self.config.seed,
                "steps": step,
                "stopped_early": stopped_early,
                "trained_tokens": progress["trained_tokens"],
                "final_train_loss": progress["train_loss"],
                "final_valid_loss": valid_loss,
                "gpu_seconds": (time.time() - self.wall_start) * gpus,
                "device": str(self.device),
            },
        )
        adapter_io.verify_adapter(
            adapter_dir,
            self.model_dir,
            base_model_id=self.base_model_name,
            max_rank=self.config.max_rank,
        )
        eval_path = self._evaluate_answers(valid_loss)
        fields: dict[str, Any] = {
            "adapter_dir": str(adapter_dir),
            "eval_file": str(eval_path) if eval_path else None,
            "trained_tokens": progress["trained_tokens"],
            "train_loss": progress["train_loss"],
            "valid_loss": valid_loss,
            "steps": step,
        }
        if stopped_early:
            fields["stopped_early"] = True
        emit("completed", **fields)
        return EXIT_OK
