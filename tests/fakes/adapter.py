"""A small but real adapter archive (.tar.gz with the three files a trainer delivers), for tests
that store an adapter without training one: the platform re-packs it to add its signed provenance.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile


def adapter_archive(weights: bytes = b"fake safetensors bytes") -> io.BytesIO:
    config = json.dumps({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}).encode()
    files = {"adapter_config.json": config, "adapter_model.safetensors": weights}
    manifest = {
        "format": "partage-lora-adapter/1",
        "files": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            for name, data in files.items()
        },
    }
    files["manifest.json"] = json.dumps(manifest).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer
