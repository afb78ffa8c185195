"""/v1 routes for webhooks: endpoints (OpenAI SDK `client.webhooks`), event types, deliveries."""

from django.urls import URLPattern, path

from marketplace.api import views_webhooks as views

urlpatterns: list[URLPattern] = [
    path("webhook_endpoints", views.EndpointListView.as_view(), name="webhook-endpoints"),
    path(
        "webhook_endpoints/<str:webhook_endpoint_id>",
        views.EndpointDetailView.as_view(),
        name="webhook-endpoint",
    ),
    path(
        "webhook_endpoints/<str:webhook_endpoint_id>/rotate_secret",
        views.EndpointRotateView.as_view(),
        name="webhook-endpoint-rotate",
    ),
    path(
        "webhook_endpoints/<str:webhook_endpoint_id>/test",
        views.EndpointTestView.as_view(),
        name="webhook-endpoint-test",
    ),
    path("webhook_event_types", views.EventTypeListView.as_view(), name="webhook-event-types"),
    path("webhook_deliveries", views.DeliveryListView.as_view(), name="webhook-deliveries"),
    path(
        "webhook_deliveries/<str:delivery_id>",
        views.DeliveryDetailView.as_view(),
        name="webhook-delivery",
    ),
    path(
        "webhook_deliveries/<str:delivery_id>/redeliver",
        views.DeliveryRedeliverView.as_view(),
        name="webhook-delivery-redeliver",
    ),
]
