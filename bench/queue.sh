#!/usr/bin/env bash
# The send queue's figures (issue 14, items 2 and 3), each measured by this script:
#   A. memory and startup time with N parts queued on disk (N = 200000, 1000000, 5000000,
#      `SIZES` changes them): the simulator refuses every send (maxAllowed 0, a 300 s hint)
#      so everything stays queued; one bulk send of N recipients cut into 1-recipient parts
#      makes N parts. sluice is then restarted on that data dir: the time until it listens,
#      and its RSS 10 s later.
#   B. 200000 single sends queued (each its own job, sent over HTTP by examples/flood.rs):
#      RSS with them queued, and after a restart.
#   C. dispatch against accept: an instant simulator that takes everything; 100000 single
#      sends flooded in with `Prefer: respond-async` (the accept rate), and the time until
#      the last is accepted by the API (the dispatch rate).
# Binds 127.0.0.1 only (ports PORT_BASE..PORT_BASE+2, default 28180), stops what it starts,
# prints a markdown table. `cargo build --release` first (the script does it).
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=${SIZES:-"200000 1000000 5000000"}
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
  { printf '{"recipients":['; seq -f '"+3897%07g"' 0 $((n - 1)) | paste -sd, - | tr -d '\n'; printf ']}'; } >"$body"
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

# C. dispatch against accept, instant upstream.
log "C: $FLOOD_N single sends, instant upstream"
start_sim --max-pending 100000000 --drain-rate 100000000
id=$(campaign Transactional)
data="$WORK/data-flood"
cfg=$(config_default)
start_sluice "$data" "$cfg"
t0=$(date +%s.%N)
out=$("$FLOOD" "http://$PROXY" "$id" "$FLOOD_N" 64)
log "$out"
while [ "$(metric 'sluice_queue_recipients_delivered_total{route="single"}')" != "$FLOOD_N" ]; do sleep 0.05; done
t1=$(date +%s.%N)
accept=$(echo "$out" | sed 's/.*per_second=\([0-9]*\).*/\1/')
dispatch=$(echo "$FLOOD_N / ($t1 - $t0)" | bc)
echo "| $FLOOD_N single sends, instant upstream: accepted per second | $accept |"
echo "| $FLOOD_N single sends, instant upstream: delivered per second (first accept to last delivery) | $dispatch |"
echo "| dispatch / accept | $(echo "scale=2; $dispatch / $accept" | bc) |"
stop "$SLUICE_PID"
stop "$SIM_PID"
