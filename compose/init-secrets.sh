#!/bin/sh
# Creates the secret files docker-compose.yml mounts (compose/secrets/<name>), with random
# passwords, unless they already exist. Run once from anywhere:  compose/init-secrets.sh
#
# The files are world-readable (0644) because Compose bind-mounts them as they are and the
# klinebus containers run as uid 10001; keep the directory itself private (0700) on a shared
# host, or chown the files to 10001 and make them 0400.
set -eu
dir="$(cd "$(dirname "$0")" && pwd)/secrets"
mkdir -p "$dir"
chmod 0700 "$dir" 2>/dev/null || true

rand() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

write() { # name value
  if [ -e "$dir/$1" ]; then
    echo "kept    secrets/$1"
  else
    printf '%s\n' "$2" > "$dir/$1"
    chmod 0644 "$dir/$1"
    echo "created secrets/$1"
  fi
}

for role in producer pg_sink signals ops admin; do
  write "nats_${role}_password" "$(rand)"
done
write grafana_admin_password "$(rand)"
# Grafana's read-only PostgreSQL role (the grafana-db-role job sets it on every start).
write postgres_grafana_password "$(rand)"
if [ ! -e "$dir/postgres_password" ]; then
  pg="$(rand)"
  write postgres_password "$pg"
  # The URL must carry the same password; POSTGRES_USER / POSTGRES_DB defaults of .env.example.
  rm -f "$dir/database_url"
  write database_url "postgres://${POSTGRES_USER:-klinebus}:${pg}@postgres:5432/${POSTGRES_DB:-klinebus}"
else
  echo "kept    secrets/postgres_password"
  [ -e "$dir/database_url" ] || echo "missing secrets/database_url: write postgres://klinebus:<postgres_password>@postgres:5432/klinebus into it" >&2
fi
