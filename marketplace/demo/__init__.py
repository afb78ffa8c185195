"""The embedded default in one command (`manage.py partage_up`, run by `make run`): above every
domain app, it seeds each one's demo data and starts the web server, worker and inference worker."""
