"""URL map of the internal API that trainers call back with their job token."""

from django.urls import path

from marketplace.api import internal

urlpatterns = [
    path("jobs/<str:job_id>/spec", internal.SpecView.as_view()),
    path("jobs/<str:job_id>/files/<str:file_id>", internal.JobFileView.as_view()),
    path("jobs/<str:job_id>/events", internal.EventsView.as_view()),
    path("jobs/<str:job_id>/checkpoints", internal.CheckpointUploadView.as_view()),
    path("jobs/<str:job_id>/checkpoints/latest", internal.LatestCheckpointView.as_view()),
    path("jobs/<str:job_id>/adapter", internal.AdapterUploadView.as_view()),
    path("jobs/<str:job_id>/log", internal.LogView.as_view()),
    path("jobs/<str:job_id>/exit", internal.ExitView.as_view()),
]
