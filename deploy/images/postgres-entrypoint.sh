#!/bin/sh
# The stand-in's entrypoint: what the official postgres image's entrypoint does for this
# project's compose files and testcontainers (POSTGRES_USER/PASSWORD/DB on first start, password
# authentication for remote hosts or POSTGRES_HOST_AUTH_METHOD, listening on every address),
# nothing more.
set -eu
if [ "${1#-}" != "$1" ]; then set -- postgres "$@"; fi
if [ "$1" != postgres ]; then exec "$@"; fi

: "${PGDATA:=/var/lib/postgresql/data}"
user="${POSTGRES_USER:-postgres}"
database="${POSTGRES_DB:-$user}"
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 0700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "postgres stand-in: POSTGRES_PASSWORD is required, as in the official image" >&2
        exit 1
    fi
    password_file="$(mktemp)"
    printf '%s' "$POSTGRES_PASSWORD" > "$password_file"
    initdb --username="$user" --pwfile="$password_file" --auth-local=trust \
        --auth-host=scram-sha-256 --pgdata="$PGDATA" >/dev/null
    rm -f "$password_file"
    echo "host all all all ${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" >> "$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait start
    if [ "$database" != postgres ]; then
        psql --username="$user" --dbname=postgres --set=ON_ERROR_STOP=1 \
            --command="CREATE DATABASE \"$database\""
    fi
    pg_ctl --pgdata="$PGDATA" --mode=fast --wait stop
    echo "PostgreSQL init process complete; ready for start up."
fi
exec "$@"
