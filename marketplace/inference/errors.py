"""Inference errors, in the one domain hierarchy (the API answers them in OpenAI's shape)."""

from __future__ import annotations

from marketplace.errors import Conflict, NotFound, PartageError


class ModelNotFound(NotFound):
    code = "model_not_found"


class ModelNotReady(Conflict):
    code = "model_not_ready"


class InferenceUnavailable(PartageError):
    code = "inference_unavailable"
    error_type = "server_error"
    http_status = 503
