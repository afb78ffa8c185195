"""/v1 routes for data protection: exports, retention, staff access record."""

from django.urls import URLPattern, path

from marketplace.api import views_privacy as views

urlpatterns: list[URLPattern] = [
    path("organization/exports", views.ExportListView.as_view(), name="organization-exports"),
    path(
        "organization/exports/<str:export_id>",
        views.ExportDetailView.as_view(),
        name="organization-export",
    ),
    path(
        "organization/exports/<str:export_id>/content",
        views.ExportContentView.as_view(),
        name="organization-export-content",
    ),
    path("organization/retention", views.RetentionView.as_view(), name="organization-retention"),
    path(
        "organization/staff_access",
        views.StaffAccessListView.as_view(),
        name="organization-staff-access",
    ),
]
