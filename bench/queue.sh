#!/usr/bin/env bash
# The send queue's figures (issue 14, items 2, 3 and 4), each measured by this script:
#   A. memory and startup time with N parts queued on disk (N = 200000, 1000000, 5000000,
#      `SIZES` changes them): the simulator refuses every send (maxAllowed 0, a 300 s hint)
#      so everything stays queued; one bulk send of N recipients cut into 1-recipient parts
#      makes N parts. sluice is then restarted on that data dir: the time until it listens,
#      and its RSS 10 s later.
#   B. 200000 single sends queued (each its own job, sent over HTTP by examples/flood.rs):
#      RSS with them queued, and after a restart.
#   C. dispatch against accept: an instant simulator that takes everything; 100000 single
#      sends flooded in with `Prefer: respond-async` (the accept rate), and the time until
#      the last is accepted by the API (the dispatch rate); with the SQLite store and with
#      a PostgreSQL one (`STORES="sqlite postgres"`, the default).
#   E. pass-through p99 alone and while LARGE_MB (100) MB bulk sends are accepted (item 4;
#      LARGE_MB=0 skips it).
# Binds 127.0.0.1 only (ports PORT_BASE..PORT_BASE+3, default 28180), stops what it starts,
# prints a markdown table. `cargo build --release` first (the script does it).
set -euo pipefail
cd "$(dirname "$0")/.."

# SIZES="" or SINGLES=0 skips A or B.
SIZES=${SIZES-"200000 1000000 5000000"}
SINGLES=${SINGLES:-200000}
FLOOD_N=${FLOOD_N:-100000}
PORT_BASE=${PORT_BASE:-28180}
SIM=127.0.0.1:$PORT_BASE
PROXY=127.0.0.1:$((PORT_BASE + 1))
ADMIN=127.0.0.1:$((PORT_BASE + 2))
KEY=demo-key

cargo build --release --locked --bin sluice --example flood >&2
BIN=target/release/sluice
FLOOD=target/release/examples/flood
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

