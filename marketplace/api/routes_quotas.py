"""/v1 routes for the quotas domain (views in views_quotas.py)."""

from django.urls import path

from marketplace.api import views_quotas as views

urlpatterns = [
    path("quotas", views.QuotaListView.as_view(), name="quotas"),
    path("usage", views.UsageView.as_view(), name="usage"),
    path("admin/quotas", views.StaffQuotaListView.as_view(), name="admin-quotas"),
    path("admin/queue", views.StaffQueueView.as_view(), name="admin-queue"),
    path("admin/quota_audit", views.StaffQuotaAuditView.as_view(), name="admin-quota-audit"),
    path(
        "admin/organizations/<str:organization>/quotas/<str:flavor>",
        views.StaffQuotaOverrideView.as_view(),
        name="admin-org-quota",
    ),
    path(
        "admin/organizations/<str:organization>/plan",
        views.StaffOrgPlanView.as_view(),
        name="admin-org-plan",
    ),
]
