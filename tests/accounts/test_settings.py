"""Settings fail at start-up with a clear message on bad values, and production needs secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _check(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "REDIS_URL", "PARTAGE_", "DJANGO_"))
    }
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=REPO,
        env={**clean, "PARTAGE_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"PARTAGE_EXECUTOR": "slurm"},
            "PARTAGE_EXECUTOR='slurm' is invalid: expected one of local, kubernetes",
        ),
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL is invalid"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL='localhost:6379' is invalid"),
        (
            {"PARTAGE_ENV": "production"},
            "DJANGO_SECRET_KEY is required when PARTAGE_ENV=production",
        ),
        (
            {
                "PARTAGE_ENV": "production",
                "DJANGO_SECRET_KEY": "x" * 50,
                "DJANGO_ALLOWED_HOSTS": "p.example",
            },
            "DATABASE_URL is required when PARTAGE_ENV=production",
        ),
        ({"DJANGO_SECRET_KEY_FILE": "/nonexistent/secret"}, "DJANGO_SECRET_KEY_FILE points to"),
        (
            {
                "PARTAGE_ENV": "production",
                "DJANGO_SECRET_KEY": "x" * 50,
                "DJANGO_ALLOWED_HOSTS": "p.example",
                "DATABASE_URL": "postgres://u@db.example:5432/partage",
                "PARTAGE_STRIPE_ENABLED": "true",
            },
            "PARTAGE_STRIPE_SECRET_KEY is required when PARTAGE_ENV=production",
        ),
        (
            {"PARTAGE_STRIPE_WEBHOOK_SECRET_FILE": "/nonexistent/whsec"},
            "PARTAGE_STRIPE_WEBHOOK_SECRET_FILE points to",
        ),
        ({"PARTAGE_TOPUP_MIN": "500", "PARTAGE_TOPUP_MAX": "100"}, "PARTAGE_TOPUP_MIN (500)"),
        ({"PARTAGE_TOPUP_MAX": "0"}, "PARTAGE_TOPUP_MAX='0' is invalid"),
        (
            {
                "PARTAGE_ENV": "production",
                "DJANGO_SECRET_KEY": "x" * 50,
                "DJANGO_ALLOWED_HOSTS": "p.example",
                "DATABASE_URL": "postgres://p@db.invalid:5432/p",
            },
            "PARTAGE_PROVENANCE_KEY is required when PARTAGE_ENV=production",
        ),
        (
            {"PARTAGE_PROVENANCE_KEY": "not a key"},
            "PARTAGE_PROVENANCE_KEY is not a PEM private key",
        ),
    ],
)
def test_bad_settings_fail_clearly(env: dict[str, str], expected: str, tmp_path: Path) -> None:
    result = _check(env, tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr[-2000:]


def test_secret_key_is_generated_once_and_kept(tmp_path: Path) -> None:
    assert _check({}, tmp_path).returncode == 0
    first = (tmp_path / "secret_key").read_text()
    assert _check({}, tmp_path).returncode == 0
    assert (tmp_path / "secret_key").read_text() == first
    assert oct((tmp_path / "secret_key").stat().st_mode)[-3:] == "600"


def test_the_provenance_key_is_generated_once_or_read_from_a_file(tmp_path: Path) -> None:
    from tests.fakes.keys import provenance_key_pem

    assert _check({}, tmp_path).returncode == 0
    generated = tmp_path / "provenance_ed25519.pem"
    first = generated.read_text()
    assert _check({}, tmp_path).returncode == 0 and generated.read_text() == first
    assert oct(generated.stat().st_mode)[-3:] == "600"
    mounted = tmp_path / "mounted-key"
    mounted.write_text(provenance_key_pem())
    assert _check({"PARTAGE_PROVENANCE_KEY_FILE": str(mounted)}, tmp_path).returncode == 0


def test_secret_can_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "mounted"
    secret.write_text("s" * 50)
    result = _check({"DJANGO_SECRET_KEY_FILE": str(secret)}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "secret_key").exists()
