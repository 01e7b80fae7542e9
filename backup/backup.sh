#!/usr/bin/env bash
# Berth's database backups: pg_dump on a schedule, retention, and a restore that either
# succeeds completely or changes nothing. The `backup` service runs it in the Postgres
# image (so pg_dump always matches the server's major version); operators run it with
#   docker compose run --rm backup now             back up now
#   docker compose run --rm backup list            list backups (newest first)
#   docker compose run --rm backup restore FILE    restore one (refused while the app is
#                                                  connected; --force to go ahead anyway)
# Settings (environment): BACKUP_SCHEDULE "03:00" (daily at these UTC times, comma
# separated) or "every 6h" (s, m, h); BACKUP_KEEP_DAILY 7; BACKUP_KEEP_WEEKLY 4;
# BACKUP_MAX_AGE_HOURS (how stale the newest backup may get before the healthcheck fails;
# default: twice the schedule's period, plus an hour). Connection: PGHOST, PGUSER,
# PGPASSWORD, PGDATABASE.
set -Eeuo pipefail

DIR=${BACKUP_DIR:-/backups}
DB=${PGDATABASE:?PGDATABASE is not set}
SCHEDULE=${BACKUP_SCHEDULE:-03:00}
KEEP_DAILY=${BACKUP_KEEP_DAILY:-7}
KEEP_WEEKLY=${BACKUP_KEEP_WEEKLY:-4}
STATUS="$DIR/.status"
export PGOPTIONS="-c client_min_messages=warning"
STARTED=/tmp/backup-scheduler-started

log() { printf '%s backup: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
one_line() { tr '\n' ' ' | sed 's/  */ /g; s/ $//'; }

# Postgres images start as root; backups are written as the postgres user.
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$DIR"
  chown postgres:postgres "$DIR"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

# -- the schedule ------------------------------------------------------------------------
period_seconds() { # the schedule's period, for the staleness check
  case "$SCHEDULE" in
    every\ *) interval_seconds "${SCHEDULE#every }" ;;
    *) echo 86400 ;;
  esac
}

interval_seconds() {
  [[ "$1" =~ ^([0-9]+)([smh])$ ]] || return 1
  local n=${BASH_REMATCH[1]}
  case ${BASH_REMATCH[2]} in s) echo "$n" ;; m) echo $((n * 60)) ;; h) echo $((n * 3600)) ;; esac
}

next_run() { # epoch seconds of the next scheduled run
  local now best time candidate
  now=$(date -u +%s)
  case "$SCHEDULE" in
    every\ *) echo $((now + $(interval_seconds "${SCHEDULE#every }"))) ;;
    *)
      best=""
      IFS=, read -ra times <<<"$SCHEDULE"
      for time in "${times[@]}"; do
        candidate=$(date -u -d "today $time" +%s)
        [ "$candidate" -gt "$now" ] || candidate=$(date -u -d "tomorrow $time" +%s)
        if [ -z "$best" ] || [ "$candidate" -lt "$best" ]; then best=$candidate; fi
      done
      echo "$best"
      ;;
  esac
}

check_schedule() {
  local time
  case "$SCHEDULE" in
    every\ *) interval_seconds "${SCHEDULE#every }" >/dev/null \
      || die "BACKUP_SCHEDULE=\"$SCHEDULE\": use e.g. \"every 6h\" (s, m or h)" ;;
    *)
      IFS=, read -ra times <<<"$SCHEDULE"
      for time in "${times[@]}"; do
        [[ "$time" =~ ^([01][0-9]|2[0-3]):[0-5][0-9]$ ]] \
          || die "BACKUP_SCHEDULE=\"$SCHEDULE\": use UTC times like \"03:00\" or \"03:00,15:00\", or \"every 6h\""
      done
      ;;
  esac
  for keep in KEEP_DAILY KEEP_WEEKLY; do
    [[ "${!keep}" =~ ^[0-9]+$ ]] || die "BACKUP_$keep=\"${!keep}\" is not a number"
  done
}

schedule() {
  check_schedule
  date -u +%s >"$STARTED"
  trap 'log "stopping"; exit 0' TERM INT
  log "scheduled \"$SCHEDULE\" (UTC) into $DIR; keeping $KEEP_DAILY daily and $KEEP_WEEKLY weekly"
  while :; do
    local wait_for=$(($(next_run) - $(date -u +%s)))
    sleep "$wait_for" & wait $!
    backup_now || true # the failure is logged and recorded; the healthcheck reports it
  done
}

