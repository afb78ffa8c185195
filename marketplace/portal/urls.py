"""Portal URL map, mounted at the site root."""

from django.contrib.auth import views as auth_views
from django.urls import path, reverse_lazy

from marketplace.portal.views import (
    account,
    credit,
    files,
    jobs,
    money_out,
    offers,
    privacy,
    staff,
    usage,
)

app_name = "portal"

_reset = "portal/account/"

urlpatterns = [
    path("", account.home, name="home"),
    path("overview/", account.dashboard, name="dashboard"),
    # Accounts
    path("signup/", account.signup, name="signup"),
    path("login/", account.PortalLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="portal:home"), name="logout"),
    path(
        "password-reset/",
        auth_views.PasswordResetView.as_view(
            template_name=_reset + "password_reset_form.html",
            email_template_name=_reset + "password_reset_email.txt",
            subject_template_name=_reset + "password_reset_subject.txt",
            success_url=reverse_lazy("portal:password-reset-done"),
        ),
        name="password-reset",
    ),
    path(
        "password-reset/sent/",
        auth_views.PasswordResetDoneView.as_view(template_name=_reset + "password_reset_done.html"),
        name="password-reset-done",
    ),
    path(
        "password-reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(
            template_name=_reset + "password_reset_confirm.html",
            success_url=reverse_lazy("portal:password-reset-complete"),
        ),
        name="password-reset-confirm",
    ),
    path(
        "password-reset/done/",
        auth_views.PasswordResetCompleteView.as_view(
            template_name=_reset + "password_reset_complete.html"
        ),
        name="password-reset-complete",
    ),
    path("organization/", account.onboarding, name="onboarding"),
    path("organization/switch/", account.switch_org, name="switch-org"),
    path("join/<str:token>/", account.join, name="join"),
    path("team/", account.members, name="members"),
    path(
        "team/invitations/<int:invitation_id>/revoke/",
        account.invitation_revoke_view,
        name="invitation-revoke",
    ),
    path("api-keys/", account.api_keys, name="api-keys"),
    path("api-keys/<int:key_id>/revoke/", account.api_key_revoke_view, name="api-key-revoke"),
    # Data protection
    path("privacy/", privacy.privacy, name="privacy"),
    path("privacy/retention/", privacy.retention_update, name="privacy-retention"),
    path("privacy/exports/", privacy.export_request, name="privacy-export"),
    path(
        "privacy/exports/<str:export_id>/download/",
        privacy.export_download,
        name="privacy-export-download",
    ),
    path("privacy/delete/", privacy.organization_delete, name="privacy-org-delete"),
    path(
        "privacy/delete/cancel/",
        privacy.organization_delete_cancel,
        name="privacy-org-delete-cancel",
    ),
    path("account/delete/", privacy.account_delete, name="account-delete"),
    # Training data
    path("data/", files.file_list, name="files"),
    path("data/<str:file_id>/", files.file_detail, name="file"),
    path("data/<str:file_id>/download/", files.file_download, name="file-download"),
    # Jobs
    path("jobs/", jobs.job_list, name="jobs"),
    path("jobs/new/", jobs.job_launch, name="job-new"),
    path("jobs/<str:job_id>/", jobs.job_detail, name="job"),
    path("jobs/<str:job_id>/live/", jobs.job_live, name="job-live"),
    path("jobs/<str:job_id>/cancel/", jobs.job_cancel, name="job-cancel"),
    path("jobs/<str:job_id>/adapter/", jobs.job_adapter, name="job-adapter"),
    path(
        "jobs/<str:job_id>/attempts/<int:number>/log/",
        jobs.job_attempt_log,
        name="job-attempt-log",
    ),
    path("jobs/<str:job_id>/chat/", jobs.job_chat, name="job-chat"),
    path("jobs/<str:job_id>/manifest/", jobs.job_manifest, name="job-manifest"),
    # Capacity
    path("offers/", offers.offer_list, name="offers"),
    path("offers/book/", offers.booking_new, name="offer-book"),
    path("bookings/<str:booking_id>/cancel/", offers.booking_cancel, name="offer-booking-cancel"),
    # Usage and billing
    path("usage/", usage.usage, name="usage"),
    path("invoices/<str:invoice_id>/", usage.invoice_download, name="invoice"),
    path("earnings/", money_out.provider_earnings, name="earnings"),
    path("earnings/payout-details/", money_out.payout_details, name="payout-details"),
    path("billing/credit/", credit.credit, name="credit"),
    path("billing/credit/alert/", credit.threshold, name="credit-threshold"),
    path("billing/topups/<str:topup_id>/proforma/", credit.proforma, name="topup-proforma"),
    # Staff
    path("cockpit/", staff.cockpit, name="cockpit"),
    path("cockpit/billing/", money_out.cockpit_billing, name="cockpit-billing"),
    path(
        "cockpit/billing/close-early/",
        money_out.period_close_early,
        name="cockpit-period-close-early",
    ),
    path(
        "cockpit/billing/batches/<str:batch_id>/sepa.xml",
        money_out.payout_batch_file,
        name="cockpit-payout-file",
    ),
    path(
        "cockpit/billing/batches/<str:batch_id>/mark/",
        money_out.payout_batch_mark,
        name="cockpit-payout-mark",
    ),
    path("cockpit/quotas/", staff.quota_edit, name="cockpit-quota"),
    path(
        "cockpit/topups/<str:topup_id>/received/",
        staff.topup_received,
        name="cockpit-topup-received",
    ),
    path("cockpit/content/", staff.content_open, name="cockpit-content"),
    path("cockpit/pools/<str:pool_id>/price/", staff.price_edit, name="cockpit-price"),
    path("cockpit/pools/<str:pool_id>/review/", staff.pool_review, name="cockpit-pool-review"),
    path(
        "cockpit/providers/<str:org_id>/review/",
        staff.provider_review,
        name="cockpit-provider-review",
    ),
]
