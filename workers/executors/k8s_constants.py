"""Label keys, names and numbers shared by the Kubernetes executor, the reconciler and k8s/.

k8s/base/networkpolicy.yaml and k8s/base/rbac.yaml select training pods by these labels.
"""

from __future__ import annotations

# Labels on every training Job and its pods.
LABEL_PREFIX = "partage.io"
LABEL_ORG = f"{LABEL_PREFIX}/org"
LABEL_JOB = f"{LABEL_PREFIX}/job"
LABEL_ATTEMPT = f"{LABEL_PREFIX}/attempt"
LABEL_POOL = f"{LABEL_PREFIX}/pool"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_NAME = "app.kubernetes.io/name"
MANAGED_BY = "partage"
COMPONENT_TRAINING = "training"
TRAINER_NAME = "partage-trainer"
# Set by the Job controller on the pods it creates.
LABEL_JOB_NAME = "batch.kubernetes.io/job-name"

# Selects every training Job (and pod) Partage manages in a namespace.
MANAGED_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_COMPONENT}={COMPONENT_TRAINING}"

CONTAINER_NAME = "trainer"

# The attempt's callback token lives in a Secret of its own, owned by the Job (so the garbage
# collector deletes it with the Job), and reaches the trainer as PARTAGE_JOB_TOKEN.
TOKEN_SECRET_SUFFIX = "-token"  # noqa: S105 - names, not secrets
TOKEN_SECRET_KEY = "token"  # noqa: S105
TOKEN_ENV = "PARTAGE_JOB_TOKEN"  # noqa: S105
AGENT_COMMAND = ["python", "-m", "workers.agent"]

# Volumes and where they are mounted in the trainer container.
VOLUME_SHM = "dshm"
VOLUME_TMP = "tmp"
VOLUME_MODEL_CACHE = "model-cache"

# The GPU taint that GPU node pools carry (NVIDIA GPU operator / cloud defaults).
GPU_TAINT_KEY = "nvidia.com/gpu"
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"

# Exit codes the agent reports to Partage itself before exiting (workers/executors/base.py):
# the platform, not the Job controller, decides what follows them (fail, or requeue as a new
# attempt that resumes from the checkpoint), so they fail the Job at once.
REPORTED_EXIT_CODES = (1, 3, 4)
