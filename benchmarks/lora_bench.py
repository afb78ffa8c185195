"""Side-by-side LoRA benchmark: the Partage core vs the reference (TRL SFTTrainer + peft).

Each trainer runs in its own process (so peak memory does not mix) on the same random Llama,
the same chats, sequence length, effective batch, precision (fp32 on CPU; bf16 weights and
autocast on GPU), LoRA settings, optimizer and schedule. The trainers run interleaved, round
after round (order reversed every other round), so load from other jobs hits them alike; the
median speed per trainer is reported, on the wall clock and per CPU-second of the trainer
process (which other jobs on a shared machine barely affect). After training every process
evaluates its adapter on the same held-out chats with the same code, so final losses compare.

The reference runs in each of TRL's packing modes: no packing, `bfd` (padding-free: the batch
is one row whose examples are kept apart by a block-diagonal mask built from position ids),
and `wrapped` (fast, but examples attend to each other: reported, never used as the baseline).

    HF_HUB_OFFLINE=1 python benchmarks/lora_bench.py [--examples 400] [--rounds 2]
    HF_HUB_OFFLINE=1 python benchmarks/lora_bench.py --device cuda   # ~1.1B Llama, seq 2048, MFU

CPU defaults: ~30M Llama, max_len 512. CUDA defaults: ~1.1B Llama (random weights), max_len
2048, turns 8x longer; MFU per REFERENCE §7 = (4·N + 12·L·d·s)·tokens/s ÷ peak FLOP/s.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TRAINERS = ["partage", "trl-nopack", "trl-bfd", "trl-wrapped"]
KEEPS_EXAMPLES_APART = {"partage": True, "trl-nopack": True, "trl-bfd": True, "trl-wrapped": False}
H200_PEAK_FLOPS = 989e12  # dense bf16, REFERENCE §7


def _rss_now() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _peak_rss() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _cpu_seconds() -> float:
    """CPU time of this process (all threads): robust to other jobs sharing the machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_memory(cuda: bool) -> int:
    """Peak RSS on CPU; peak allocated VRAM on GPU."""
    if cuda:
        import torch

        return int(torch.cuda.max_memory_allocated())
    return _peak_rss()


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- children


def _eval_loss(peft_model: Any, tokenizer: Any, valid_path: pathlib.Path, max_len: int) -> float:
    """Mean CE over assistant tokens of the held-out chats, identical code for every trainer."""
    import torch

    from workers.lora.batching import collate
    from workers.lora.data import load_examples
    from workers.lora.modeling import loss_sum

    examples, _ = load_examples(
        valid_path, tokenizer, max_seq_length=max_len, loss_on="assistant", truncation="truncate"
    )
    peft_model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), 8):
            batch = collate(
                examples[start : start + 8],
                packing=False,
                capacity=max_len,
                pad_id=tokenizer.pad_token_id,
            )
            batch = batch.to(peft_model.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=batch.input_ids.is_cuda):
                total += float(loss_sum(peft_model, batch))
            count += batch.loss_tokens
    return total / count


def child_partage(args: argparse.Namespace, spec: dict[str, Any]) -> dict[str, Any]:
    from workers.lora import trainer as core
    from workers.lora.config import parse_config

    cuda = spec["device"] == "cuda"

    class TimedTrainer(core.Trainer):
        def setup(self) -> None:
            super().setup()
            self.rss_before = _rss_now()
            _sync(cuda)
            self.t_start = time.perf_counter()
            self.cpu_start = _cpu_seconds()

        def _finish(self, step: int, progress: dict[str, Any], *, stopped_early: bool) -> int:
            _sync(cuda)
            self.t_train = time.perf_counter() - self.t_start
            self.cpu_train = _cpu_seconds() - self.cpu_start
            self.peak_train = _peak_memory(cuda)
            self.progress = progress
            return 0  # the adapter writing/verification is not part of the timed comparison

    config = parse_config(
        {
            "job_id": "bench",
            "base_model": spec["model_dir"],  # a local model directory
            "training_file": spec["train"],
            "output_dir": str(pathlib.Path(spec["workdir"]) / "partage-out"),
            "seed": spec["seed"],
            "hyperparameters": {
                "n_epochs": spec["epochs"],
                "batch_size": spec["batch_size"],
                "learning_rate": spec["lr"],
                "max_seq_length": spec["max_len"],
                "warmup_ratio": spec["warmup_ratio"],
                "lr_scheduler": "cosine",
                "checkpoint_every_steps": 10**6,
                "packing": spec.get("packing", True),
                "gradient_checkpointing": spec["gradient_checkpointing"],
            },
            "lora": spec["lora"],
        }
    )
    devnull = open(os.devnull, "w")  # noqa: SIM115 (events are not needed here)
    real_stdout, sys.stdout = sys.stdout, devnull
    try:
        trainer = TimedTrainer(config)
        trainer.run(resume=False)
    finally:
        sys.stdout = real_stdout
    data_tokens = sum(len(e.input_ids) for e in trainer.train) * spec["epochs"]
    loss_tokens = sum(e.loss_tokens for e in trainer.train) * spec["epochs"]
    return {
        "train_seconds": trainer.t_train,
        "cpu_seconds": trainer.cpu_train,
        "tokens": data_tokens,
        "loss_tokens": loss_tokens,
        "steps": trainer.schedule.total_steps,
        "final_train_loss": trainer.progress["train_loss"],
        "valid_loss": _eval_loss(
            trainer.model, trainer.tokenizer, pathlib.Path(spec["valid"]), spec["max_len"]
        ),
        "rss_before_train": trainer.rss_before,
        "peak_memory": trainer.peak_train,
        "attention": trainer.model.get_base_model().config._attn_implementation,
    }


