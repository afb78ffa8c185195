"""Partage settings: every environment variable is read here, through `marketplace.env`.

With nothing set, Partage runs on its embedded default: SQLite, a filesystem Celery broker,
training as local processes, files on disk. Production values come in when set.
"""

from __future__ import annotations

import os
import secrets
import ssl
import sys
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from marketplace import env

BASE_DIR = Path(__file__).resolve().parent.parent

PARTAGE_ENV = env.get(
    "PARTAGE_ENV", env.one_of(["development", "production", "test"]), default="development"
)
PRODUCTION = PARTAGE_ENV == "production"
TESTING = PARTAGE_ENV == "test" or "pytest" in sys.modules

DATA_DIR = env.get("PARTAGE_DATA_DIR", Path, default=BASE_DIR / "var").resolve()


def _secret_key() -> str:
    key = env.get(
        "DJANGO_SECRET_KEY",
        str,
        default="",
        required_in_production=True,
        production=PRODUCTION,
        hint="Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(50))'",
    )
    if key:
        if PRODUCTION and len(key) < 40:
            raise ImproperlyConfigured(
                "DJANGO_SECRET_KEY is too short: use at least 40 characters."
            )
        return key
    # Embedded default: generate one on first run and keep it, so sessions survive restarts.
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        tmp = key_file.with_suffix(".tmp")
        tmp.write_text(secrets.token_urlsafe(50), encoding="utf-8")
        tmp.chmod(0o600)
        tmp.replace(key_file)
    return key_file.read_text(encoding="utf-8").strip()


