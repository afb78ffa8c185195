"""Signed provenance for adapters: an in-toto Statement (v1) with a SLSA provenance (v1)
predicate, in a DSSE envelope signed with the platform's Ed25519 key.

The signed envelope travels inside the adapter archive as `provenance.intoto.json`, so the
archive and the public key (published at /.well-known/partage-provenance.pem) are enough to
verify it offline: `python tools/verify_adapter.py adapter.tar.gz partage-provenance.pem`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
import tempfile
from functools import cache
from typing import IO, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings

from marketplace.errors import InvalidInput
from marketplace.finetuning.models import FineTuningJob

PROVENANCE_NAME = "provenance.intoto.json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://partage.eu/fine-tuning/lora/v1"


@cache
def _private_key(pem: str) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, Ed25519PrivateKey)  # settings refused anything else
    return key


def public_key_pem() -> str:
    key = _private_key(settings.PARTAGE_PROVENANCE_KEY).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def key_id() -> str:
    """sha256 of the raw public key: names the key in envelopes (rotation keeps old ones valid)."""
    raw = (
        _private_key(settings.PARTAGE_PROVENANCE_KEY)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return hashlib.sha256(raw).hexdigest()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is actually signed."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def envelope_sign(statement: dict[str, Any]) -> dict[str, Any]:
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    signature = _private_key(settings.PARTAGE_PROVENANCE_KEY).sign(pae(PAYLOAD_TYPE, payload))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": key_id(), "sig": base64.b64encode(signature).decode()}],
    }


def statement_for(
    *, job: FineTuningJob, subjects: dict[str, str], manifest: dict[str, Any]
) -> dict[str, Any]:
    """The in-toto Statement: the archive's files as subjects, the job as the build."""
    dependencies = []
    base = manifest.get("base_model") or {}
    if base.get("weights_sha256"):
        dependencies.append(
            {"uri": f"partage:base-model/{job.model}", "digest": {"sha256": base["weights_sha256"]}}
        )
    for role, file in (("training", job.training_file), ("validation", job.validation_file)):
        if file is not None and file.sha256:
            dependencies.append(
                {
                    "uri": f"partage:file/{file.id}",
                    "name": f"{role}_file",
                    "digest": {"sha256": file.sha256},
                }
            )
    return {
        "_type": STATEMENT_TYPE,
        "subject": [
            {"name": name, "digest": {"sha256": digest}}
            for name, digest in sorted(subjects.items())
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "model": job.model,
                    "training_file": job.training_file_id,
                    "validation_file": job.validation_file_id,
                    "hyperparameters": job.hyperparameters,
                    "lora": job.lora,
                    "seed": job.seed,
                },
                "internalParameters": {
                    "gpu_flavor": job.gpu_flavor,
                    "gpu_count": job.gpu_count,
                    "library_versions": manifest.get("library_versions") or {},
                },
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {"id": f"{settings.PARTAGE_PUBLIC_URL}/fine-tuning"},
                "metadata": {
                    "invocationId": job.id,
                    "startedOn": job.started_at.isoformat().replace("+00:00", "Z")
                    if job.started_at
                    else None,
                },
            },
        },
    }


def adapter_archive_sign(
    *, job: FineTuningJob, archive: IO[bytes], manifest: dict[str, Any]
) -> IO[bytes]:
    """A copy of the adapter archive with its signed provenance added, in a temporary file.

    Streams member by member: neither archive is held in memory. A second signature replaces
    the first (a redelivered adapter is signed once, as what it is now).
    """
    archive.seek(0)
    signed = tempfile.TemporaryFile()  # noqa: SIM115 - the caller reads then closes it
    subjects: dict[str, str] = {}
    try:
        with (
            tarfile.open(fileobj=archive, mode="r:gz") as source,
            tarfile.open(fileobj=signed, mode="w:gz") as target,
        ):
            for member in source:
                if member.name.lstrip("./") == PROVENANCE_NAME:
                    continue
                if member.isfile():
                    subjects[member.name] = _copy_member(source, target, member)
                elif member.isdir():
                    target.addfile(member)
                else:
                    raise InvalidInput(
                        f"The adapter archive holds {member.name!r}, which is neither a file "
                        "nor a folder; links are refused.",
                        param="archive",
                    )
            envelope = json.dumps(
                envelope_sign(statement_for(job=job, subjects=subjects, manifest=manifest)),
                indent=2,
            ).encode()
            info = tarfile.TarInfo(PROVENANCE_NAME)
            info.size = len(envelope)
            info.mode = 0o644
            target.addfile(info, io.BytesIO(envelope))
    except (tarfile.TarError, EOFError, OSError) as e:
        signed.close()
        raise InvalidInput(
            f"The adapter archive is not a readable .tar.gz ({e}).", param="archive"
        ) from e
    signed.seek(0)
    return signed


def _copy_member(source: tarfile.TarFile, target: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    reader = source.extractfile(member)
    assert reader is not None
    hashing = _HashingReader(reader)
    target.addfile(member, hashing)
    return hashing.hexdigest()


class _HashingReader:
    """Passes a member's bytes through to the new archive while hashing them."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self._stream.read(size)
        self._digest.update(chunk)
        return chunk

    def hexdigest(self) -> str:
        return self._digest.hexdigest()
