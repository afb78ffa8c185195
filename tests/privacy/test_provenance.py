"""Adapter provenance: the archive users download carries an in-toto Statement (SLSA provenance
predicate) signed with the platform's Ed25519 key; the offline verifier, given only the archive
and the public key from the well-known URL, accepts it and refuses any tampering."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.test import Client

from tests.privacy.conftest import Acme

pytestmark = pytest.mark.django_db

VERIFIER = Path(__file__).resolve().parents[2] / "tools" / "verify_adapter.py"


def _verify(archive: Path, key: Path) -> subprocess.CompletedProcess[str]:
    # A bare interpreter, outside the repository: only the archive, the key and `cryptography`.
    return subprocess.run(
        [sys.executable, "-I", str(VERIFIER), str(archive), str(key)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=archive.parent,
        check=False,
    )


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def _repack(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def downloaded(acme: Acme, tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """The adapter as a customer downloads it, and the key as published."""
    from rest_framework.test import APIClient

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {acme.key_secret}")
    file_id = api.get(f"/v1/fine_tuning/jobs/{acme.job.id}").json()["result_files"][0]
    response = api.get(f"/v1/files/{file_id}/content")
    assert response.status_code == 200
    archive = b"".join(response.streaming_content)
    key = Client().get("/.well-known/partage-provenance.pem")
    assert key.status_code == 200 and key.content.startswith(b"-----BEGIN PUBLIC KEY-----")
    (tmp_path / "adapter.tar.gz").write_bytes(archive)
    (tmp_path / "partage.pem").write_bytes(key.content)
    return tmp_path / "adapter.tar.gz", tmp_path / "partage.pem", _members(archive)


def test_the_signed_statement_names_every_file_and_the_job(
    acme: Acme, downloaded: tuple[Path, Path, dict[str, bytes]]
) -> None:
    archive, key, members = downloaded
    envelope = json.loads(members["provenance.intoto.json"])
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert {s["name"] for s in statement["subject"]} == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "manifest.json",
    }
    build = statement["predicate"]["buildDefinition"]
    assert build["externalParameters"]["training_file"] == acme.file.id
    assert {
        "uri": f"partage:file/{acme.file.id}",
        "name": "training_file",
        "digest": {"sha256": acme.file.sha256},
    } in build["resolvedDependencies"]
    assert statement["predicate"]["runDetails"]["metadata"]["invocationId"] == acme.job.id

    result = _verify(archive, key)
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.startswith("OK: 3 file(s) signed by Partage") and acme.job.id in result.stdout
    )


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda m: {**m, "adapter_model.safetensors": b"other weights"}, "was changed"),
        (
            lambda m: {**m, "manifest.json": m["manifest.json"].replace(b"r", b"R", 1)},
            "was changed",
        ),
        (lambda m: {**m, "extra.bin": b"smuggled"}, "not in the signed statement"),
        (lambda m: {k: v for k, v in m.items() if k != "adapter_config.json"}, "missing"),
        (lambda m: {k: v for k, v in m.items() if k != "provenance.intoto.json"}, "not signed"),
    ],
    ids=["weights", "manifest", "added-file", "removed-file", "unsigned"],
)
def test_a_tampered_adapter_is_refused(
    downloaded: tuple[Path, Path, dict[str, bytes]], tamper: object, reason: str
) -> None:
    archive, key, members = downloaded
    archive.write_bytes(_repack(tamper(members)))  # type: ignore[operator]
    result = _verify(archive, key)
    assert result.returncode == 1 and result.stderr.startswith("REFUSED"), result
    assert reason in result.stderr


def test_a_rewritten_statement_or_another_key_is_refused(
    downloaded: tuple[Path, Path, dict[str, bytes]],
) -> None:
    archive, key, members = downloaded
    envelope = json.loads(members["provenance.intoto.json"])
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["subject"][0]["digest"]["sha256"] = "0" * 64
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    archive.write_bytes(
        _repack({**members, "provenance.intoto.json": json.dumps(envelope).encode()})
    )
    result = _verify(archive, key)
    assert result.returncode == 1 and "no signature" in result.stderr

    archive.write_bytes(_repack(members))
    assert _verify(archive, key).returncode == 0
    stranger = Ed25519PrivateKey.generate().public_key()
    key.write_bytes(
        stranger.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    result = _verify(archive, key)
    assert result.returncode == 1 and "no signature" in result.stderr
