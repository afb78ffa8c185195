"""Base models with LoRA adapters swapped in and out: one base model loaded per catalog id,
adapters resident up to `max_adapters` per base, least recently used evicted first.

Adapters are registered by name and path (cheap, unbounded) and loaded on first use, so an
evicted adapter comes back on its next request. One generation runs at a time per engine: a
swap never lands in the middle of another request's decoding.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
import threading
from collections.abc import Iterator
from typing import Any

import torch

from workers import catalog
from workers.lora.generation import Decoding, Delta, chat_prompt_ids, generate_stream


class UnknownModelError(Exception):
    """No adapter or base model of that name is registered."""


class AdapterLoadError(Exception):
    """The adapter directory cannot be served (missing files, unknown base model, bad rank)."""


@dataclasses.dataclass
class LoadedBase:
    model: Any  # the transformers model, or the PeftModel wrapping it once an adapter is loaded
    tokenizer: Any
    has_adapters: bool = False


@dataclasses.dataclass(frozen=True)
class Registered:
    name: str
    path: pathlib.Path
    base_model: str


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class LocalEngine:
    def __init__(
        self,
        *,
        max_adapters: int = 4,
        max_rank: int = 64,
        device: torch.device | None = None,
        cache_dir: pathlib.Path | None = None,
    ) -> None:
        self.max_adapters = max(1, max_adapters)
        self.max_rank = max_rank
        self.device = device or pick_device()
        self.cache_dir = cache_dir
        self.registry: dict[str, Registered] = {}
        self.bases: dict[str, LoadedBase] = {}
        self.resident: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.lock = threading.RLock()
        self.swaps = 0  # adapters loaded into memory since start (a cold start or an LRU swap)

    # ------------------------------------------------------------ registry
    def register(self, name: str, path: str | pathlib.Path) -> Registered:
        directory = pathlib.Path(path)
        config_path = directory / "adapter_config.json"
        if not config_path.is_file() or not (directory / "adapter_model.safetensors").is_file():
            raise AdapterLoadError(f"{directory} holds no PEFT adapter (adapter_config.json)")
        config = json.loads(config_path.read_text(encoding="utf-8"))
        base_model = str(config.get("base_model_name_or_path") or "")
        if not base_model:
            raise AdapterLoadError(f"{config_path} names no base_model_name_or_path")
        if int(config.get("r") or 0) > self.max_rank:
            raise AdapterLoadError(
                f"rank {config.get('r')} exceeds this server's max {self.max_rank}"
            )
        entry = Registered(name=name, path=directory, base_model=base_model)
        with self.lock:
            if name in self.registry:
                raise AdapterLoadError(f"The lora adapter '{name}' has already been loaded.")
            self.registry[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        with self.lock:
            entry = self.registry.pop(name, None)
            if entry is None:
                raise UnknownModelError(name)
            if name in self.resident:
                self._evict(name)

    def model_names(self) -> list[str]:
        with self.lock:
            return sorted(set(self.registry) | set(self.bases))

    # ------------------------------------------------------------ loading
    def _base(self, base_model: str) -> LoadedBase:
        loaded = self.bases.get(base_model)
        if loaded is not None:
            return loaded
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            model_dir = catalog.resolve(base_model, cache_dir=self.cache_dir)
        except catalog.CatalogError as e:
            raise UnknownModelError(base_model) from e
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=dtype, attn_implementation="sdpa"
        )
        model.to(self.device).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        loaded = LoadedBase(model=model, tokenizer=tokenizer)
        self.bases[base_model] = loaded
        return loaded

    def _evict(self, name: str) -> None:
        base_model = self.resident.pop(name)
        self.bases[base_model].model.delete_adapter(name)

    def _activate(self, name: str) -> tuple[LoadedBase, bool]:
        """The base to run and whether an adapter is on; loads and evicts as needed."""
        if name not in self.registry:  # a base model by its catalog id: answered plain
            return self._base(name), False
        entry = self.registry[name]
        base = self._base(entry.base_model)
        if name not in self.resident:
            self._load(base, entry)
        self.resident.move_to_end(name)
        base.model.set_adapter(name)
        return base, True

    def _load(self, base: LoadedBase, entry: Registered) -> None:
        from peft import PeftModel

        try:
            if not base.has_adapters:
                base.model = PeftModel.from_pretrained(
                    base.model, str(entry.path), adapter_name=entry.name
                )
                base.has_adapters = True
            else:
                base.model.load_adapter(str(entry.path), adapter_name=entry.name)
        except Exception as e:
            raise AdapterLoadError(f"cannot load adapter {entry.name!r}: {e}") from e
        base.model.to(self.device).eval()
        self.resident[entry.name] = entry.base_model
        self.swaps += 1
        same_base = [n for n, b in self.resident.items() if b == entry.base_model]
        for old in same_base[: max(0, len(same_base) - self.max_adapters)]:
            self._evict(old)

    # ------------------------------------------------------------ serving
    def stream(
        self, name: str, messages: list[dict[str, str]], decoding: Decoding
    ) -> Iterator[Delta]:
        """The answer as deltas; the engine is held until the generator ends or is closed."""
        with self.lock:
            base, adapter_on = self._activate(name)
            ids = chat_prompt_ids(base.tokenizer, messages)
            if adapter_on or not base.has_adapters:
                yield from generate_stream(base.model, base.tokenizer, ids, decoding)
            else:
                with base.model.disable_adapter():
                    yield from generate_stream(base.model, base.tokenizer, ids, decoding)
