"""The trainer image copies only the pod's code (k8s/images/trainer.Dockerfile): every module
that the agent and the LoRA core import, transitively, must be among what it copies. A new
import of a module the image lacks would only fail inside a pod; this fails here instead."""

from __future__ import annotations

import re
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parent.parent.parent
DOCKERFILE = REPO / "k8s" / "images" / "trainer.Dockerfile"


def _copied(dockerfile: str) -> list[str]:
    """Repository paths the image copies (files, or folders with all they hold)."""
    sources: list[str] = []
    for line in dockerfile.splitlines():
        if re.match(r"^\s*COPY\s", line) and "--from" not in line:
            sources += line.split()[1:-1]
    return sources


def _pod_modules() -> set[str]:
    graph = grimp.build_graph("workers", include_external_packages=False)
    roots = {"workers.agent"} | graph.find_descendants("workers.lora") | {"workers.lora"}
    needed = set(roots)
    for root in roots:
        needed |= graph.find_upstream_modules(root)
    # A package's __init__ runs when a module under it is imported.
    for module in list(needed):
        parts = module.split(".")
        needed |= {".".join(parts[:i]) for i in range(1, len(parts))}
    return {m for m in needed if m == "workers" or m.startswith("workers.")}


def _path(module: str) -> str:
    as_package = REPO / module.replace(".", "/") / "__init__.py"
    if as_package.exists():
        return str(as_package.relative_to(REPO))
    return module.replace(".", "/") + ".py"


def _missing(dockerfile: str) -> list[str]:
    copied = _copied(dockerfile)
    return sorted(
        path
        for path in map(_path, _pod_modules())
        if not any(path == c or path.startswith(c.rstrip("/") + "/") for c in copied)
    )


def test_the_trainer_image_holds_every_module_the_pod_imports() -> None:
    missing = _missing(DOCKERFILE.read_text())
    assert missing == [], f"add these to {DOCKERFILE.name}'s COPY lines: {missing}"


def test_a_module_the_image_lacks_is_named() -> None:
    """The image lacked workers/catalog.py, which the trainer imports: the check names it."""
    lacking = DOCKERFILE.read_text().replace(" workers/catalog.py", "")
    assert _missing(lacking) == ["workers/catalog.py"]
