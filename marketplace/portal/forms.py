"""Portal forms: they check the shape of input; the domain services check the rules."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm
from django.core.exceptions import ValidationError

from marketplace.accounts.models import Membership, User
from marketplace.portal import throttle


def client_ip(request: Any) -> str:
    # REMOTE_ADDR only: X-Forwarded-For is set by the client and cannot be trusted here.
    return str(request.META.get("REMOTE_ADDR", "") if request is not None else "")


class SignupForm(UserCreationForm):
    email = forms.EmailField(required=True, help_text="For password resets and invoices.")

    class Meta:
        model = User
        fields = ("username", "email")

    def clean_email(self) -> str:
        email = self.cleaned_data["email"].strip().lower()
        if User.objects.filter(email__iexact=email).exists():
            raise ValidationError(
                "An account already uses this email. Sign in, or reset your password."
            )
        return email

    def validate_password_for_user(self, user: Any, **kwargs: Any) -> None:
        # Django reports a weak password under the confirmation field; the user typed it under
        # Password, so that is where the error belongs. A mismatch stays on the confirmation.
        if self.cleaned_data.get("password2"):
            super().validate_password_for_user(user, password_field_name="password1")  # type: ignore[misc]  # noqa: S106


class ThrottledLoginForm(AuthenticationForm):
    """Django's login form, refusing early while a username+address pair is locked out."""

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username") or ""
        ip = client_ip(self.request)
        wait = throttle.login_retry_after(username=username, ip=ip)
        if wait:
            minutes = max(1, (wait + 59) // 60)
            raise ValidationError(
                f"Too many failed sign-in attempts for this account from your address. "
                f"Try again in {minutes} minute(s), or reset your password.",
                code="throttled",
            )
        try:
            cleaned = super().clean()
        except ValidationError:
            throttle.login_failure_record(username=username, ip=ip)
            raise
        throttle.login_success_record(username=username, ip=ip)
        return cleaned


class OrganizationForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="Your startup's name, e.g. Acme AI.")
    country = forms.CharField(
        max_length=2, required=False, help_text="Two-letter country code, e.g. FR (for VAT)."
    )


class JoinForm(forms.Form):
    invitation = forms.CharField(
        max_length=2000, help_text="Paste the invitation link or its token."
    )

    def clean_invitation(self) -> str:
        value = self.cleaned_data["invitation"].strip().rstrip("/")
        return value.rsplit("/join/", 1)[-1] if "/join/" in value else value


class InviteForm(forms.Form):
    role = forms.ChoiceField(
        choices=[(Membership.Role.MEMBER, "Member"), (Membership.Role.ADMIN, "Admin")],
        initial=Membership.Role.MEMBER,
    )


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What uses it, e.g. ci-pipeline.")
    read_only = forms.BooleanField(required=False, help_text="Can read, but not create or cancel.")


class UploadForm(forms.Form):
    file = forms.FileField(
        label="Training file (JSONL)",
        help_text="One JSON example per line: chat messages, prompt/completion, or text.",
    )


