# Everyday commands, each one line calling the real tool. `make help` lists them.
COMPOSE := docker compose
DEV := $(COMPOSE) -f compose.yaml -f compose.dev.yaml
DEMO := $(COMPOSE) -f compose.yaml -f compose.demo.yaml

.PHONY: help up dev down logs migrate makemigration test lint bench deploy backup backups restore restore-to demo demo-reset secrets

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

up: ## start the stack (https://localhost, or your DOMAIN)
	$(COMPOSE) up -d --build --wait

dev: ## start the dev stack: reload on edit, Postgres on 127.0.0.1:5432, in the foreground
	$(DEV) up --build --watch

down: ## stop and remove the stack's containers (data volumes stay)
	$(DEMO) down --remove-orphans

logs: ## follow every service's logs
	$(COMPOSE) logs -f --tail=100

migrate: ## apply migrations to the dev database
	$(DEV) run --rm migrate

makemigration: ## autogenerate a migration from model changes: make makemigration m="add sku"
	$(DEV) run --rm --user "$$(id -u):$$(id -g)" migrate alembic revision --autogenerate -m "$(m)"

test: ## run every test (the README's test command)
	uv run pytest

lint: ## ruff, formatting and mypy --strict
	uv run ruff check . && uv run ruff format --check . && uv run mypy

bench: ## run the benchmark suite; results in bench/results/
	uv run python -m bench

deploy: ## zero-downtime deploy of this checkout
	scripts/deploy

secrets: ## write production secrets to secrets/ (random, 0600); see compose.secrets.yaml
	scripts/secrets

backup: ## take a backup now (dump, off-site copy, WAL so far into the bucket)
	$(COMPOSE) exec backup backup now

backups: ## list backups, off-site copies and the point-in-time window
	$(COMPOSE) exec backup backup list

restore: ## restore a backup (app stopped first): make restore FILE=berth-20261124T030000Z.dump
	$(COMPOSE) exec backup backup restore $(FILE)

restore-to: ## point-in-time restore: make restore-to TIME=2026-11-24T10:15:00Z (TIME=latest: all)
	backup/restore-to "$(TIME)"

demo: ## the full stack with seeded demo data
	$(DEMO) up -d --build --wait

demo-reset: ## put the demo data back to its seeded state
	$(DEMO) run --rm --no-deps seed --reset
