"""URL map of the /v1 partner API."""

from django.urls import include, path

from marketplace.api import views

urlpatterns = [
    path("files", views.FileListView.as_view(), name="files"),
    path("files/<str:file_id>", views.FileDetailView.as_view(), name="file"),
    path("files/<str:file_id>/content", views.FileContentView.as_view(), name="file-content"),
    path("fine_tuning/jobs", views.JobListView.as_view(), name="jobs"),
    path("fine_tuning/jobs/<str:job_id>", views.JobDetailView.as_view(), name="job"),
    path("fine_tuning/jobs/<str:job_id>/cancel", views.JobActionView.as_view(action_name="cancel"), name="job-cancel"),
    path("fine_tuning/jobs/<str:job_id>/pause", views.JobActionView.as_view(action_name="pause"), name="job-pause"),
    path("fine_tuning/jobs/<str:job_id>/resume", views.JobActionView.as_view(action_name="resume"), name="job-resume"),
    path("fine_tuning/jobs/<str:job_id>/events", views.JobEventsView.as_view(), name="job-events"),
    path("fine_tuning/jobs/<str:job_id>/checkpoints", views.JobCheckpointsView.as_view(), name="job-checkpoints"),
    path("models", views.ModelListView.as_view(), name="models"),
    path("models/<path:model_id>", views.ModelDetailView.as_view(), name="model"),
    # Each domain owns its routes module.
    path("", include("marketplace.api.routes_accounts")),
    path("", include("marketplace.api.routes_capacity")),
    path("", include("marketplace.api.routes_quotas")),
    path("", include("marketplace.api.routes_billing")),
    path("", include("marketplace.api.routes_webhooks")),
]
