"""/v1 routes for the quotas domain (views live beside them, in views_quotas.py when there are any)."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
