#!/bin/sh
# Renders traefik.yml with this deployment's values, then runs Traefik on it.
# Traefik cannot combine a config file with flags or env vars, hence this step.
set -eu

: "${ACME_EMAIL:=}"
: "${ACME_CA_SERVER:=https://acme-v02.api.letsencrypt.org/directory}"
: "${TRAEFIK_LOG_LEVEL:=INFO}"
: "${BERTH_PROJECT:?BERTH_PROJECT (the Compose project name) must be set}"

reject() { echo "traefik: invalid $1=$2: $3" >&2; exit 78; }
case "$ACME_EMAIL" in *[!A-Za-z0-9._%+@-]*) reject ACME_EMAIL "$ACME_EMAIL" "not an e-mail address";; esac
case "$ACME_CA_SERVER" in *[!A-Za-z0-9._~:/?#@%=+-]*|https:/) reject ACME_CA_SERVER "$ACME_CA_SERVER" "not a plain https:// URL";; https://?*) ;; *) reject ACME_CA_SERVER "$ACME_CA_SERVER" "must start with https://";; esac
case "$TRAEFIK_LOG_LEVEL" in TRACE|DEBUG|INFO|WARN|ERROR|FATAL|PANIC) ;; *) reject TRAEFIK_LOG_LEVEL "$TRAEFIK_LOG_LEVEL" "use DEBUG, INFO, WARN or ERROR";; esac
case "$BERTH_PROJECT" in *[!a-z0-9_-]*) reject BERTH_PROJECT "$BERTH_PROJECT" "not a Compose project name";; esac
# dynamic/limits.yml reads these; a value Traefik cannot parse would drop the whole file, and
# with it every route. 0 would switch a limit off, so it is refused too.
positive() { case "$2" in ''|*[!0-9]*|0*) reject "$1" "$2" "use a whole number of 1 or more";; esac; }
positive EDGE_RATE_LIMIT_AVERAGE "${EDGE_RATE_LIMIT_AVERAGE:-}"
positive EDGE_RATE_LIMIT_BURST "${EDGE_RATE_LIMIT_BURST:-}"
positive EDGE_INFLIGHT_LIMIT "${EDGE_INFLIGHT_LIMIT:-}"

rendered=/tmp/traefik.yml
sed -e "s|\${ACME_EMAIL}|$ACME_EMAIL|g" \
    -e "s|\${ACME_CA_SERVER}|$ACME_CA_SERVER|g" \
    -e "s|\${TRAEFIK_LOG_LEVEL}|$TRAEFIK_LOG_LEVEL|g" \
    -e "s|\${BERTH_PROJECT}|$BERTH_PROJECT|g" \
    /etc/traefik/traefik.yml > "$rendered"

exec traefik --configFile="$rendered" "$@"
