"""/v1 routes for the billing domain (views live beside them, in views_billing.py when there are any)."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
