"""/v1 routes for the capacity domain: flavors, offers, pools, bookings, residency policy."""

from django.urls import URLPattern, path

from marketplace.api import views_capacity as views

urlpatterns: list[URLPattern] = [
    path("gpu_flavors", views.FlavorListView.as_view(), name="gpu-flavors"),
    path("offers", views.OfferListView.as_view(), name="offers"),
    path("pools", views.PoolListView.as_view(), name="pools"),
    path("pools/<str:pool_id>", views.PoolDetailView.as_view(), name="pool"),
    path(
        "pools/<str:pool_id>/maintenance_windows",
        views.PoolMaintenanceView.as_view(),
        name="pool-maintenance",
    ),
    path("bookings", views.BookingListView.as_view(), name="bookings"),
    path("bookings/quote", views.BookingQuoteView.as_view(), name="booking-quote"),
    path("bookings/<str:booking_id>", views.BookingDetailView.as_view(), name="booking"),
    path(
        "bookings/<str:booking_id>/cancellation_quote",
        views.BookingCancellationQuoteView.as_view(),
        name="booking-cancellation-quote",
    ),
    path(
        "bookings/<str:booking_id>/cancel", views.BookingCancelView.as_view(), name="booking-cancel"
    ),
    path("placement_estimate", views.PlacementEstimateView.as_view(), name="placement-estimate"),
    path("residency_policy", views.ResidencyPolicyView.as_view(), name="residency-policy"),
]
