"""Portal URL map, mounted at the site root."""

from django.contrib.auth import views as auth_views
from django.urls import path, reverse_lazy

from marketplace.portal.views import account, files, jobs, offers, staff, usage

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
    path("api-keys/", account.api_keys, name="api-keys"),
    path("api-keys/<int:key_id>/revoke/", account.api_key_revoke_view, name="api-key-revoke"),
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
    path("jobs/<str:job_id>/manifest/", jobs.job_manifest, name="job-manifest"),
    # Capacity
    path("offers/", offers.offer_list, name="offers"),
    path("offers/book/", offers.booking_new, name="offer-book"),
    path("bookings/<str:booking_id>/cancel/", offers.booking_cancel, name="offer-booking-cancel"),
    # Usage and billing
    path("usage/", usage.usage, name="usage"),
    path("invoices/<str:invoice_id>/", usage.invoice_download, name="invoice"),
    # Staff
    path("cockpit/", staff.cockpit, name="cockpit"),
    path("cockpit/quotas/", staff.quota_edit, name="cockpit-quota"),
    path("cockpit/pools/<str:pool_id>/price/", staff.price_edit, name="cockpit-price"),
    path("cockpit/pools/<str:pool_id>/review/", staff.pool_review, name="cockpit-pool-review"),
    path(
        "cockpit/providers/<str:org_id>/review/",
        staff.provider_review,
        name="cockpit-provider-review",
    ),
]
