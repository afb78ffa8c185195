"""URL map of the /v1 partner API. Each domain owns a routes module, included below."""

from typing import Any

from django.urls import include, path, re_path
from drf_spectacular.views import (
    SpectacularJSONAPIView,
    SpectacularRedocView,
    SpectacularSwaggerView,
)

from marketplace.api import views

# The schema covers /v1 only (not the trainers' internal API); docs need no key.
_public: dict[str, list[Any]] = {
    "authentication_classes": [],
    "permission_classes": [],
    "throttle_classes": [],
}

urlpatterns = [
    path(
        "openapi.json",
        SpectacularJSONAPIView.as_view(urlconf="marketplace.api.schema_urls", **_public),
        name="openapi",
    ),
    path("docs", SpectacularSwaggerView.as_view(url_name="openapi", **_public), name="docs"),
    path("redoc", SpectacularRedocView.as_view(url_name="openapi", **_public), name="redoc"),
    path("files", views.FileListView.as_view(), name="files"),
    path("files/<str:file_id>", views.FileDetailView.as_view(), name="file"),
    path("files/<str:file_id>/content", views.FileContentView.as_view(), name="file-content"),
    path("fine_tuning/jobs", views.JobListView.as_view(), name="jobs"),
    path("fine_tuning/jobs/<str:job_id>", views.JobDetailView.as_view(), name="job"),
    path(
        "fine_tuning/jobs/<str:job_id>/cancel",
        views.JobActionView.as_view(action_name="cancel"),
        name="job-cancel",
    ),
    path(
        "fine_tuning/jobs/<str:job_id>/pause",
        views.JobActionView.as_view(action_name="pause"),
        name="job-pause",
    ),
    path(
        "fine_tuning/jobs/<str:job_id>/resume",
        views.JobActionView.as_view(action_name="resume"),
        name="job-resume",
    ),
    path("fine_tuning/jobs/<str:job_id>/events", views.JobEventsView.as_view(), name="job-events"),
    path(
        "fine_tuning/jobs/<str:job_id>/events/stream",
        views.JobEventStreamView.as_view(),
        name="job-events-stream",
    ),
    path(
        "fine_tuning/jobs/<str:job_id>/checkpoints",
        views.JobCheckpointsView.as_view(),
        name="job-checkpoints",
    ),
    path("models", views.ModelListView.as_view(), name="models"),
    path("models/<path:model_id>", views.ModelDetailView.as_view(), name="model"),
    path("_bench/bare", views.bench_bare, name="bench-bare"),
    # Each domain owns its routes module.
    path("", include("marketplace.api.routes_accounts")),
    path("", include("marketplace.api.routes_capacity")),
    path("", include("marketplace.api.routes_quotas")),
    path("", include("marketplace.api.routes_billing")),
    path("", include("marketplace.api.routes_webhooks")),
    path("", include("marketplace.api.routes_inference")),
    path("", include("marketplace.api.routes_privacy")),
    # Last: anything else under /v1 is a 404 in the API's error shape.
    re_path(r"^(?P<unmatched>.*)$", views.not_found, name="not-found"),
]