log() { echo "[queue.sh] $*" >&2; }
rss_mb() { awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
hwm_mb() { awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
wait_port() {
  for _ in $(seq 1 600); do
    curl -s -o /dev/null "http://$1/" && return 0
    sleep 0.05
  done
  echo "nothing listens on $1" >&2
  exit 1
}
metric() {
  curl -s "http://$ADMIN/metrics" | awk -v m="$1" '$1 == m {print $2}'
}
stop() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# The simulator with $@; sets SIM_PID.
start_sim() {
  "$BIN" simulate --listen "$SIM" "$@" >"$WORK/sim.log" 2>&1 &
  SIM_PID=$!
  PIDS+=("$SIM_PID")
  wait_port "$SIM"
}

# A started campaign of type $1; prints its id.
campaign() {
  local id
  id=$(curl -s "http://$SIM/api/v1/campaigns" -H "X-API-Key: $KEY" -H 'Content-Type: application/json' \
    -d "{\"name\":\"q\",\"type\":\"$1\",\"channel\":\"SMS\"}" | sed 's/.*"id":\([0-9]*\).*/\1/')
  curl -s -o /dev/null -X POST "http://$SIM/api/v1/campaigns/$id/start" -H "X-API-Key: $KEY"
  echo "$id"
}

# sluice on data dir $1 with config $2; sets SLUICE_PID and STARTUP_S (until it listens).
start_sluice() {
  local t0 t1
  t0=$(date +%s.%N)
  "$BIN" serve --config "$2" --data-dir "$1" --listen "$PROXY" --admin-listen "$ADMIN" \
    --upstream "http://$SIM" >"$WORK/sluice.log" 2>&1 &
  SLUICE_PID=$!
  PIDS+=("$SLUICE_PID")
  wait_port "$ADMIN"
  t1=$(date +%s.%N)
  STARTUP_S=$(echo "$t1 - $t0" | bc)
}

config_one_per_part() {
  cat >"$WORK/one.toml" <<'EOF'
[[routes]]
name = "bulk"
path = "/api/v1/campaigns/{campaignId}/bulk/{channel}"
kind = "bulk"
max_recipients_per_request = 1
validation = "off"
EOF
  echo "$WORK/one.toml"
}
config_default() {
  : >"$WORK/default.toml"
  echo "$WORK/default.toml"
}

echo "| figure | value |"
echo "|---|---|"

# A. N parts queued on disk.
for n in $SIZES; do
  log "A: $n parts"
  start_sim --max-pending 0 --retry-after 300
  id=$(campaign Bulk)
  data="$WORK/data-$n"
  cfg=$(config_one_per_part)
  start_sluice "$data" "$cfg"
  body="$WORK/bulk-$n.json"
  { printf '{"recipients":['; seq -f '"+3897%07.0f"' 0 $((n - 1)) | paste -sd, - | tr -d '\n'; printf ']}'; } >"$body"
  t0=$(date +%s.%N)
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://$PROXY/api/v1/campaigns/$id/bulk/sms" \
    -H "X-API-Key: $KEY" -H 'Content-Type: application/json' -H 'Prefer: respond-async' --data-binary @"$body")
  t1=$(date +%s.%N)
  [ "$code" = 202 ] || { echo "the $n send got $code" >&2; exit 1; }
  sleep 5
  echo "| $n parts queued: accept of the send (s) | $(echo "$t1 - $t0" | bc) |"
  echo "| $n parts queued: RSS 5 s later (MB) | $(rss_mb "$SLUICE_PID") |"
  echo "| $n parts queued: peak RSS while accepting (MB) | $(hwm_mb "$SLUICE_PID") |"
  stop "$SLUICE_PID"
  start_sluice "$data" "$cfg"
  echo "| $n parts queued: restart until listening (s) | $STARTUP_S |"
  sleep 10
  echo "| $n parts queued: RSS 10 s after the restart (MB) | $(rss_mb "$SLUICE_PID") |"
  echo "| $n parts queued: still queued (recipients) | $(metric sluice_queue_recipients_queued) |"
  stop "$SLUICE_PID"
  stop "$SIM_PID"
  rm -rf "$data" "$body"
done

# B. single sends queued, each its own job.
if [ "$SINGLES" -gt 0 ]; then
  log "B: $SINGLES single sends"
  start_sim --max-pending 0 --retry-after 300
  id=$(campaign Transactional)
  data="$WORK/data-singles"
  cfg=$(config_default)
  start_sluice "$data" "$cfg"
  out=$("$FLOOD" "http://$PROXY" "$id" "$SINGLES" 64)
  log "$out"
  sleep 5
  echo "| $SINGLES single sends queued: accepted per second | $(echo "$out" | sed 's/.*per_second=\([0-9]*\).*/\1/') |"
  echo "| $SINGLES single sends queued: RSS 5 s later (MB) | $(rss_mb "$SLUICE_PID") |"
  stop "$SLUICE_PID"
  start_sluice "$data" "$cfg"
  echo "| $SINGLES single sends queued: restart until listening (s) | $STARTUP_S |"
  sleep 10
  echo "| $SINGLES single sends queued: RSS 10 s after the restart (MB) | $(rss_mb "$SLUICE_PID") |"
  stop "$SLUICE_PID"
  stop "$SIM_PID"
  rm -rf "$data"
fi

# C. dispatch against accept, instant upstream, with each store (`STORES`): the embedded
# SQLite file, and a throwaway PostgreSQL server (Debian's postgresql; initdb in the work
# dir, run as the postgres user when this runs as root, on port PORT_BASE+3, fsync on).
start_pg() {
  local bin pgdir as_pg=()
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  pgdir="$WORK/pg"
  mkdir -p "$pgdir"
  if [ "$(id -u)" = 0 ]; then
    chmod o+x "$WORK"
    chown postgres:postgres "$pgdir"
    as_pg=(setpriv --reuid=postgres --regid=postgres --clear-groups --)
  fi
  "${as_pg[@]}" "$bin/initdb" -U sluice --auth=trust -E UTF8 -D "$pgdir/data" >"$WORK/initdb.log" 2>&1
  "${as_pg[@]}" "$bin/postgres" -D "$pgdir/data" -p $((PORT_BASE + 3)) -c listen_addresses=127.0.0.1 \
    -c unix_socket_directories="$pgdir" >"$WORK/pg.log" 2>&1 &
  PG_PID=$!
  PIDS+=("$PG_PID")
  for _ in $(seq 1 600); do
    "$bin/pg_isready" -q -h 127.0.0.1 -p $((PORT_BASE + 3)) && break
    sleep 0.05
  done
  "$bin/createdb" -h 127.0.0.1 -p $((PORT_BASE + 3)) -U sluice bench
  STORE_URL="postgres://sluice@127.0.0.1:$((PORT_BASE + 3))/bench?sslmode=disable"
}
for store in ${STORES-sqlite postgres}; do
  log "C: $FLOOD_N single sends, instant upstream, $store store"
  start_sim --max-pending 100000000 --drain-rate 100000000
  id=$(campaign Transactional)
  data="$WORK/data-flood-$store"
  cfg=$(config_default)
  if [ "$store" = postgres ]; then
    start_pg
    printf '[store]\nurl = "%s"\n' "$STORE_URL" >"$cfg"
  fi
  start_sluice "$data" "$cfg"
  t0=$(date +%s.%N)
  out=$("$FLOOD" "http://$PROXY" "$id" "$FLOOD_N" 64)
  log "$out"
  while [ "$(metric 'sluice_queue_recipients_delivered_total{route="single"}')" != "$FLOOD_N" ]; do sleep 0.05; done
  t1=$(date +%s.%N)
  accept=$(echo "$out" | sed 's/.*per_second=\([0-9]*\).*/\1/')
  dispatch=$(echo "$FLOOD_N / ($t1 - $t0)" | bc)
  echo "| $FLOOD_N single sends, instant upstream, $store: accepted per second | $accept |"
  echo "| $FLOOD_N single sends, instant upstream, $store: delivered per second (first accept to last delivery) | $dispatch |"
  echo "| $store: dispatch / accept | $(echo "scale=2; $dispatch / $accept" | bc) |"
  stop "$SLUICE_PID"
  stop "$SIM_PID"
  if [ "$store" = postgres ]; then stop "$PG_PID"; fi
done

# E. pass-through p99 while large bulk sends are accepted (issue 14, item 4): wrk -t2 -c64
# on a pass-through GET (the simulator's campaign) for DURATION seconds, alone, then while
# a client posts a LARGE_MB bulk body again and again (each scanned, validated and stored;
# the simulator refuses every part, so nothing is dispatched).
LARGE_MB=${LARGE_MB:-100}
DURATION=${DURATION:-10}
if [ "$LARGE_MB" -gt 0 ]; then
  command -v wrk >/dev/null || apt-get install -y --no-install-recommends wrk >&2
  log "E: pass-through p99 with $LARGE_MB MB bulk sends being accepted"
  start_sim --max-pending 0 --retry-after 300
  id=$(campaign Bulk)
  # Room for every post (each ~7 million recipients stays queued).
  cfg="$WORK/large.toml"
  printf '[queue]\nmax_queued_recipients = 1000000000\nmax_queued_bytes = 100000000000\n' >"$cfg"
  start_sluice "$WORK/data-large" "$cfg"
  body="$WORK/large.json"
  n=$((LARGE_MB * 1024 * 1024 / 15))
  { printf '{"recipients":['; seq -f '"+3897%07.0f"' 0 $((n - 1)) | paste -sd, - | tr -d '\n'; printf ']}'; } >"$body"
  p99() { awk '/ 99%/ {print $2}' "$1"; }
  wrk -t2 -c64 -d"${DURATION}s" --latency -H "X-API-Key: $KEY" "http://$PROXY/api/v1/campaigns/$id" >"$WORK/wrk-alone.txt"
  (
    end=$(($(date +%s) + DURATION))
    while [ "$(date +%s)" -lt "$end" ]; do
      curl -s -o /dev/null -w '%{http_code} %{time_total}\n' "http://$PROXY/api/v1/campaigns/$id/bulk/sms" \
        -H "X-API-Key: $KEY" -H 'Content-Type: application/json' -H 'Prefer: respond-async' --data-binary @"$body"
    done
  ) >"$WORK/large-posts.txt" &
  POSTER=$!
  wrk -t2 -c64 -d"${DURATION}s" --latency -H "X-API-Key: $KEY" "http://$PROXY/api/v1/campaigns/$id" >"$WORK/wrk-large.txt"
  wait "$POSTER"
  accepted=$(grep -c '^202 ' "$WORK/large-posts.txt" || true)
  echo "| pass-through GET p99 alone | $(p99 "$WORK/wrk-alone.txt") |"
  echo "| pass-through GET p99 while $LARGE_MB MB bulk sends are accepted ($accepted accepted, $(awk '{s += $2} END {if (NR) printf "%.2f", s / NR}' "$WORK/large-posts.txt") s each) | $(p99 "$WORK/wrk-large.txt") |"
  echo "| requests/s alone, while | $(awk '/Requests\/sec/ {print $2}' "$WORK/wrk-alone.txt"), $(awk '/Requests\/sec/ {print $2}' "$WORK/wrk-large.txt") |"
  stop "$SLUICE_PID"
  stop "$SIM_PID"
fi
