"""One typed reader for every environment variable Partage uses.

Each setting has an embedded default for local runs; production (`PARTAGE_ENV=production`) can
require a value. A variable can also be given as a file path in `<NAME>_FILE`, which is how
Kubernetes mounts secrets. A bad value raises ImproperlyConfigured at start-up, naming the
variable, what is wrong and how to fix it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

T = TypeVar("T")

_MISSING = object()


def raw(name: str) -> str | None:
    """The variable's text, from `NAME` or the file named by `NAME_FILE`; None when unset."""
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ImproperlyConfigured(
                f"{name}_FILE points to {file_name!r}, which cannot be read ({e.strerror}). "
                f"Mount the secret there or unset {name}_FILE."
            ) from e
    value = os.environ.get(name)
    return value if value not in (None, "") else None


def get(
    name: str,
    parse: Callable[[str], T],
    *,
    default: T | object = _MISSING,
    required_in_production: bool = False,
    production: bool = False,
    hint: str = "",
) -> T:
    text = raw(name)
    if text is None:
        if required_in_production and production:
            raise ImproperlyConfigured(
                f"{name} is required when PARTAGE_ENV=production. {hint}".strip()
            )
        if default is _MISSING:
            raise ImproperlyConfigured(f"{name} is required. {hint}".strip())
        return default  # type: ignore[return-value]
    try:
        return parse(text)
    except (ValueError, TypeError) as e:
        raise ImproperlyConfigured(f"{name}={text!r} is invalid: {e}. {hint}".strip()) from e


def as_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected one of true/false, yes/no, on/off, 1/0")


def as_int(text: str) -> int:
    return int(text.strip())


def as_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def as_url_map(text: str) -> dict[str, str]:
    """A JSON object of names to http(s) URLs, e.g. {"base/model": "http://vllm:8000"}."""
    import json

    value = json.loads(text)
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v.startswith(("http://", "https://"))
        for k, v in value.items()
    ):
        raise ValueError('expected a JSON object of names to URLs, {"name": "http://host:port"}')
    return {k: v.rstrip("/") for k, v in value.items()}


def one_of(choices: Iterable[str]) -> Callable[[str], str]:
    allowed = tuple(choices)

    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return value

    return parse


def database_from_url(url: str) -> dict[str, object]:
    """Django DATABASES entry from `postgres://user:pass@host:port/name` or `sqlite:///path`."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = parts.path[1:] if parts.path.startswith("//") else parts.path
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": path or ":memory:"}
    if parts.scheme in {"postgres", "postgresql", "pgsql"}:
        name = unquote(parts.path.lstrip("/"))
        if not name:
            raise ValueError("the URL names no database (postgres://user@host:5432/<name>)")
        options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "OPTIONS": options,
            "CONN_MAX_AGE": 60,
            "CONN_HEALTH_CHECKS": True,
        }
    raise ValueError("expected a postgres://… or sqlite:///… URL")


def redis_url(text: str) -> str:
    if urlsplit(text).scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("expected redis://host:port/db")
    return text
