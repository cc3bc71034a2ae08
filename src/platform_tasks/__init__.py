"""platform-tasks: a background-job platform on Celery with a Redis Sentinel broker."""

__version__ = "0.1.0"
