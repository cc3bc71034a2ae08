# The two commands a newcomer needs: `make run` (the platform, locally) and `make test`.
.PHONY: run test lint bootstrap

VENV := .venv
BIN := $(VENV)/bin

bootstrap:
	@scripts/bootstrap.sh

run: bootstrap
	$(BIN)/platform-tasks dev

lint: bootstrap
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest
