"""/v1 routes for the billing domain (views in views_billing.py)."""

from django.urls import path

from marketplace.api import views_billing as views

urlpatterns = [
    path("billing/balance", views.BalanceView.as_view(), name="billing-balance"),
    path("billing/usage", views.UsageListView.as_view(), name="billing-usage"),
    path("billing/invoices", views.InvoiceListView.as_view(), name="billing-invoices"),
    path(
        "billing/invoices/<str:invoice_id>",
        views.InvoiceDetailView.as_view(),
        name="billing-invoice",
    ),
    path(
        "billing/invoices/<str:invoice_id>/download/<str:export_format>",
        views.InvoiceDownloadView.as_view(),
        name="billing-invoice-download",
    ),
    path("billing/statements", views.StatementListView.as_view(), name="billing-statements"),
    path(
        "billing/statements/<str:statement_id>",
        views.StatementDetailView.as_view(),
        name="billing-statement",
    ),
    path("billing/payouts", views.PayoutListView.as_view(), name="billing-payouts"),
    path("billing/cost_estimate", views.CostEstimateView.as_view(), name="billing-cost-estimate"),
    path("billing/topups", views.TopupListView.as_view(), name="billing-topups"),
    path("billing/topups/<str:topup_id>", views.TopupDetailView.as_view(), name="billing-topup"),
    path(
        "billing/topups/<str:topup_id>/proforma",
        views.TopupProformaView.as_view(),
        name="billing-topup-proforma",
    ),
    path("billing/settings", views.BillingSettingsView.as_view(), name="billing-settings"),
]