# -- one backup --------------------------------------------------------------------------
record() { printf '%s %s %s\n' "$1" "$(date -u +%s)" "$2" >"$STATUS.tmp" && mv "$STATUS.tmp" "$STATUS"; }

# Alembic's revision as stored in a dump: the one row of alembic_version's COPY data.
# Empty when the dump has no such table (a database never migrated).
dump_revision() {
  pg_restore --data-only --table=alembic_version --file=- "$1" 2>/dev/null \
    | awk '/^COPY / { copying = 1; next } copying && $0 != "\\." && !found { print; found = 1 }' \
    || true
}

# A failed backup: its partial file removed, the failure recorded for the healthcheck.
backup_failed() {
  rm -f "$1"
  record failed "$2"
  log "error: backup failed: $2"
}

backup_now() {
  local stamp file partial error revision
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  file="$DIR/$DB-$stamp.dump"
  partial="$DIR/.$DB-$stamp.dump.partial"
  # One snapshot (pg_dump's own transaction), so a backup under write load is consistent.
  # Every step is checked by hand: `schedule` calls this under `||`, where set -e is off.
  if ! error=$(pg_dump --format=custom --compress=6 --file="$partial" 2>&1); then
    backup_failed "$partial" "pg_dump: $(one_line <<<"$error")"; return 1
  fi
  # Read every byte back (decompressing all data), so a dump that can't restore is a
  # failed backup now, not a surprise later.
  if ! error=$(pg_restore --file=/dev/null "$partial" 2>&1); then
    backup_failed "$partial" "the new dump does not read back: $(one_line <<<"$error")"; return 1
  fi
  # The revision inside this dump's snapshot, read from the dump: asking the server again
  # could see a later migration, or no server at all.
  revision=$(dump_revision "$partial")
  # Whole files only: a crash mid-dump leaves a .partial, never a .dump.
  if ! printf 'revision=%s\n' "${revision:-none}" >"$file.meta" || ! mv "$partial" "$file"; then
    rm -f "$file.meta"
    backup_failed "$partial" "could not write $(basename "$file") into $DIR"; return 1
  fi
  record ok "$(basename "$file")" || { log "error: could not record the backup's status"; return 1; }
  log "wrote $(basename "$file") ($(du -h "$file" | cut -f1), alembic revision ${revision:-none})"
  prune
}

# -- retention: the newest backup of each of the last KEEP_DAILY days that have one, and
# of each of the last KEEP_WEEKLY ISO weeks; never the newest backup of all ------------------
prune() {
  local name stamp day week keep kept_days=0 kept_weeks=0 newest=yes
  declare -A seen_day=() seen_week=()
  while read -r name; do
    stamp=$(sed -E 's/.*-([0-9]{8})T([0-9]{6})Z\.dump$/\1 \2/' <<<"$name")
    day=${stamp% *}
    week=$(date -u -d "$day" +%G-W%V)
    keep=no
    if [ "$newest" = yes ]; then keep=yes; newest=no; fi
    if [ -z "${seen_day[$day]:-}" ] && [ "$kept_days" -lt "$KEEP_DAILY" ]; then
      kept_days=$((kept_days + 1)); keep=yes
    fi
    if [ -z "${seen_week[$week]:-}" ] && [ "$kept_weeks" -lt "$KEEP_WEEKLY" ]; then
      kept_weeks=$((kept_weeks + 1)); keep=yes
    fi
    seen_day[$day]=1
    seen_week[$week]=1
    if [ "$keep" = no ]; then
      rm -f "$DIR/$name" "$DIR/$name.meta"
      log "pruned $name"
    fi
  done < <(backups)
}

backups() { # backup file names, newest first
  find "$DIR" -maxdepth 1 -type f -regextype posix-extended \
    -regex ".*/$DB-[0-9]{8}T[0-9]{6}Z\.dump" -printf '%f\n' | sort -r
}

list() {
  local name revision
  printf '%-34s %8s  %s\n' BACKUP SIZE REVISION
  while read -r name; do
    revision=$(sed -n 's/^revision=//p' "$DIR/$name.meta" 2>/dev/null || true)
    printf '%-34s %8s  %s\n' "$name" "$(du -h "$DIR/$name" | cut -f1)" "${revision:-?}"
  done < <(backups)
}

