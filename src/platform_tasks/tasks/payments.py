"""Tasks of the ``payments`` queue."""