SECRET_KEY = _secret_key()
# Off unless asked for: Django's debug pages list every URL and setting to whoever hits an error.
DEBUG = env.get("DJANGO_DEBUG", env.as_bool, default=False)
ALLOWED_HOSTS = env.get(
    "DJANGO_ALLOWED_HOSTS",
    env.as_list,
    default=["127.0.0.1", "localhost", "[::1]", "testserver"],
    required_in_production=True,
    production=PRODUCTION,
    hint="A comma-separated list of host names, e.g. partage.example.eu",
)
CSRF_TRUSTED_ORIGINS = env.get("DJANGO_CSRF_TRUSTED_ORIGINS", env.as_list, default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "marketplace.events",
    "marketplace.accounts",
    "marketplace.capacity",
    "marketplace.quotas",
    "marketplace.billing",
    "marketplace.finetuning",
    "marketplace.inference",
    "marketplace.privacy",
    "marketplace.api",
    "marketplace.portal",
    "marketplace.notifications",
    "marketplace.demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "marketplace.middleware.RefuseNulCharactersMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "marketplace.portal.middleware.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "marketplace.urls"
WSGI_APPLICATION = "marketplace.wsgi.application"
AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
# Portal e-mail (password resets): printed on the console unless a backend is configured.
EMAIL_BACKEND = env.get(
    "DJANGO_EMAIL_BACKEND",
    str,
    default="django.core.mail.backends.smtp.EmailBackend"
    if PRODUCTION
    else "django.core.mail.backends.console.EmailBackend",
)
DEFAULT_FROM_EMAIL = env.get(
    "DJANGO_DEFAULT_FROM_EMAIL", str, default="Partage <no-reply@partage.local>"
)
# Where the file-based backend (django.core.mail.backends.filebased.EmailBackend) writes mails.
EMAIL_FILE_PATH = env.get("DJANGO_EMAIL_FILE_PATH", str, default=str(DATA_DIR / "mail"))

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env.get(
    "DATABASE_URL",
    str,
    default=f"sqlite:///{DATA_DIR / 'partage.sqlite3'}",
    required_in_production=True,
    production=PRODUCTION,
    hint="e.g. postgres://partage:secret@db:5432/partage",
)
try:
    _database = env.database_from_url(DATABASE_URL)
except ValueError as e:
    raise ImproperlyConfigured(f"DATABASE_URL is invalid: {e}.") from e
if _database["ENGINE"] == "django.db.backends.sqlite3":
    if PRODUCTION:
        raise ImproperlyConfigured("PARTAGE_ENV=production needs PostgreSQL: set DATABASE_URL.")
    # Web server, Celery worker and trainers share one file: WAL + IMMEDIATE avoid lock errors.
    _database["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    if _database["NAME"] != ":memory:":
        Path(str(_database["NAME"])).parent.mkdir(parents=True, exist_ok=True)
    # Tests get a file, not Django's shared in-memory database: with that, the live server
    # thread borrows the test thread's very connection, and a trainer's callback landing in
    # the middle of a request's transaction corrupts both (500s, broken flushes).
    _database["TEST"] = {
        "NAME": env.get(
            "PARTAGE_TEST_DB_NAME", str, default=str(DATA_DIR / f"test-{os.getpid()}.sqlite3")
        )
    }
else:
    _database["TEST"] = {"NAME": env.get("PARTAGE_TEST_DB_NAME", str, default=None)}
DATABASES = {"default": _database}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.get("REDIS_URL", env.redis_url, default=None)

# Celery: Redis in production; kombu's filesystem transport on the embedded default.
BROKER_DIR = DATA_DIR / "broker"
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    # kombu's Redis transport, fixed to survive an outage with countdown tasks held
    # (workers/broker.py says why).
    CELERY_BROKER_TRANSPORT = "workers.broker:Transport"
    if REDIS_URL.startswith("rediss://"):
        CELERY_BROKER_USE_SSL = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
        # A message the worker holds (an eta/countdown task) is redelivered after this long.
        "visibility_timeout": 3600,
        # Notice a dead broker within seconds instead of waiting on a silent socket.
        "socket_timeout": 30,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 25,
        "retry_on_timeout": True,
    }
elif TESTING:
    # Tests that need a worker point it at a private broker folder (tests/conftest.py).
    CELERY_BROKER_URL = "memory://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {}
else:
    # A host name, though the filesystem transport needs none: kombu warns without one.
    CELERY_BROKER_URL = "filesystem://localhost//"
    for sub in ("queue", "processed", "control"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
# Liveness (workers/heartbeat.py): each worker marks itself alive this often; a worker or a
# periodic pass silent for longer than the max age counts as dead (/readyz, /metrics, probes).
PARTAGE_HEARTBEAT_SECONDS = env.get("PARTAGE_HEARTBEAT_SECONDS", env.as_int, default=15)
PARTAGE_HEARTBEAT_MAX_AGE_SECONDS = env.get(
    "PARTAGE_HEARTBEAT_MAX_AGE_SECONDS", env.as_int, default=120
)
if not 0 < PARTAGE_HEARTBEAT_SECONDS < PARTAGE_HEARTBEAT_MAX_AGE_SECONDS:
    raise ImproperlyConfigured(
        "PARTAGE_HEARTBEAT_SECONDS must be positive and below PARTAGE_HEARTBEAT_MAX_AGE_SECONDS "
        f"({PARTAGE_HEARTBEAT_SECONDS} and {PARTAGE_HEARTBEAT_MAX_AGE_SECONDS} given)."
    )
PARTAGE_WORKER_HEARTBEAT_FILE = env.get(
    "PARTAGE_WORKER_HEARTBEAT_FILE", Path, default=DATA_DIR / "worker-heartbeat"
)
CELERY_TASK_ALWAYS_EAGER = env.get("PARTAGE_CELERY_EAGER", env.as_bool, default=False)

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "partage",
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(DATA_DIR / "cache"),
        }
    }

