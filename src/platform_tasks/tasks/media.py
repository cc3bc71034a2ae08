"""Tasks of the ``media`` queue."""
