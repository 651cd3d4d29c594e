#!/bin/sh
# Entry point of the compose `nats` service(s): exports each mounted secret
# /run/secrets/nats_<role>_password as KLINEBUS_NATS_<ROLE>_PASSWORD (the variables auth.conf
# refers to; nats-server resolves config variables from its environment), then runs nats-server
# with the given arguments. A role without its secret makes nats-server refuse to start.
set -eu
for f in /run/secrets/nats_*_password; do
  [ -e "$f" ] || continue
  role=$(basename "$f" _password | sed 's/^nats_//' | tr 'a-z-' 'A-Z_')
  value=$(cat "$f")
  export "KLINEBUS_NATS_${role}_PASSWORD=${value}"
done
exec nats-server "$@"