PARTAGE_EXECUTOR = env.get("PARTAGE_EXECUTOR", env.one_of(["local", "kubernetes"]), default="local")
# Where trainers (local processes or pods) call back into Partage's internal API.
PARTAGE_INTERNAL_URL = env.get("PARTAGE_INTERNAL_URL", str, default="http://127.0.0.1:8000").rstrip(
    "/"
)
PARTAGE_PUBLIC_URL = env.get("PARTAGE_PUBLIC_URL", str, default="http://127.0.0.1:8000").rstrip("/")
PARTAGE_MODEL_CACHE = env.get("PARTAGE_MODEL_CACHE", Path, default=DATA_DIR / "models")
PARTAGE_WORK_DIR = env.get("PARTAGE_WORK_DIR", Path, default=DATA_DIR / "runs")
PARTAGE_JOB_TOKEN_TTL_SECONDS = env.get(
    "PARTAGE_JOB_TOKEN_TTL_SECONDS", env.as_int, default=24 * 3600
)
PARTAGE_MAX_UPLOAD_BYTES = env.get(
    "PARTAGE_MAX_UPLOAD_BYTES", env.as_int, default=100 * 1024 * 1024
)
# One example (line) of a training file at most: a longer line is reported, never parsed.
PARTAGE_MAX_LINE_BYTES = env.get("PARTAGE_MAX_LINE_BYTES", env.as_int, default=2 * 1024 * 1024)
# Uploads up to this size are validated in the request (errors answered at once); larger ones are
# stored as `uploaded` and validated by the worker, so no web thread waits on them.
PARTAGE_UPLOAD_INLINE_VALIDATION_BYTES = env.get(
    "PARTAGE_UPLOAD_INLINE_VALIDATION_BYTES", env.as_int, default=1024 * 1024
)
PARTAGE_MAX_TRAINING_LINES = env.get("PARTAGE_MAX_TRAINING_LINES", env.as_int, default=200_000)
PARTAGE_MAX_ADAPTER_RANK = env.get("PARTAGE_MAX_ADAPTER_RANK", env.as_int, default=64)
# Quotas and admission (marketplace.quotas): borrowed work is preemptible only after running this
# long; an admission pass admits at most this many jobs (the rest wait for the next pass).
PARTAGE_PREEMPT_MIN_RUN_SECONDS = env.get(
    "PARTAGE_PREEMPT_MIN_RUN_SECONDS", env.as_int, default=600
)
PARTAGE_PREEMPT_GRACE_SECONDS = env.get("PARTAGE_PREEMPT_GRACE_SECONDS", env.as_int, default=300)
PARTAGE_ADMISSIONS_PER_PASS = env.get("PARTAGE_ADMISSIONS_PER_PASS", env.as_int, default=200)
# Admissions written together in one short transaction (it locks their pools, then their
# organizations' quota and balance rows, each set in id order).
PARTAGE_ADMISSION_BATCH = env.get("PARTAGE_ADMISSION_BATCH", env.as_int, default=50)
PARTAGE_DEFAULT_MAX_JOB_HOURS = env.get("PARTAGE_DEFAULT_MAX_JOB_HOURS", env.as_int, default=24)


# Billing (marketplace/billing/money.py documents how these apply).
def _decimal_in(low: str, high: str) -> Callable[[str], Decimal]:
    def parse(text: str) -> Decimal:
        try:
            value = Decimal(text.strip())
        except InvalidOperation:
            raise ValueError("expected a decimal number such as 0.20") from None
        if not Decimal(low) <= value <= Decimal(high):
            raise ValueError(f"expected a number from {low} to {high}")
        return value

    return parse


PARTAGE_PLATFORM_COUNTRY = env.get("PARTAGE_PLATFORM_COUNTRY", str.upper, default="FR")
PARTAGE_VAT_RATE = env.get("PARTAGE_VAT_RATE", _decimal_in("0", "1"), default=Decimal("0.20"))
PARTAGE_PLATFORM_FEE_PERCENT = env.get(
    "PARTAGE_PLATFORM_FEE_PERCENT", _decimal_in("0", "100"), default=Decimal("15")
)
# The seller on invoices; EU reverse-charge invoices must show both parties' VAT ids.
PARTAGE_PLATFORM_LEGAL_NAME = env.get("PARTAGE_PLATFORM_LEGAL_NAME", str, default="Partage")
PARTAGE_PLATFORM_VAT_ID = env.get("PARTAGE_PLATFORM_VAT_ID", str, default="")
# Money out (docs/billing.md). A billing period is a calendar month in UTC, or a day or a week
# (ISO, from Monday); it is closed PARTAGE_BILLING_GRACE_SECONDS after its end, so that usage
# recorded late (an attempt ending just after the cut) is on its invoice.
PARTAGE_BILLING_PERIOD = env.get(
    "PARTAGE_BILLING_PERIOD", env.one_of(["month", "week", "day"]), default="month"
)
PARTAGE_BILLING_GRACE_SECONDS = env.get(
    "PARTAGE_BILLING_GRACE_SECONDS", env.as_int, default=6 * 3600
)
# How often beat checks whether a period is due (seconds); a missed boundary is caught up then.
PARTAGE_BILLING_CLOSE_EVERY_SECONDS = env.get(
    "PARTAGE_BILLING_CLOSE_EVERY_SECONDS", env.as_int, default=600
)
# The issuing entity's invoice series: numbers read <issuer>-<year>-<000123>, gap-free.
PARTAGE_INVOICE_ISSUER = env.get("PARTAGE_INVOICE_ISSUER", str.upper, default="PARTAGE")
# Part of each provider statement's payable held back for disputes (percent), released
# PARTAGE_PAYOUT_HOLDBACK_PERIODS periods later.
PARTAGE_PAYOUT_HOLDBACK_PERCENT = env.get(
    "PARTAGE_PAYOUT_HOLDBACK_PERCENT", _decimal_in("0", "100"), default=Decimal("0")
)
PARTAGE_PAYOUT_HOLDBACK_PERIODS = env.get("PARTAGE_PAYOUT_HOLDBACK_PERIODS", env.as_int, default=1)
# The platform's own account, debited by the SEPA payout file (pain.001.001.09).
PARTAGE_PAYOUT_DEBTOR_NAME = env.get("PARTAGE_PAYOUT_DEBTOR_NAME", str, default="Partage SAS")
PARTAGE_PAYOUT_DEBTOR_IBAN = env.get(
    "PARTAGE_PAYOUT_DEBTOR_IBAN", str, default="FR7630006000011234567890189"
)
PARTAGE_PAYOUT_DEBTOR_BIC = env.get("PARTAGE_PAYOUT_DEBTOR_BIC", str, default="AGRIFRPP")

