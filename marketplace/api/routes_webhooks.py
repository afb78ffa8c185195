"""/v1 routes for the webhooks domain (views live beside them, in views_webhooks.py when there are any)."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
