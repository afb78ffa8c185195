"""/v1 routes for the accounts domain (views live beside them, in views_accounts.py when there are any)."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
