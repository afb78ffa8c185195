"""The local inference backend vs plain transformers + peft `generate`, in the same run.

For one base model and a LoRA adapter, measured in one process, interleaved round after round:

- `engine`: the local inference worker's engine (workers/inference/engine.py), warm adapter
  (already resident), streaming: time to first token (TTFT) and decode tokens/s;
- `peft-generate`: `PeftModel.generate` with a TextIteratorStreamer, greedy, same prompt and
  token budget: TTFT and tokens/s.

Then memory across adapter swaps: with `--max-adapters 2` resident, 20 different adapters are
asked in turn (each ask loads one and evicts the least recently used); the process RSS (CPU) or
CUDA allocated memory is recorded after each swap. Flat means the evicted adapters are freed.

    HF_HUB_OFFLINE=1 python benchmarks/inference_bench.py                  # demo model if cached
    HF_HUB_OFFLINE=1 python benchmarks/inference_bench.py --model partage/tiny-llama

Adapters are made with peft (rank 8, all linear layers, random non-zero lora_B) so the run needs
no training; loading and applying them costs the same as a trained adapter of that shape.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import resource
import statistics
import sys
import tempfile
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEMO = "HuggingFaceTB/SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "Tell me about the sea and the ships that sail on it."}]


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_bytes(torch: Any) -> int:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        return int(torch.cuda.memory_allocated())
    return rss_bytes()


def make_adapters(base_dir: pathlib.Path, model_id: str, outs: list[pathlib.Path]) -> None:
    """One PEFT model, re-drawn and saved once per adapter (loading the base once)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(base_dir)),
        LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    model.peft_config["default"].base_model_name_or_path = model_id
    for seed, out in enumerate(outs):
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.02)
        model.save_pretrained(str(out))


def time_engine(engine: Any, name: str, tokens: int) -> tuple[float, float, int]:
    from workers.lora.generation import Decoding

    start = time.perf_counter()
    first = None
    produced = 0
    for delta in engine.stream(name, QUESTION, Decoding(max_new_tokens=tokens)):
        if delta.text and first is None:
            first = time.perf_counter()
        if delta.finish_reason:
            produced = delta.completion_tokens
    end = time.perf_counter()
    first = first or end
    return first - start, (produced - 1) / max(end - first, 1e-9), produced


def time_peft(model: Any, tokenizer: Any, tokens: int) -> tuple[float, float, int]:
    import torch
    from transformers.generation.streamers import BaseStreamer

    class FirstToken(BaseStreamer):
        """Records when generate hands over its first new token (the first put is the prompt)."""

        def __init__(self) -> None:
            self.calls = 0
            self.first: float | None = None

        def put(self, value: Any) -> None:
            self.calls += 1
            if self.calls == 2:
                self.first = time.perf_counter()

        def end(self) -> None:
            pass

    inputs = tokenizer.apply_chat_template(
        QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(model.device)
    streamer = FirstToken()
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
            streamer=streamer,
        )  # fmt: skip
    end = time.perf_counter()
    produced = int(out.shape[1] - inputs["input_ids"].shape[1])
    first = streamer.first or end
    return first - start, (produced - 1) / max(end - first, 1e-9), produced


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help=f"catalog id (default: {DEMO} if cached)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers import catalog
    from workers.inference.engine import LocalEngine

    torch.set_num_threads(args.threads)
    model_id = args.model
    if model_id is None:
        cached = (catalog.default_cache_dir() / DEMO.replace("/", "--") / "config.json").exists()
        model_id = DEMO if cached else "partage/tiny-llama"
    base_dir = catalog.resolve(model_id)
    work = pathlib.Path(tempfile.mkdtemp(prefix="inference-bench-"))
    adapters = [work / f"a{index}" for index in range(args.swaps + 1)]
    make_adapters(base_dir, model_id, adapters)

    engine = LocalEngine(max_adapters=2)
    engine.register("warm", adapters[0])
    time_engine(engine, "warm", 4)  # load base + adapter: the adapter is warm from here on
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    reference = (
        PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(
                str(base_dir), dtype=dtype, attn_implementation="sdpa"
            ),
            str(adapters[0]),
        )
        .to(device)
        .eval()
    )
    time_peft(reference, tokenizer, 4)

    results: dict[str, list[tuple[float, float, int]]] = {"engine": [], "peft-generate": []}
    for round_index in range(args.rounds):
        order = ["engine", "peft-generate"][:: 1 if round_index % 2 == 0 else -1]
        for which in order:
            if which == "engine":
                results[which].append(time_engine(engine, "warm", args.tokens))
            else:
                results[which].append(time_peft(reference, tokenizer, args.tokens))
            print(
                f"# round {round_index} {which}: {results[which][-1]}", file=sys.stderr, flush=True
            )
    del reference
    gc.collect()

    memory = []
    for index in range(1, args.swaps + 1):
        engine.register(f"s{index}", adapters[index])
        time_engine(engine, f"s{index}", 4)
        gc.collect()
        memory.append(memory_bytes(torch))
        print(f"# swap {index}: {memory[-1] / 2**20:.1f} MiB", file=sys.stderr, flush=True)
    report = {
        "model": model_id,
        "device": device,
        "torch_threads": args.threads,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "results": {
            name: {
                "ttft_ms_median": round(statistics.median(r[0] for r in runs) * 1000, 1),
                "tokens_per_s_median": round(statistics.median(r[1] for r in runs), 1),
                "tokens_generated": runs[0][2],
            }
            for name, runs in results.items()
        },
        "swaps": {
            "count": args.swaps,
            "resident_max": engine.max_adapters,
            "engine_swaps": engine.swaps,
            "memory_mib_after_each": [round(m / 2**20, 1) for m in memory],
            "growth_mib_first_to_last": round((memory[-1] - memory[0]) / 2**20, 1),
            "growth_mib_after_5_to_last": round(
                (memory[-1] - memory[min(4, len(memory) - 1)]) / 2**20, 1
            ),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