# -- restore: into a new database first, then swap names; the old one is kept ------------
restore() {
  local name=${1:-} force=${2:-} file target old connected error revision
  [ -n "$name" ] || die "which backup? usage: restore FILE [--force] (see: list)"
  case "$name" in /*) file=$name ;; *) file="$DIR/$name" ;; esac
  [ -f "$file" ] || die "no backup named $name in $DIR (see: list); nothing was changed"
  error=$(pg_restore --list "$file" 2>&1 >/dev/null) \
    || die "$name is not a readable pg_dump archive ($(one_line <<<"$error")); nothing was changed"

  connected=$(psql -XAtq -d postgres -c "SELECT count(*) FROM pg_stat_activity
    WHERE datname = '$DB' AND application_name = 'berth-app'")
  if [ "$connected" -gt 0 ] && [ "$force" != --force ]; then
    die "the app is connected to $DB ($connected connections): stop it first (docker compose stop app), or pass --force; nothing was changed"
  fi

  target="${DB}_restoring"
  old="${DB}_before_restore_$(date -u +%Y%m%dT%H%M%SZ)"
  psql -XAtq -v ON_ERROR_STOP=1 -d postgres -c "DROP DATABASE IF EXISTS \"$target\"" \
    -c "CREATE DATABASE \"$target\"" >/dev/null
  if ! error=$(pg_restore --exit-on-error --single-transaction --no-owner --dbname="$target" "$file" 2>&1); then
    psql -XAtq -d postgres -c "DROP DATABASE IF EXISTS \"$target\"" >/dev/null || true
    die "restoring $name failed ($(one_line <<<"$error")); nothing was changed"
  fi
  revision=$(dump_revision "$file")

  # The swap: no connections may reach either database while it is renamed. Terminations
  # are waited for (up to 5 s each), and both renames happen in one transaction, so a
  # failure leaves the names as they were.
  if ! error=$(psql -XAtq -v ON_ERROR_STOP=1 -d postgres 2>&1 >/dev/null <<SQL
ALTER DATABASE "$DB" WITH ALLOW_CONNECTIONS false;
SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = '$DB' AND pid <> pg_backend_pid();
BEGIN;
ALTER DATABASE "$DB" RENAME TO "$old";
ALTER DATABASE "$target" RENAME TO "$DB";
ALTER DATABASE "$old" WITH ALLOW_CONNECTIONS true;
COMMIT;
SQL
  ); then
    psql -XAtq -d postgres -c "ALTER DATABASE \"$DB\" WITH ALLOW_CONNECTIONS true" \
      -c "DROP DATABASE IF EXISTS \"$target\"" >/dev/null 2>&1 || true
    die "swapping in the restored database failed ($(one_line <<<"$error")); nothing was changed"
  fi
  log "restored $name into $DB (alembic revision ${revision:-none})"
  log "the database it replaced is kept as $old; when satisfied: docker compose exec db dropdb -U \"\$POSTGRES_USER\" $old"
}

# -- health: unhealthy when the last backup failed, or the newest one is too old ------------
health() {
  local state when detail max_age started now
  now=$(date -u +%s)
  max_age=$(( ${BACKUP_MAX_AGE_HOURS:-0} * 3600 ))
  [ "$max_age" -gt 0 ] || max_age=$(( 2 * $(period_seconds) + 3600 ))
  if [ -f "$STATUS" ]; then
    read -r state when detail <"$STATUS"
    if [ "$state" = failed ]; then echo "last backup failed: $detail"; exit 1; fi
    if [ $((now - when)) -gt "$max_age" ]; then
      echo "newest backup is $(( (now - when) / 3600 ))h old"; exit 1
    fi
  else
    started=$(cat "$STARTED" 2>/dev/null || echo "$now")
    if [ $((now - started)) -gt "$max_age" ]; then echo "no backup has succeeded yet"; exit 1; fi
  fi
  echo ok
}

case "${1:-}" in
  schedule) schedule ;;
  now) backup_now ;;
  list) list ;;
  prune) prune ;;
  restore) restore "${2:-}" "${3:-}" ;;
  health) health ;;
  *) sed -n '2,16p' "$0" >&2; exit 2 ;;
esac