def child_trl(args: argparse.Namespace, spec: dict[str, Any], mode: str) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    cuda = spec["device"] == "cuda"
    torch.manual_seed(spec["seed"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(
        spec["model_dir"],
        # the same precision as ours: fp32 on CPU; frozen base in bf16 + bf16 autocast on GPU
        dtype=torch.bfloat16 if cuda else torch.float32,
        attn_implementation="sdpa",
    )
    rows = [json.loads(line) for line in pathlib.Path(spec["train"]).read_text().splitlines()]
    packing = mode != "nopack"
    batch = spec["batch_size"] if not packing else spec["packed_rows_per_batch"]
    sft_args = SFTConfig(
        output_dir=str(pathlib.Path(spec["workdir"]) / f"trl-{mode}"),
        num_train_epochs=spec["epochs"],
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        learning_rate=spec["lr"],
        lr_scheduler_type="cosine",
        # transformers 5: a float < 1 is a ratio (ceil(ratio * steps), as ours)
        warmup_steps=spec["warmup_ratio"],
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_length=spec["max_len"],
        packing=packing,
        packing_strategy="wrapped" if mode == "wrapped" else "bfd",
        padding_free=mode == "bfd",
        assistant_only_loss=True,
        gradient_checkpointing=spec["gradient_checkpointing"],
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=spec["seed"],
        data_seed=spec["seed"],
        bf16=cuda,
        fp16=False,
        use_cpu=not cuda,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    lora = spec["lora"]
    peft_config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        bias="none",
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=model,
        args=sft_args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    processed = trainer.train_dataset
    ids = processed["input_ids"]
    tokens = sum(len(x) for x in ids)
    if "labels" in processed.column_names:  # predicted tokens: a label that is not -100
        loss_tokens = sum(sum(1 for t in row[1:] if t != -100) for row in processed["labels"])
    else:
        keys = [c for c in processed.column_names if c in ("assistant_masks", "completion_mask")]
        loss_tokens = sum(sum(m[1:]) for m in processed[keys[0]])

    losses: list[float] = []

    class Record(TrainerCallback):
        def on_log(self, _args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    trainer.add_callback(Record())
    rss_before = _rss_now()
    _sync(cuda)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    trainer.train()
    _sync(cuda)
    seconds = time.perf_counter() - start
    cpu_seconds = _cpu_seconds() - cpu_start
    peak = _peak_memory(cuda)
    return {
        "train_seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "tokens": tokens * spec["epochs"],
        "loss_tokens": loss_tokens * spec["epochs"],
        "steps": trainer.state.global_step,
        "final_train_loss": losses[-1] if losses else None,
        "valid_loss": _eval_loss(
            trainer.model, tokenizer, pathlib.Path(spec["valid"]), spec["max_len"]
        ),
        "rss_before_train": rss_before,
        "peak_memory": peak,
        "rows_per_batch": batch,
        "columns": processed.column_names,
    }


def run_child(args: argparse.Namespace) -> None:
    import torch

    spec = json.loads(pathlib.Path(args.spec).read_text())
    torch.set_num_threads(spec["threads"])
    if args.child == "partage":
        result = child_partage(args, spec)
    elif args.child == "partage-nopack":
        result = child_partage(args, {**spec, "packing": False})
    else:
        result = child_trl(args, spec, args.child.removeprefix("trl-"))
    pathlib.Path(args.result).write_text(json.dumps(result))


# ----------------------------------------------------------------------------- parent


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor()


def mfu(tokens_per_s: float, *, matmul_params: int, layers: int, hidden: int, seq: float) -> float:
    """REFERENCE §7: (4·N + 12·L·d·s) · tokens/s ÷ peak dense bf16 FLOP/s (H200: 989 TFLOP/s)."""
    return (4 * matmul_params + 12 * layers * hidden * seq) * tokens_per_s / H200_PEAK_FLOPS


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    import statistics

    from transformers import AutoTokenizer

    from benchmarks.bench_data import (
        bench_config,
        build_bench_model,
        make_chats,
        matmul_parameters,
        write_jsonl,
    )
    from workers.lora.data import load_examples

    work = pathlib.Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = build_bench_model(work / f"model-{args.model_size}", size=args.model_size)
    train = write_jsonl(work / "train.jsonl", make_chats(args.examples, seed=1, scale=args.scale))
    valid = write_jsonl(
        work / "valid.jsonl", make_chats(args.valid_examples, seed=2, scale=args.scale)
    )
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    examples, report = load_examples(
        train, tokenizer, max_seq_length=args.max_len, loss_on="assistant", truncation="truncate"
    )
    lengths = sorted(len(e.input_ids) for e in examples)
    mean_len = sum(lengths) / len(lengths)
    config = bench_config(tokenizer, args.model_size)
    spec = {
        "device": args.device,
        "model_dir": str(model_dir),
        "model_size": args.model_size,
        "matmul_params": matmul_parameters(config),
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "train": str(train),
        "valid": str(valid),
        "workdir": str(work),
        "seed": 42,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        # packed modes batch rows of max_len tokens: as many rows as carry the same tokens
        "packed_rows_per_batch": max(1, round(args.batch_size * mean_len / args.max_len)),
        "lr": args.lr,
        "warmup_ratio": 0.03,
        "max_len": args.max_len,
        "threads": args.threads,
        "gradient_checkpointing": args.gradient_checkpointing,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
        "data": {
            "examples": len(examples),
            "tokens": report.tokens,
            "loss_tokens": report.loss_tokens,
            "truncated": report.truncated,
            "no_loss_tokens": len(report.no_loss_tokens),
            "len_median": statistics.median(lengths),
            "len_p10": lengths[len(lengths) // 10],
            "len_p90": lengths[9 * len(lengths) // 10],
            "len_mean": round(mean_len, 1),
            # the attention context an average token sees (s in the MFU formula)
            "len_token_weighted": round(sum(n * n for n in lengths) / sum(lengths), 1),
        },
    }
    (work / "spec.json").write_text(json.dumps(spec, indent=2))
    return spec


def _run_one(name: str, spec_path: pathlib.Path, workdir: str) -> dict[str, Any] | None:
    out = pathlib.Path(workdir) / f"result-{name}.json"
    out.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        __file__,
        "--child",
        name,
        "--spec",
        str(spec_path),
        "--result",
        str(out),
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if proc.returncode != 0:
        print(f"{name}: FAILED\n{proc.stderr[-3000:]}", flush=True)
        return None
    result: dict[str, Any] = json.loads(out.read_text())
    result["tokens_per_s"] = result["tokens"] / result["train_seconds"]
    result["loss_tokens_per_s"] = result["loss_tokens"] / result["train_seconds"]
    result["tokens_per_cpu_s"] = result["tokens"] / result["cpu_seconds"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child")
    parser.add_argument("--spec")
    parser.add_argument("--result")
    parser.add_argument("--workdir", default="/tmp/partage-lora-bench")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--model-size", choices=["30m", "1b"], default=None)
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("--valid-examples", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=None)
    parser.add_argument("--scale", type=float, default=None, help="turn length multiplier")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--only", default=",".join(TRAINERS))
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        run_child(args)
        return
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    args.model_size = args.model_size or ("1b" if gpu else "30m")
    args.max_len = args.max_len or (2048 if gpu else 512)
    args.scale = args.scale or (8.0 if gpu else 1.0)
    if not gpu:
        # the children must not see a GPU when the CPU comparison is asked for
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    spec = prepare(args)
    spec_path = pathlib.Path(args.workdir) / "spec.json"
    where = torch.cuda.get_device_name() if gpu else f"{_cpu_name()} | {os.cpu_count()} CPUs"
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | {where} | torch threads "
        f"{args.threads} | load average at start {os.getloadavg()[0]:.1f}"
    )
    print(f"# model {args.model_size} ({spec['matmul_params']:,} matmul params), data: ", end="")
    print(json.dumps(spec["data"]), flush=True)
    names = args.only.split(",")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name in names if round_index % 2 == 0 else names[::-1]:
            result = _run_one(name, spec_path, args.workdir)
            if result is None:
                continue
            runs[name].append(result)
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}
            print(f"round {round_index + 1} {name}: {json.dumps(shown)}", flush=True)
    results = {name: _median_run(r) for name, r in runs.items() if r}
    report(results, spec)
    if args.json_out:
        pathlib.Path(args.json_out).write_text(
            json.dumps({"spec": spec, "runs": runs, "results": results}, indent=2)
        )


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Speeds are medians over the rounds (the mean of two); peak memory is the highest seen."""
    import statistics

    chosen = dict(runs[0])
    for key in ("tokens_per_s", "loss_tokens_per_s", "tokens_per_cpu_s", "train_seconds"):
        chosen[key] = statistics.median(r[key] for r in runs)
    chosen["peak_memory"] = max(r["peak_memory"] for r in runs)
    chosen["runs"] = len(runs)
    chosen["tokens_per_s_all"] = [round(r["tokens_per_s"]) for r in runs]
    return chosen


def report(results: dict[str, dict[str, Any]], spec: dict[str, Any]) -> None:
    gpu = spec["device"] == "cuda"
    memory = "peak VRAM alloc MiB" if gpu else "peak RSS MiB"
    print()
    print(
        f"| trainer | examples kept apart | steps | non-pad tok/s (each run) | loss tok/s "
        f"| non-pad tok per CPU-s | {memory} | last train loss | held-out loss |"
        f"{' MFU |' if gpu else ''}"
    )
    print(f"|---|---|---|---|---|---|---|---|---|{'---|' if gpu else ''}")
    for name, r in results.items():
        apart = "yes" if KEEPS_EXAMPLES_APART.get(name, True) else "**no** (invalid baseline)"
        line = (
            f"| {name} | {apart} | {r['steps']} | {r['tokens_per_s']:.0f} "
            f"({', '.join(map(str, r['tokens_per_s_all']))}) | {r['loss_tokens_per_s']:.0f} "
            f"| {r['tokens_per_cpu_s']:.0f} | {r['peak_memory'] / 2**20:.0f} | {r['final_train_loss']:.4f} "
            f"| {r['valid_loss']:.4f} |"
        )
        if gpu:
            value = mfu(
                r["tokens_per_s"],
                matmul_params=spec["matmul_params"],
                layers=spec["layers"],
                hidden=spec["hidden"],
                seq=spec["data"]["len_token_weighted"],
            )
            line += f" {100 * value:.1f}% |"
        print(line)
    if gpu:
        print(
            f"\nMFU: s = token-weighted mean example length ({spec['data']['len_token_weighted']})"
            ", the context each token attends to; peak 989 TFLOP/s (H200 dense bf16)."
        )
    refs = {n: r for n, r in results.items() if n.startswith("trl-") and KEEPS_EXAMPLES_APART[n]}
    if "partage" in results and refs:
        best_name, best = max(refs.items(), key=lambda kv: kv[1]["tokens_per_s"])
        ours = results["partage"]
        speed = ours["tokens_per_s"] / best["tokens_per_s"]
        peak = ours["peak_memory"] / best["peak_memory"]
        loss = ours["valid_loss"] / best["valid_loss"]
        print()
        print(f"reference = fastest TRL mode that keeps examples apart: {best_name}")
        print(f"speed  (non-pad tok/s): {speed:.2f}x   (target >= 2.5x: {_met(speed >= 2.5)})")
        print(
            f"speed  (loss tok/s):    {ours['loss_tokens_per_s'] / best['loss_tokens_per_s']:.2f}x"
        )
        cpu_speed = ours["tokens_per_cpu_s"] / best["tokens_per_cpu_s"]
        print(f"speed  (non-pad tok per CPU-second): {cpu_speed:.2f}x  (load-independent)")
        print(f"peak memory:            {peak:.2f}x   (target <= 1.0x: {_met(peak <= 1.0)})")
        print(
            f"held-out loss:          {loss:.4f}x  (target within 2%: {_met(abs(loss - 1) <= 0.02)})"
        )
        for name, r in results.items():
            if name != "partage":
                print(
                    f"  vs {name}: {ours['tokens_per_s'] / r['tokens_per_s']:.2f}x tok/s, "
                    f"{ours['tokens_per_cpu_s'] / r['tokens_per_cpu_s']:.2f}x tok/CPU-s, "
                    f"{ours['peak_memory'] / r['peak_memory']:.2f}x memory, "
                    f"held-out loss {ours['valid_loss'] / r['valid_loss']:.4f}x"
                )


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


if __name__ == "__main__":
    main()