# Top-ups (docs/billing.md, "Money in"): self-serve amounts are bounded; card top-ups go through
# Stripe Checkout when enabled (keys required in production then), bank transfers always work.
PARTAGE_TOPUP_MIN = env.get(
    "PARTAGE_TOPUP_MIN", _decimal_in("0.01", "1000000"), default=Decimal("10")
)
PARTAGE_TOPUP_MAX = env.get(
    "PARTAGE_TOPUP_MAX", _decimal_in("0.01", "1000000"), default=Decimal("10000")
)
if PARTAGE_TOPUP_MIN > PARTAGE_TOPUP_MAX:
    raise ImproperlyConfigured(
        f"PARTAGE_TOPUP_MIN ({PARTAGE_TOPUP_MIN}) is above PARTAGE_TOPUP_MAX ({PARTAGE_TOPUP_MAX})."
    )
PARTAGE_STRIPE_ENABLED = env.get("PARTAGE_STRIPE_ENABLED", env.as_bool, default=False)
_stripe_hint = "Set it (or its *_FILE) from the Stripe dashboard, or PARTAGE_STRIPE_ENABLED=false."
PARTAGE_STRIPE_SECRET_KEY = env.get(
    "PARTAGE_STRIPE_SECRET_KEY",
    str,
    default="sk_test_partage_local",
    required_in_production=True,
    production=PRODUCTION and PARTAGE_STRIPE_ENABLED,
    hint=_stripe_hint,
)
PARTAGE_STRIPE_WEBHOOK_SECRET = env.get(
    "PARTAGE_STRIPE_WEBHOOK_SECRET",
    str,
    default="whsec_partage_local",
    required_in_production=True,
    production=PRODUCTION and PARTAGE_STRIPE_ENABLED,
    hint=_stripe_hint,
)
# Where the Stripe SDK sends its requests: Stripe itself, or a local fake (tests, demo).
PARTAGE_STRIPE_API_BASE = env.get(
    "PARTAGE_STRIPE_API_BASE", str, default="https://api.stripe.com"
).rstrip("/")
# Where Stripe Checkout pages live: the portal's Add credit form may redirect there (its CSP).
PARTAGE_STRIPE_CHECKOUT_ORIGIN = env.get(
    "PARTAGE_STRIPE_CHECKOUT_ORIGIN", str, default="https://checkout.stripe.com"
).rstrip("/")
PARTAGE_STRIPE_CHECKOUT_MINUTES = env.get("PARTAGE_STRIPE_CHECKOUT_MINUTES", env.as_int, default=60)
if not 30 <= PARTAGE_STRIPE_CHECKOUT_MINUTES <= 24 * 60:
    # Stripe refuses a Checkout Session that expires sooner than 30 min or later than 24 h.
    raise ImproperlyConfigured(
        f"PARTAGE_STRIPE_CHECKOUT_MINUTES={PARTAGE_STRIPE_CHECKOUT_MINUTES} is invalid: Stripe "
        "Checkout Sessions expire 30 to 1440 minutes after creation."
    )
