#!/usr/bin/env python3
"""Verify a Partage adapter archive offline: only the archive and Partage's public key are needed.

    python verify_adapter.py ft-adapter.tar.gz partage-provenance.pem

Needs Python 3.9+ and the `cryptography` package (pip install cryptography); nothing else, no
network. It checks that:
  1. `provenance.intoto.json` is a DSSE envelope signed by the key (Ed25519, DSSE v1 PAE);
  2. its payload is an in-toto Statement v1 with a SLSA provenance v1 predicate;
  3. every file of the archive is a subject of the statement, with the same sha256, and every
     subject is in the archive (nothing added, removed or changed);
  4. `manifest.json`'s own file hashes agree with the files.
Exit status 0 and "OK" when all hold; 1 and the first reason otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import tarfile

PROVENANCE_NAME = "provenance.intoto.json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"


class Refused(Exception):
    pass


def pae(payload_type: str, payload: bytes) -> bytes:
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _archive_files(path: str) -> tuple[dict[str, str], bytes | None, bytes | None]:
    """sha256 of every regular file, the envelope's bytes and the manifest's bytes."""
    digests: dict[str, str] = {}
    envelope = manifest = None
    with tarfile.open(path, mode="r:gz") as tar:
        for member in tar:
            if member.isdir():
                continue
            if not member.isfile():
                raise Refused(f"{member.name}: links and special files are not allowed")
            name = member.name
            if name in digests or (name == PROVENANCE_NAME and envelope is not None):
                raise Refused(f"{name} appears twice in the archive")
            reader = tar.extractfile(member)
            assert reader is not None
            if name.lstrip("./") == PROVENANCE_NAME:
                envelope = reader.read()
                continue
            digest = hashlib.sha256()
            keep = name.rsplit("/", 1)[-1] == "manifest.json"
            kept = bytearray()
            while chunk := reader.read(1 << 20):
                digest.update(chunk)
                if keep:
                    kept += chunk
            digests[name] = digest.hexdigest()
            if keep:
                manifest = bytes(kept)
    return digests, envelope, manifest


def _statement(envelope_bytes: bytes, public_key_pem: bytes) -> dict:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(public_key_pem)
    if not isinstance(key, Ed25519PublicKey):
        raise Refused("the public key is not an Ed25519 key")
    envelope = json.loads(envelope_bytes)
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        raise Refused(f"payloadType is {envelope.get('payloadType')!r}, not {PAYLOAD_TYPE}")
    payload = base64.b64decode(envelope["payload"], validate=True)
    signed = pae(PAYLOAD_TYPE, payload)
    for signature in envelope.get("signatures") or []:
        try:
            key.verify(base64.b64decode(signature["sig"], validate=True), signed)
        except (InvalidSignature, ValueError, KeyError):
            continue
        return json.loads(payload)
    raise Refused("no signature in provenance.intoto.json verifies with this public key")


def verify(archive_path: str, public_key_pem: bytes) -> dict:
    """The verified statement; raises Refused with the reason otherwise."""
    try:
        files, envelope, manifest = _archive_files(archive_path)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise Refused(f"not a readable .tar.gz archive: {e}") from e
    if envelope is None:
        raise Refused(f"the archive has no {PROVENANCE_NAME}: it is not signed")
    statement = _statement(envelope, public_key_pem)
    if statement.get("_type") != STATEMENT_TYPE:
        raise Refused(f"_type is {statement.get('_type')!r}, not {STATEMENT_TYPE}")
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise Refused(f"predicateType is {statement.get('predicateType')!r}")
    subjects = {s["name"]: s["digest"]["sha256"] for s in statement.get("subject") or []}
    for name, digest in files.items():
        if name not in subjects:
            raise Refused(f"{name} is in the archive but not in the signed statement")
        if subjects[name] != digest:
            raise Refused(f"{name} was changed: sha256 {digest} is not the signed {subjects[name]}")
    missing = sorted(set(subjects) - set(files))
    if missing:
        raise Refused(f"signed file(s) missing from the archive: {', '.join(missing)}")
    if manifest is not None:
        by_base = {name.rsplit("/", 1)[-1]: digest for name, digest in files.items()}
        for name, entry in (json.loads(manifest).get("files") or {}).items():
            if by_base.get(name) != entry.get("sha256"):
                raise Refused(f"manifest.json's sha256 for {name} does not match the file")
    return statement


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        with open(argv[2], "rb") as key_file:
            statement = verify(argv[1], key_file.read())
    except Refused as e:
        print(f"REFUSED: {e}", file=sys.stderr)
        return 1
    run = statement["predicate"].get("runDetails", {}).get("metadata", {})
    params = statement["predicate"]["buildDefinition"].get("externalParameters", {})
    print(
        f"OK: {len(statement['subject'])} file(s) signed by Partage; "
        f"job {run.get('invocationId')}, base model {params.get('model')}, "
        f"training file {params.get('training_file')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
