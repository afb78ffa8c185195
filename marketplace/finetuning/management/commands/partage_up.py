"""`manage.py partage_up`: the embedded default in one command.

Migrates, seeds the demo organization, prints a portal login and an API key, then runs the web
server (gunicorn on 127.0.0.1:8000) and a Celery worker with beat (filesystem broker, local
executor) until Ctrl-C. Running it again is harmless: it reuses the demo data.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from marketplace.accounts.seed import demo_seed


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

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        # DEBUG is off by default, so the static files are served from their collected copy.
        call_command("collectstatic", interactive=False, verbosity=0)
        demo = demo_seed()
        url = f"http://{options['bind']}"
        engine = str(settings.DATABASES["default"]["ENGINE"])
        self.stdout.write(
            "\nPartage is starting on its embedded default "
            f"({'SQLite' if 'sqlite' in engine else 'PostgreSQL'}, "
            f"{'filesystem' if settings.CELERY_BROKER_URL.startswith('filesystem') else 'Redis'} broker, "
            f"{settings.PARTAGE_EXECUTOR} executor).\n\n"
            f"  Portal:   {url}/  (login {demo.username} / {demo.password})\n"
            f"  API:      {url}/v1  (docs {url}/v1/docs)\n"
            f"  API key:  {demo.api_key}\n\n"
            "Press Ctrl-C to stop.\n"
        )
        if options["no_serve"]:
            return
        self._serve(options["bind"])

    def _serve(self, bind: str) -> None:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "marketplace.settings"}
        # Trainers call back to the address we serve on, unless told otherwise.
        env.setdefault("PARTAGE_INTERNAL_URL", f"http://{bind}")
        env.setdefault("PARTAGE_PUBLIC_URL", f"http://{bind}")
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
        names = ["web", "worker"]
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
