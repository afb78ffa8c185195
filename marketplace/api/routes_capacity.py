"""/v1 routes for the capacity domain (views live beside them, in views_capacity.py when there are any)."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
