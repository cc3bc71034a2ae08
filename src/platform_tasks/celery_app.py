"""The app for Celery's own tools (``celery -A platform_tasks.celery_app …``, Flower).

Importing this module reads the settings from the environment.
"""

from platform_tasks.app import create_app
from platform_tasks.settings import load_settings

app = create_app(load_settings())
