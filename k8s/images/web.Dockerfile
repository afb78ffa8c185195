# Partage web, Celery worker/beat, reconciler and migrations: one image, several commands.
# Build from the repository root:  docker build -f k8s/images/web.Dockerfile -t partage-web .
# CI pushes it and records its digest in k8s/overlays/prod (images pinned by digest).
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY marketplace ./marketplace
COPY workers ./workers
# The web image never trains: install torch's CPU wheel only (the pin lives in pyproject).
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && /opt/venv/bin/pip install .

FROM python:3.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
RUN groupadd --gid 10001 partage && useradd --uid 10001 --gid 10001 --no-create-home partage
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY manage.py ./
COPY marketplace ./marketplace
COPY workers ./workers
RUN PARTAGE_ENV=development DJANGO_SECRET_KEY=build-only-not-a-secret-build-only-not-a-secret \
    python manage.py collectstatic --noinput
USER 10001:10001
EXPOSE 8000
CMD ["gunicorn", "marketplace.wsgi", "-c", "python:marketplace.gunicorn_conf", "--bind", "0.0.0.0:8000", "--workers", "4"]
