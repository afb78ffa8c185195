"""The URL map the OpenAPI schema is generated from: /v1 only, without the trainers' API."""

from django.urls import include, path

urlpatterns = [path("v1/", include("marketplace.api.urls"))]
