"""``python -m platform_tasks`` is the ``platform-tasks`` command."""

from platform_tasks.cli import main

raise SystemExit(main())
