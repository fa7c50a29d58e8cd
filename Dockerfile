# syntax=docker/dockerfile:1
#
# Todo Task API image. Build from the repository root:
#   docker build -t todo-api .                  runtime image (the last stage, the default target)
#   docker build --target test -t todo-api:test .   the test suite (see docker-compose.test.yml)
#
# The runtime runs as uid 10001 and works with a read-only root file system, provided that
# PROMETHEUS_MULTIPROC_DIR (/tmp/prometheus-multiproc) and /tmp are writable: mount a tmpfs on
# each (compose: `tmpfs:`, Kubernetes: emptyDirs). Gunicorn's heartbeat files go to /dev/shm,
# which stays writable. DATABASE_URL must point at PostgreSQL: the SQLite default would write
# ./todo.db into the read-only /app. Pin the base images by digest (Renovate or Dependabot keep
# the digests current); the tags below are the versions we test with.

ARG PYTHON_VERSION=3.11
ARG UV_VERSION=0.13.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# Shared by every stage: the interpreter and the unprivileged user. The virtualenv is built in
# one stage and copied to another, so both must see the same interpreter at the same path.
FROM python:${PYTHON_VERSION}-slim-bookworm AS base
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH="/app/.venv/bin:${PATH}"
# A fixed uid/gid so that Kubernetes' runAsUser and volume ownership can name it.
RUN groupadd --system --gid 10001 app \
    && useradd --system --no-log-init --uid 10001 --gid app \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin app

FROM base AS builder
ARG PYTHON_VERSION
COPY --from=uv /uv /usr/local/bin/uv
# Bytecode compiled once here, because the runtime cannot write it (read-only root);
# copy mode because the cache mount is another file system; never a uv-managed Python.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=python${PYTHON_VERSION} \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src/backend
# Dependencies first, from the lock file alone: this layer is rebuilt only when the lock changes,
# and it is all the runtime copies of this virtualenv (the project is installed there apart).
# Absolute mount targets: buildah refuses relative ones.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=backend/pyproject.toml,target=/src/backend/pyproject.toml \
    --mount=type=bind,source=backend/uv.lock,target=/src/backend/uv.lock \
    uv sync --frozen --no-dev --no-install-project
COPY backend/pyproject.toml backend/uv.lock ./
COPY backend/todo_api ./todo_api
# The project as a wheel of its own (tens of KB), installed apart into /project (its package,
# dist-info and console script, laid out as in the virtualenv), for the runtime's last layer.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv build --wheel --out-dir /dist \
    && uv pip install --python /app/.venv/bin/python --prefix /project --offline --no-deps \
        --compile-bytecode /dist/todo_api-*.whl

# The test suite, run by docker-compose.test.yml against a throwaway PostgreSQL. The files are
# laid out as in the repository because tests/deploy/test_deploy.py validates the deployment files.
FROM builder AS test
# What the suite starts or calls itself, from Debian as .ci/run installs it: PgBouncer (the
# pooled backend), Prometheus and promtool (the rules and the live scrape), make and curl (the
# README's commands). Not in this image: Chromium, Node.js and a container engine; the tests
# that need them are left out by the CMD below and run on the host (`make test`).
# hadolint ignore=DL3008
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        pgbouncer prometheus make curl >/dev/null \
    && rm -rf /var/lib/apt/lists/*
# The dev dependencies from the lock, then the project from the wheel the builder just made: a
# `uv sync` of the project would take uv's cached build of it, which uv keys on pyproject.toml
# and not on the code, and so could install the code of an earlier build (seen with buildah).
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-install-project \
    && uv pip install --python /app/.venv/bin/python --offline --no-deps --reinstall \
        /dist/todo_api-*.whl
COPY backend/tests ./tests
COPY Dockerfile .dockerignore docker-compose.yml docker-compose.test.yml .env.example \
    Makefile README.md /src/
COPY deploy /src/deploy
COPY .github /src/.github
COPY .ci /src/.ci
# The tools' caches go to /tmp: the user's home does not exist, and the tree belongs to root.
ENV HOME=/tmp
USER 10001:10001
# No cache provider: the source tree belongs to root, and the test user cannot write there.
# CI=true: a component missing from this image fails its tests instead of skipping them.
ENV CI=true
# Left out as well: the Makefile's own targets (`make run`, the npm step of `make test`), which
# belong to a checkout with its virtualenv in backend/.venv, and the tests that take previous
# releases from the repository's git history (the image has no .git), and the Kustomize renders
# (kubectl has no Debian package to install here).
# And the slow tests (server processes, fuzzing, stalled databases): they run on the host, and
# the image's suite is the fast tier, the API on every backend and the database layer on this
# image's own interpreter and packages.
CMD ["pytest", "-p", "no:cacheprovider", "-m", "not container and not slow", "--ignore=tests/e2e", \
     "--ignore=tests/deploy/test_docs_assets.py", "--ignore=tests/deploy/test_release.py", \
     "--ignore=tests/db/test_migration_compat.py", \
     "--deselect=tests/server/test_cli.py::test_make_run_listens_on_port", \
     "--deselect=tests/deploy/test_better_auth_deploy.py::test_make_test_installs_the_companions_locked_packages", \
     "--deselect=tests/deploy/test_deploy.py::test_kustomize_builds_a_valid_base", \
     "--deselect=tests/deploy/test_deploy.py::test_the_servicemonitor_component_composes_with_the_base"]

FROM base AS runtime
ENV PORT=8000 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus-multiproc
# Present in the image for plain `docker run` and Fly; a tmpfs/emptyDir mounted here replaces it.
RUN install --directory --owner=10001 --group=10001 --mode=0700 "${PROMETHEUS_MULTIPROC_DIR}"
# Owned by root, so that the app cannot modify its own code even where the root is writable.
# Two layers: the dependencies (about 100 MB, the same layer for every build of one lock file:
# the builder's virtualenv holds nothing else), then the project alone, last, so that a code
# change ships one layer of a few hundred KB.
# A COPY, not a RUN that mounts the builder's wheel: buildah (podman build) reuses such a RUN
# from its cache whatever the mounted stage holds, and would ship the previous code.
COPY --from=builder /app/.venv /app/.venv
COPY --from=builder /project /app/.venv
WORKDIR /app
# Numeric: Kubernetes' runAsNonRoot can verify only a numeric user.
USER 10001:10001
EXPOSE 8000
# No curl in the image: the interpreter probes /livez (the process only, not the database, so
# a database outage does not get healthy containers restarted).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/livez', timeout=4)"]
# Gunicorn's graceful shutdown signal (the default, stated because orchestrators read it).
STOPSIGNAL SIGTERM
CMD ["todo-api", "serve"]
