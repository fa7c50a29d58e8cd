#!/usr/bin/env bash
# The whole stack on this machine without Docker (`make stack`): the Better Auth companion and
# its demo page on http://127.0.0.1:3001, the API on http://127.0.0.1:8000, one PostgreSQL
# database for both. Ctrl-C stops everything.
#
#   DATABASE_URL  a PostgreSQL database (created when missing); default: todo_stack on localhost
#   AUTH_PORT / API_PORT  3001 / 8000
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="$repo/backend/.venv/bin"

export DATABASE_URL="${DATABASE_URL:-postgresql://${PGUSER:-postgres}@localhost:5432/todo_stack}"
auth_port="${AUTH_PORT:-3001}"
api_port="${API_PORT:-8000}"
auth_url="http://127.0.0.1:$auth_port"
api_url="http://127.0.0.1:$api_port"

# One secret across runs: Better Auth encrypts its signing keys with it and signs its cookies.
secret_file="$here/.stack-secret"
if [ -z "${BETTER_AUTH_SECRET:-}" ]; then
  [ -s "$secret_file" ] || node -e "console.log(require('crypto').randomBytes(36).toString('base64url'))" >"$secret_file"
  BETTER_AUTH_SECRET="$(cat "$secret_file")"
fi
export BETTER_AUTH_SECRET

# Create the database when it is not there yet, then one migrate step for both services.
"$bin/python" - <<'PY'
import os
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from todo_api.db import normalise_url

url = make_url(normalise_url(os.environ["DATABASE_URL"]))
server = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
with server.connect() as conn:
    exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": url.database})
    if exists.first() is None:
        conn.execute(sa.text(f'CREATE DATABASE "{url.database}"'))
        print(f"created database {url.database}")
server.dispose()
PY
"$bin/todo-api" migrate

pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait || true; }
trap stop EXIT INT TERM

(cd "$here" && BETTER_AUTH_URL="$auth_url" TODO_API_URL="$api_url" HOST=127.0.0.1 PORT="$auth_port" \
  exec node server.mjs) &
pids+=($!)
BETTER_AUTH_URL="$auth_url" CORS_ORIGINS="$auth_url" MIGRATE_ON_START=false HOST=127.0.0.1 \
  PORT="$api_port" WEB_CONCURRENCY=1 LOG_FORMAT=text "$bin/todo-api" serve &
pids+=($!)

echo "open $auth_url: sign up, then add tasks (the API is at $api_url)"
wait -n
