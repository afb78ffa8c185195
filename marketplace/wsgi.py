"""WSGI entry point for gunicorn and runserver; bodies over the upload limit never reach Django."""

import os

from django.core.wsgi import get_wsgi_application

from marketplace.body_limit import BodySizeLimit

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
application = BodySizeLimit(get_wsgi_application())
