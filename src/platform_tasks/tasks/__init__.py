"""The platform's tasks, one module per queue. Importing a module registers its tasks."""