# Printed on bank-transfer proformas.
PARTAGE_BANK_ACCOUNT_NAME = env.get(
    "PARTAGE_BANK_ACCOUNT_NAME", str, default=PARTAGE_PLATFORM_LEGAL_NAME
)
PARTAGE_BANK_IBAN = env.get(
    "PARTAGE_BANK_IBAN", str, default="" if PRODUCTION else "FR76 3000 6000 0112 3456 7890 189"
)
PARTAGE_BANK_BIC = env.get("PARTAGE_BANK_BIC", str, default="" if PRODUCTION else "AGRIFRPPXXX")
PARTAGE_TOPUP_PROFORMA_DAYS = env.get("PARTAGE_TOPUP_PROFORMA_DAYS", env.as_int, default=30)
# Data protection (marketplace/privacy; docs/data-protection.md says what each one promises).
# Training files and checkpoints are kept this many days after the last job that used them ended;
# an organization may choose up to the maximum.
PARTAGE_RETENTION_DEFAULT_DAYS = env.get("PARTAGE_RETENTION_DEFAULT_DAYS", env.as_int, default=30)
PARTAGE_RETENTION_MAX_DAYS = env.get("PARTAGE_RETENTION_MAX_DAYS", env.as_int, default=365)
if not 1 <= PARTAGE_RETENTION_DEFAULT_DAYS <= PARTAGE_RETENTION_MAX_DAYS:
    raise ImproperlyConfigured(
        "PARTAGE_RETENTION_DEFAULT_DAYS must be from 1 to PARTAGE_RETENTION_MAX_DAYS "
        f"({PARTAGE_RETENTION_MAX_DAYS}); it is {PARTAGE_RETENTION_DEFAULT_DAYS}."
    )
# How often the beat runs the data-protection sweep (retention, expired exports, erasures due).
PARTAGE_PRIVACY_SWEEP_SECONDS = env.get("PARTAGE_PRIVACY_SWEEP_SECONDS", env.as_int, default=3600)
PARTAGE_EXPORT_TTL_DAYS = env.get("PARTAGE_EXPORT_TTL_DAYS", env.as_int, default=7)
PARTAGE_ERASURE_GRACE_DAYS = env.get("PARTAGE_ERASURE_GRACE_DAYS", env.as_int, default=14)
# Accounting records (invoices, ledger entries, provider statements and payouts) are kept this
# many years after the end of the financial year they belong to (Code de commerce L123-22: 10).
# Only an erased organization's records are then purged (docs/data-protection.md).
PARTAGE_ACCOUNTING_RETENTION_YEARS = env.get(
    "PARTAGE_ACCOUNTING_RETENTION_YEARS", env.as_int, default=10
)
if PARTAGE_ACCOUNTING_RETENTION_YEARS < 10:
    raise ImproperlyConfigured(
        "PARTAGE_ACCOUNTING_RETENTION_YEARS must be at least 10 (Code de commerce L123-22 keeps "
        f"accounting records 10 years); it is {PARTAGE_ACCOUNTING_RETENTION_YEARS}."
    )
# The country where the default storage (MEDIA_ROOT, or the bucket behind it) keeps its bytes:
# an organization whose residency policy excludes it cannot store files there.
PARTAGE_STORAGE_COUNTRY = env.get(
    "PARTAGE_STORAGE_COUNTRY", str.upper, default=PARTAGE_PLATFORM_COUNTRY
)


