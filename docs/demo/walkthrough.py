"""The partner path in Python: upload → fine-tune → watch → ask the fine-tuned model → compare.

    python docs/demo/walkthrough.py --key "$PARTAGE_KEY" [--download]

Uses `requests` against the OpenAI-compatible /v1 API for the job, then the unchanged `openai`
SDK to ask the fine-tuned model, and prints the job's evaluation (the base model's and the
adapter's answers to held-out prompts). `--download` also unpacks the adapter and compares
with peft locally.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--key", required=True, help="the API key printed by `make run`")
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--data", default=str(HERE / "pirate.jsonl"))
    parser.add_argument("--out", default="adapter")
    parser.add_argument("--question", default="What is the capital of Italy?")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--download", action="store_true", help="also load the adapter with peft")
    args = parser.parse_args()
    try:
        import openai  # noqa: F401  (checked before training, not after)
    except ImportError:
        print(
            "The walk-through asks the fine-tuned model with the openai SDK, which `make run` does "
            "not install: run `.venv/bin/pip install openai`, then this script again.",
            file=sys.stderr,
        )
        return 2
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {args.key}"

    with open(args.data, "rb") as data:
        file = api.post(
            f"{args.base_url}/files", files={"file": data}, data={"purpose": "fine-tune"}
        )
    file.raise_for_status()
    print("uploaded", file.json()["id"])

    job = api.post(
        f"{args.base_url}/fine_tuning/jobs",
        json={
            "model": args.model,
            "training_file": file.json()["id"],
            "hyperparameters": {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 10},
            "suffix": "pirate",
            "seed": 1,
            "lora": {"r": 8, "alpha": 16},
        },
    )
    job.raise_for_status()
    job_id = job.json()["id"]
    print("created", job_id)

    deadline = time.monotonic() + args.timeout
    while True:
        state = api.get(f"{args.base_url}/fine_tuning/jobs/{job_id}").json()
        progress = (state.get("partage") or {}).get("progress") or {}
        print(
            f"  {state['status']:<10} step {progress.get('step')}/{progress.get('total_steps')} "
            f"loss {progress.get('train_loss')}"
        )
        if state["status"] in {"succeeded", "failed", "cancelled"}:
            break
        if time.monotonic() > deadline:
            print("timed out", file=sys.stderr)
            return 1
        time.sleep(3)
    if state["status"] != "succeeded":
        print("job did not succeed:", state.get("error"), file=sys.stderr)
        return 1

    ask(args.base_url, args.key, state["fine_tuned_model"], args.question)
    evaluation = api.get(f"{args.base_url}/files/{state['result_files'][1]}/content").json()
    for sample in evaluation["samples"][:3]:
        print(f"\nprompt:       {sample['prompt']}")
        print(f"base model:   {sample['base_answer']}")
        print(f"with adapter: {sample['adapter_answer']}")
        print(f"reference:    {sample['reference']}")
    if not args.download:
        return 0
    archive = api.get(f"{args.base_url}/files/{state['result_files'][0]}/content")
    archive.raise_for_status()
    out = Path(args.out)
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        tar.extractall(out, filter="data")
    print("adapter in", out, sorted(p.name for p in out.iterdir()))
    return compare(args.model, out, args.question)


def ask(base_url: str, key: str, model: str, question: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=key)
    messages = [{"role": "user", "content": question}]
    answer = client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_completion_tokens=60
    )
    print(f"{model} answers: {answer.choices[0].message.content}")
    print(
        f"  ({answer.usage.prompt_tokens} prompt + {answer.usage.completion_tokens} completion tokens)"
    )
    print("streamed:", end=" ", flush=True)
    stream = client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_completion_tokens=60, stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()


def compare(model_id: str, adapter_dir: Path, question: str) -> int:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.catalog import resolve

    base_dir = resolve(model_id)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    n = inputs["input_ids"].shape[1]
    before = base.generate(**inputs, max_new_tokens=30, do_sample=False)[0][n:]
    print("base model:  ", tokenizer.decode(before, skip_special_tokens=True))
    tuned = PeftModel.from_pretrained(base, adapter_dir)
    after = tuned.generate(**inputs, max_new_tokens=30, do_sample=False)[0][n:]
    print("with adapter:", tokenizer.decode(after, skip_special_tokens=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