class LaunchForm(forms.Form):
    """The job's settings. Defaults are the service's own defaults (3 epochs, batch 8, r=8…)."""

    model = forms.ChoiceField(label="Base model")
    training_file = forms.ChoiceField(label="Training file")
    validation_file = forms.ChoiceField(label="Validation file", required=False)
    n_epochs = forms.IntegerField(label="Epochs", min_value=1, max_value=50, initial=3)
    batch_size = forms.IntegerField(label="Batch size", min_value=1, max_value=256, initial=8)
    learning_rate_multiplier = forms.FloatField(
        label="Learning-rate multiplier",
        min_value=0.01,
        max_value=100,
        initial=1.0,
        help_text="Multiplies the base learning rate of 2e-4.",
    )
    max_seq_length = forms.IntegerField(
        label="Max sequence length", min_value=16, max_value=32768, initial=1024
    )
    lora_r = forms.IntegerField(label="LoRA rank (r)", min_value=1, max_value=256, initial=8)
    lora_alpha = forms.FloatField(label="LoRA alpha", min_value=0.01, initial=16)
    lora_dropout = forms.FloatField(label="LoRA dropout", min_value=0, max_value=0.99, initial=0.05)
    target_modules = forms.CharField(
        label="Target modules",
        initial="all-linear",
        max_length=500,
        help_text="all-linear, or a comma-separated list such as q_proj,v_proj.",
    )
    gpu_flavor = forms.ChoiceField(label="GPU", required=False)
    gpu_count = forms.IntegerField(label="GPUs", min_value=1, max_value=64, initial=1)
    suffix = forms.CharField(
        max_length=64, required=False, help_text="Added to the fine-tuned model's name."
    )
    max_cost = forms.DecimalField(
        label="Spending cap (EUR)",
        required=False,
        min_value=0,
        max_digits=12,
        decimal_places=2,
        help_text="The job stops gracefully, keeping its adapter, when it reaches this cost.",
    )

    def __init__(
        self,
        *args: Any,
        models: list[tuple[str, str]],
        files: list[tuple[str, str]],
        flavors: list[tuple[str, str]],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = models  # type: ignore[attr-defined]
        self.fields["training_file"].choices = files  # type: ignore[attr-defined]
        self.fields["validation_file"].choices = [("", "None"), *files]  # type: ignore[attr-defined]
        self.fields["gpu_flavor"].choices = [("", "Any available GPU"), *flavors]  # type: ignore[attr-defined]

    def hyperparameters(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "n_epochs": data["n_epochs"],
            "batch_size": data["batch_size"],
            "learning_rate_multiplier": data["learning_rate_multiplier"],
            "max_seq_length": data["max_seq_length"],
        }

    def lora(self) -> dict[str, Any]:
        data = self.cleaned_data
        raw = data["target_modules"].strip()
        targets: str | list[str] = (
            "all-linear"
            if raw in {"", "all-linear"}
            else [t.strip() for t in raw.split(",") if t.strip()]
        )
        alpha = data["lora_alpha"]
        return {
            "r": data["lora_r"],
            "alpha": int(alpha) if float(alpha).is_integer() else alpha,
            "dropout": data["lora_dropout"],
            "target_modules": targets,
        }


class OfferFilterForm(forms.Form):
    flavor = forms.ChoiceField(label="GPU", required=False)
    region = forms.ChoiceField(label="Region", required=False)
    max_price = forms.DecimalField(
        label="Max €/GPU-hour", required=False, min_value=0, max_digits=10, decimal_places=2
    )
    gpus = forms.IntegerField(label="Free GPUs now", required=False, min_value=1, max_value=1024)

    def __init__(
        self, *args: Any, flavors: list[tuple[str, str]], regions: list[str], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fields["flavor"].choices = [("", "Any GPU"), *flavors]  # type: ignore[attr-defined]
        self.fields["region"].choices = [("", "Any region")] + [(r, r) for r in regions]  # type: ignore[attr-defined]


class BookingForm(forms.Form):
    pool = forms.CharField(max_length=40, widget=forms.HiddenInput)
    gpu_count = forms.IntegerField(label="GPUs", min_value=1, max_value=1024, initial=1)
    start = forms.DateTimeField(
        label="Start (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"],
    )
    hours = forms.IntegerField(label="Hours", min_value=1, max_value=24 * 90, initial=8)


class QuotaForm(forms.Form):
    """One organization's quota for one GPU flavor. Empty fields stay as they are."""

    organization = forms.ChoiceField()
    flavor = forms.ChoiceField(label="GPU flavor")
    guaranteed_gpus = forms.IntegerField(
        label="Guaranteed GPUs", required=False, min_value=0, max_value=100_000
    )
    max_gpus = forms.IntegerField(label="Max GPUs", required=False, min_value=0, max_value=100_000)
    monthly_gpu_hours = forms.DecimalField(
        label="Monthly GPU-hours", required=False, min_value=0, max_digits=12, decimal_places=2
    )
    max_job_hours = forms.DecimalField(
        label="Max hours per job", required=False, min_value=0, max_digits=8, decimal_places=2
    )
    max_concurrent_jobs = forms.IntegerField(required=False, min_value=0, max_value=100_000)

    def __init__(
        self,
        *args: Any,
        organizations: list[tuple[str, str]],
        flavors: list[tuple[str, str]],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fields["organization"].choices = organizations  # type: ignore[attr-defined]
        self.fields["flavor"].choices = flavors  # type: ignore[attr-defined]

    def values(self) -> dict[str, Any]:
        names = (
            "guaranteed_gpus", "max_gpus", "monthly_gpu_hours", "max_job_hours",
            "max_concurrent_jobs",
        )  # fmt: skip
        return {n: self.cleaned_data[n] for n in names if self.cleaned_data.get(n) is not None}


class PriceForm(forms.Form):
    price_per_gpu_hour = forms.DecimalField(
        label="€ per GPU-hour", min_value=0, max_digits=10, decimal_places=4
    )
