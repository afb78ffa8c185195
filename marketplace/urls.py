"""Root URL map: /v1 partner API, /internal/v1 trainer callbacks, health, admin, portal."""

from django.contrib import admin
from django.urls import include, path

from marketplace.api.internal import health_live, health_ready, metrics

urlpatterns = [
    path("v1/", include("marketplace.api.urls")),
    path("internal/v1/", include("marketplace.api.internal_urls")),
    path("healthz", health_live, name="health-live"),
    path("readyz", health_ready, name="health-ready"),
    path("metrics", metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("", include("marketplace.portal.urls")),
]

handler400 = "marketplace.http_errors.bad_request"
handler403 = "marketplace.http_errors.permission_denied"
handler404 = "marketplace.http_errors.page_not_found"
handler500 = "marketplace.http_errors.server_error"
