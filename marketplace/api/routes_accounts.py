"""/v1 routes for the accounts domain: organization, members, API keys."""

from django.urls import URLPattern, path

from marketplace.api import views_accounts as views

urlpatterns: list[URLPattern] = [
    path("organization", views.OrganizationView.as_view(), name="organization"),
    path("organization/members", views.MemberListView.as_view(), name="organization-members"),
    path("api_keys", views.ApiKeyListView.as_view(), name="api-keys"),
    path("api_keys/<str:key_id>", views.ApiKeyDetailView.as_view(), name="api-key"),
    path("api_keys/<str:key_id>/revoke", views.ApiKeyRevokeView.as_view(), name="api-key-revoke"),
]
