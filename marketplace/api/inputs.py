"""Typed access to request input."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework import exceptions
from rest_framework.request import Request


def body_of(request: Request) -> Mapping[str, Any]:
    """The request body as a mapping; a JSON array or scalar is a 400 that says so."""
    data: object = request.data
    if not isinstance(data, Mapping):
        raise exceptions.ParseError(
            f"The request body must be a JSON object, not a {type(data).__name__}: "
            'send {"field": value, ...}.'
        )
    return data
