"""Fixtures for the Kubernetes tests: a fake API server and the official client pointed at it."""

from __future__ import annotations

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


@pytest.fixture
def kubelet_api(tmp_path: Path) -> Iterator[FakeKubeApiServer]:
    with FakeKubeApiServer(kubelet=True, kubeconfig_dir=str(tmp_path), kubelet_cwd=str(ROOT)) as api:
        yield api
