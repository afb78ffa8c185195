"""Fixtures for the Kubernetes tests: a fake API server and the official client pointed at it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `tests.fakes` is imported as a package from the repo root
    sys.path.insert(0, str(ROOT))

from tests.fakes.kube_apiserver import FakeKubeApiServer  # noqa: E402


@pytest.fixture
def fake_api(tmp_path: Path) -> Iterator[FakeKubeApiServer]:
    with FakeKubeApiServer(kubeconfig_dir=str(tmp_path)) as api:
        yield api


def kubelet_env() -> dict[str, str]:
    """The pods' base environment: this interpreter's `python` first on PATH, no Django settings."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture
def kubelet_api(tmp_path: Path) -> Iterator[FakeKubeApiServer]:
    with FakeKubeApiServer(
        kubelet=True, kubeconfig_dir=str(tmp_path), kubelet_cwd=str(ROOT), kubelet_env=kubelet_env()
    ) as api:
        yield api
