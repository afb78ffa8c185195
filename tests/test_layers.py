"""The layers of docs/architecture.md are import-linter contracts (pyproject.toml), run by
`make lint`. The real tree keeps them, and a module that breaks any one of them fails the run,
naming the contract: each case adds one violating module to a copy of the tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

CONTRACTS = {
    "lora-standalone": "The LoRA core runs alone in a pod",
    "domain-below-consumers": "Domain apps never import the HTTP layers",
    "api-portal-independent": "The partner API and the portal are independent of each other",
    "no-cycles": "No import cycles between apps",
}


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _verdicts(output: str) -> dict[str, str]:
    """Contract id → KEPT / BROKEN, from the summary lines (names may wrap)."""
    flat = " ".join(output.split())
    verdicts = {}
    for contract_id, name in CONTRACTS.items():
        at = flat.find(name)
        assert at >= 0, f"{name!r} is not in the output:\n{output}"
        after = flat[at:]
        kept, broken = after.find(" KEPT"), after.find(" BROKEN")
        candidates = [i for i in (kept, broken) if i >= 0]
        verdicts[contract_id] = "KEPT" if min(candidates) == kept else "BROKEN"
    return verdicts


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layers")
    ignore = shutil.ignore_patterns("__pycache__", "static", "templates", "*.md")
    for package in ("marketplace", "workers"):
        shutil.copytree(REPO / package, root / package, ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_tree_keeps_every_contract() -> None:
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(_verdicts(result.stdout).values()) == {"KEPT"}


@pytest.mark.parametrize(
    ("contract_id", "module", "source"),
    [
        ("lora-standalone", "workers/lora/violation.py", "import django.conf\n"),
        (
            "lora-standalone",
            "workers/lora/violation.py",
            "from marketplace.errors import InvalidInput\n",
        ),
        (
            "domain-below-consumers",
            "marketplace/billing/violation.py",
            "from marketplace.api.webhooks import services\n",
        ),
        (
            "domain-below-consumers",
            "marketplace/finetuning/violation.py",
            "from workers.executors import base\n",
        ),
        (
            "domain-below-consumers",
            "marketplace/capacity/violation.py",
            "from marketplace.notifications import emails\n",
        ),
        (
            "api-portal-independent",
            "marketplace/api/violation.py",
            "from marketplace.portal import forms\n",
        ),
        (
            # finetuning imports accounts: accounts importing finetuning closes a circle.
            "no-cycles",
            "marketplace/accounts/violation.py",
            "from marketplace.finetuning import models\n",
        ),
        (
            "no-cycles",
            "marketplace/quotas/world_violation.py",
            "from marketplace.quotas import decide\n\n"
            "# world imports this module below: world -> here -> decide -> world\n",
        ),
    ],
)
def test_breaking_a_contract_fails_the_run(
    tree_copy: Path, contract_id: str, module: str, source: str
) -> None:
    path = tree_copy / module
    path.write_text(source)
    extra: Path | None = None
    if module.endswith("world_violation.py"):
        extra = tree_copy / "marketplace/quotas/world.py"
        original = extra.read_text()
        extra.write_text(original + "\nfrom marketplace.quotas import world_violation  # noqa\n")
    try:
        result = _lint(tree_copy)
    finally:
        path.unlink()
        if extra is not None:
            extra.write_text(original)
    assert result.returncode != 0, result.stdout
    verdicts = _verdicts(result.stdout)
    assert verdicts[contract_id] == "BROKEN", result.stdout
    # (An import that breaks a layer may close a cycle too: other contracts may break with it.)
