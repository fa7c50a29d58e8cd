#!/bin/sh
# The stand-in haproxy image's entrypoint, doing what the official one does: options alone
# (`-f file`) run haproxy with them, and haproxy runs in master-worker mode (-W: a worker
# replaced on SIGUSR2 reloads) and in the foreground (-db), so that it is the container's process.
set -e
if [ "${1#-}" != "$1" ]; then
  set -- haproxy "$@"
fi
if [ "$1" = haproxy ]; then
  shift
  set -- haproxy -W -db "$@"
fi
exec "$@"
