"""Partage workers: Celery tasks, executors, the reconciler, the pod agent and the LoRA core."""
