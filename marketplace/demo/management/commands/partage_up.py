"""`manage.py partage_up`: the embedded default in one command.

Migrates, seeds the demo organization, prints a portal login and an API key, then runs the web
server (gunicorn on 127.0.0.1:8000), a Celery worker with beat (filesystem broker, local
executor) and the local inference worker (PARTAGE_INFERENCE_URL, 127.0.0.1:8081) until Ctrl-C.
Running it again is harmless: it reuses the demo data.

Card top-ups work in the demo against a local fake of Stripe's HTTP API (tests/fakes/
stripe_api.py, run in this process) unless PARTAGE_STRIPE_ENABLED is set: no real money moves.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from marketplace.accounts.seed import demo_seed, demo_staff_seed
from marketplace.billing.seed import demo_credit_seed
from marketplace.capacity.seed import demo_supply_seed


def web_command(bind: str) -> list[str]:
    """The embedded web server: gunicorn with threads, configured by marketplace.gunicorn_conf
    (its keep-alive outlasts clients' connection pools), as in the image and on Kubernetes."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "marketplace.wsgi:application",
        "-c",
        "python:marketplace.gunicorn_conf",
        "--bind",
        bind,
        "--workers",
        "2",
        "--threads",
        "4",
        "--timeout",
        "120",
        "--access-logfile",
        "-",
    ]


class Command(BaseCommand):
    help = "Run Partage on its embedded default (web + Celery worker + local training)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--bind", default="127.0.0.1:8000")
        parser.add_argument("--no-serve", action="store_true", help="Set up and print, then exit.")
        parser.add_argument(
            "--no-fake-stripe",
            action="store_true",
            help="Do not run the local fake of Stripe (card top-ups are then off, unless "
            "PARTAGE_STRIPE_* point at a real Stripe account).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        # DEBUG is off by default, so the static files are served from their collected copy.
        call_command("collectstatic", interactive=False, verbosity=0)
        demo = demo_seed()
        staff, staff_password = demo_staff_seed()
        pool = demo_supply_seed(staff=staff)
        credit = demo_credit_seed(organization=demo.organization)
        url = f"http://{options['bind']}"
        engine = str(settings.DATABASES["default"]["ENGINE"])
        self.stdout.write(
            "\nPartage is starting on its embedded default "
            f"({'SQLite' if 'sqlite' in engine else 'PostgreSQL'}, "
            f"{'filesystem' if settings.CELERY_BROKER_URL.startswith('filesystem') else 'Redis'} broker, "
            f"{settings.PARTAGE_EXECUTOR} executor).\n\n"
            f"  Portal:   {url}/  (login {demo.username} / {demo.password})\n"
            f"  Cockpit:  {url}/cockpit/  (staff login {staff.username} / {staff_password})\n"
            f"  API:      {url}/v1  (docs {url}/v1/docs)\n"
            f"  API key:  {demo.api_key}\n"
            f"  Supply:   a demo provider offers this machine as pool {pool.public_id} "
            f"(flavor {pool.flavor.slug}: {pool.flavor.model_name}, "
            f"EUR {pool.price_per_gpu_hour:.2f}/h)\n"
            f"  Credit:   the demo startup has EUR {credit.amount:.2f} of demo credit "
            "(add more under Billing > Add credit)\n\n"
            "Press Ctrl-C to stop.\n"
        )
        if options["no_serve"]:
            return
        self._serve(options["bind"], fake_stripe=not options["no_fake_stripe"])

    def _fake_stripe(self, env: dict[str, str], bind: str) -> Any:
        """Start the fake Stripe for the demo and point the web server's SDK at it."""
        if "PARTAGE_STRIPE_ENABLED" in env or settings.PRODUCTION:
            return None
        try:
            from tests.fakes.stripe_api import FakeStripe
        except ImportError:  # an installed copy without the test tree: cards stay off
            return None
        fake = FakeStripe(
            secret_key=f"sk_test_demo_{secrets.token_hex(12)}",
            webhook_secret=f"whsec_demo_{secrets.token_hex(16)}",
            webhook_url=f"http://{bind}/webhooks/stripe",
        ).serve()
        env.update(
            PARTAGE_STRIPE_ENABLED="true",
            PARTAGE_STRIPE_SECRET_KEY=fake.secret_key,
            PARTAGE_STRIPE_WEBHOOK_SECRET=fake.webhook_secret,
            PARTAGE_STRIPE_API_BASE=fake.base_url,
            PARTAGE_STRIPE_CHECKOUT_ORIGIN=fake.base_url,
        )
        self.stdout.write(
            f"  Card top-ups: a local fake of Stripe at {fake.base_url} (no real money).\n"
        )
        return fake

    def _serve(self, bind: str, *, fake_stripe: bool = True) -> None:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "marketplace.settings"}
        # Trainers call back to the address we serve on, unless told otherwise.
        env.setdefault("PARTAGE_INTERNAL_URL", f"http://{bind}")
        env.setdefault("PARTAGE_PUBLIC_URL", f"http://{bind}")
        stripe_fake = self._fake_stripe(env, bind) if fake_stripe else None
        # The inference worker resolves base models in the same cache as the trainers.
        env.setdefault("PARTAGE_MODEL_CACHE", str(settings.PARTAGE_MODEL_CACHE))
        commands = [
            web_command(bind),
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.celery",
                "worker",
                "--beat",
                "--loglevel",
                "INFO",
                "--concurrency",
                "2",
                "--schedule",
                str(settings.DATA_DIR / "celerybeat-schedule"),
            ],
        ]
        # The inference worker: its own process, so a model never loads into the web server.
        inference_bind = settings.PARTAGE_INFERENCE_URL.removeprefix("http://")
        commands.append([sys.executable, "-m", "workers.inference", "--bind", inference_bind])
        names = ["web", "worker", "inference"]
        processes = [subprocess.Popen(c, env=env) for c in commands]
        stopping = False

        def stop(*_: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            while not stopping:
                for name, process in zip(names, processes, strict=True):
                    if process.poll() is not None:
                        self.stderr.write(
                            f"The {name} process exited with {process.returncode}; stopping."
                        )
                        stopping = True
                time.sleep(0.5)
        finally:
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
            if stripe_fake is not None:
                stripe_fake.stop()
