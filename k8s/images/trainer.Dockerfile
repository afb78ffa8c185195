# The training pod: CUDA torch, the LoRA core and the pod agent (`python -m workers.agent`).
# It holds no Django settings and no secrets: a per-job token arrives in the environment.
# Build from the repository root:  docker build -f k8s/images/trainer.Dockerfile -t partage-trainer .
# Reference it by digest only (PARTAGE_K8S_IMAGE=ghcr.io/partage/trainer@sha256:…).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS base
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common ca-certificates \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv \
 && /opt/venv/bin/pip install --index-url https://download.pytorch.org/whl/cu128 "torch==2.13.0" \
 && /opt/venv/bin/pip install "transformers>=4.57,<6" "peft>=0.17,<1" "safetensors>=0.4" \
      "accelerate>=1.0" "sentencepiece>=0.2" "requests>=2.31"

FROM base
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp TMPDIR=/tmp HF_HUB_OFFLINE=1 PARTAGE_MODEL_CACHE=/models
RUN groupadd --gid 10001 partage && useradd --uid 10001 --gid 10001 --no-create-home partage
WORKDIR /app
# Only the pod's code: the agent and the LoRA core (neither imports Django).
# workers/protocol.py: exit codes and event names, shared with the marketplace (stdlib only);
# workers/catalog.py: where base models are cached (the trainer resolves its model there).
COPY workers/__init__.py workers/agent.py workers/protocol.py workers/catalog.py workers/spool.py ./workers/
COPY workers/lora ./workers/lora
USER 10001:10001
# Exit codes: 0 ok, 1 internal error, 3 user error, 4 preempted after a checkpoint.
ENTRYPOINT ["python", "-m", "workers.agent"]
