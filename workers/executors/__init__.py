"""Executors behind one interface (base.Executor): local processes and Kubernetes Jobs."""

from __future__ import annotations

from functools import cache

from workers.executors.base import Executor


@cache
def get_executor(name: str) -> Executor:
    if name == "local":
        from workers.executors.local import LocalExecutor

        return LocalExecutor()
    if name == "kubernetes":
        from workers.executors.kubernetes import KubernetesExecutor

        return KubernetesExecutor()
    raise ValueError(f"unknown executor {name!r}: use 'local' or 'kubernetes'")