def _provenance_key() -> str:
    """The platform's Ed25519 private key (PEM, PKCS#8) that signs adapter provenance."""
    pem = env.get(
        "PARTAGE_PROVENANCE_KEY",
        str,
        default="",
        required_in_production=True,
        production=PRODUCTION,
        hint="Generate one with: openssl genpkey -algorithm ed25519 (mount it as "
        "PARTAGE_PROVENANCE_KEY_FILE).",
    )
    if pem:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        try:
            key = serialization.load_pem_private_key(pem.encode(), password=None)
        except ValueError as e:
            raise ImproperlyConfigured(
                f"PARTAGE_PROVENANCE_KEY is not a PEM private key ({e}). "
                "Generate one with: openssl genpkey -algorithm ed25519"
            ) from e
        if not isinstance(key, Ed25519PrivateKey):
            raise ImproperlyConfigured(
                "PARTAGE_PROVENANCE_KEY must be an Ed25519 key (openssl genpkey -algorithm ed25519)."
            )
        return pem
    # Embedded default: one key generated on first run and kept beside the secret key.
    key_file = DATA_DIR / "provenance_ed25519.pem"
    if not key_file.exists():
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        DATA_DIR.mkdir(parents=True, exist_ok=True)
        tmp = key_file.with_suffix(".tmp")
        tmp.write_bytes(
            Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        tmp.chmod(0o600)
        tmp.replace(key_file)
    return key_file.read_text(encoding="utf-8")


PARTAGE_PROVENANCE_KEY = _provenance_key()
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

MEDIA_ROOT = env.get("PARTAGE_MEDIA_ROOT", Path, default=DATA_DIR / "media")
MEDIA_URL = "/media/"
STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG or TESTING
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

LANGUAGE_CODE = "en"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
if TESTING:
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "marketplace.api.authentication.ApiKeyAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "marketplace.api.permissions.ApiKeyScope",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["marketplace.api.throttling.ApiKeyRateThrottle"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # JSON bodies, as the OpenAI API takes them (only file uploads are multipart, set on their
    # view). Form bodies read a missing boolean as false, so an empty form passed validation
    # that the published JSON schema says must fail.
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "EXCEPTION_HANDLER": "marketplace.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Partage API",
    "DESCRIPTION": "OpenAI-compatible fine-tuning and GPU marketplace API.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "marketplace.api.schema.postprocess_errors_and_idempotency",
        "marketplace.api.schema_scopes.postprocess_scopes_and_body_limit",
    ],
}
# Partner API (marketplace/api): rate limit per key, webhook targets, SSE, benchmark view.
PARTAGE_API_RATE_LIMIT = env.get("PARTAGE_API_RATE_LIMIT", env.as_int, default=600)
PARTAGE_API_RATE_WINDOW_SECONDS = env.get("PARTAGE_API_RATE_WINDOW_SECONDS", env.as_int, default=60)
# Only for development and tests: let webhooks reach private, loopback and link-local hosts.
PARTAGE_WEBHOOK_ALLOW_PRIVATE = env.get("PARTAGE_WEBHOOK_ALLOW_PRIVATE", env.as_bool, default=False)
if PRODUCTION and PARTAGE_WEBHOOK_ALLOW_PRIVATE:
    raise ImproperlyConfigured(
        "PARTAGE_WEBHOOK_ALLOW_PRIVATE=true is refused in production: webhooks would reach "
        "Partage's internal network."
    )
# Inference on fine-tuned models (marketplace/inference/backends.py).
PARTAGE_INFERENCE_BACKEND = env.get(
    "PARTAGE_INFERENCE_BACKEND", env.one_of(["local", "vllm"]), default="local"
)
PARTAGE_INFERENCE_URL = env.get(
    "PARTAGE_INFERENCE_URL", str, default="http://127.0.0.1:8081"
).rstrip("/")
PARTAGE_INFERENCE_TIMEOUT_SECONDS = env.get(
    "PARTAGE_INFERENCE_TIMEOUT_SECONDS", env.as_int, default=120
)
PARTAGE_ADAPTER_DIR = env.get("PARTAGE_ADAPTER_DIR", Path, default=DATA_DIR / "adapters")
PARTAGE_VLLM_ROUTES = env.get(
    "PARTAGE_VLLM_ROUTES",
    env.as_url_map,
    default={},
    required_in_production=PARTAGE_INFERENCE_BACKEND == "vllm",
    production=PRODUCTION,
    hint='Set it to a JSON object {"<base model id>": "http://<vllm service>:8000"}.',
)
PARTAGE_VLLM_ADAPTER_DIR = env.get("PARTAGE_VLLM_ADAPTER_DIR", Path, default=PARTAGE_ADAPTER_DIR)

PARTAGE_SSE_MAX_SECONDS = env.get("PARTAGE_SSE_MAX_SECONDS", env.as_int, default=600)
# Exposes /v1/_bench/bare, a plain Django JSON view, to compare against in benchmarks.
PARTAGE_API_BENCH_VIEW = env.get("PARTAGE_API_BENCH_VIEW", env.as_bool, default=False)

# Security headers; production turns on the secure cookies and HSTS.
SESSION_COOKIE_SECURE = PRODUCTION
CSRF_COOKIE_SECURE = PRODUCTION
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = 31536000
    SECURE_SSL_REDIRECT = env.get("DJANGO_SECURE_SSL_REDIRECT", env.as_bool, default=True)
    # Inside the cluster, plain HTTP to the Service: trainers call back (PARTAGE_INTERNAL_URL),
    # the kubelet probes, Prometheus scrapes. A redirect to https would strand them all.
    SECURE_REDIRECT_EXEMPT = [r"^internal/", r"^healthz$", r"^readyz$", r"^metrics$"]

LOG_LEVEL = env.get(
    "PARTAGE_LOG_LEVEL", env.one_of(["debug", "info", "warning", "error"]), default="info"
).upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "marketplace.logging.JsonFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "partage": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
    },
}
WHITENOISE_USE_FINDERS = DEBUG or TESTING
