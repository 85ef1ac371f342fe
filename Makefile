# The README's two commands are `make demo` and `make test`; both set the machine up first.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: setup demo test lint unit docs

setup:
	scripts/setup.sh

demo: setup
	$(VENV)/hotupdate demo

# Lint, types, then every test tier against the real services (RabbitMQ, PostgreSQL, rsync,
# Erlang, Chromium). .ci/run calls exactly this.
test: setup
	$(VENV)/ruff check .
	$(VENV)/mypy
	set -a; [ -f .ci/test.env ] && . .ci/test.env; set +a; $(VENV)/pytest

unit:
	$(VENV)/pytest tests/unit

lint:
	$(VENV)/ruff check .
	$(VENV)/mypy

docs:
	$(VENV)/hotupdate events docs
