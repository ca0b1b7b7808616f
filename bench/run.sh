#!/usr/bin/env bash
# The end-to-end benchmarks of issue 6, plus the in-process ones, in one run.
#
#   bench/run.sh                 # everything, about 9 minutes on 2 cores
#   REPEATS=5 bench/run.sh       # more repeats (default 3); DURATION=10 seconds per load run
#   SECTIONS="2 4" bench/run.sh  # only some sections (default: 1 2 3 4 5)
#
# What it measures (BENCHMARKS.md explains each figure and the targets):
#   1. split and validate a 1,000,000-recipient body: `cargo bench --bench split`
#      (criterion) and peak extra memory (`examples/split_mem.rs`);
#   2. pass-through overhead: wrk against a static nginx upstream directly, through
#      `sluice serve` (routes = [], so nothing is queued), through nginx as a reverse
#      proxy with keep-alive to the upstream, and through HAProxy likewise;
#   3. durable accept rate: single sends with `Prefer: respond-async`, synchronous=full
#      and normal, against `sluice simulate`;
#   4. drain efficiency: 500,000 recipients through sluice, and through a client that
#      follows the provider's own retry advice (`examples/naive_client.rs`);
#   5. memory: RSS of `sluice serve` idle, with 1,000,000 recipients queued, under load.
#
# Every figure is the median of REPEATS runs with the min-max spread. Results go to
# target/bench/results.md (raw outputs and logs beside it, in target/bench/raw/).
# Everything listens on 127.0.0.1 only, on ports PORT_BASE..PORT_BASE+7 (default
# 28080), which must be free. Every process this script starts is stopped on exit.
# Needs root (or sudo) only to install missing Debian packages: wrk, nginx, haproxy, jq,
# curl.
set -euo pipefail

cd "$(dirname "$0")/.."
REPEATS=${REPEATS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=64
PORT_BASE=${PORT_BASE:-28080}
SLUICE_PORT=$PORT_BASE             # sluice, pass-through (routes = [])
SLUICE_ADMIN=$((PORT_BASE + 1))
UPSTREAM_PORT=$((PORT_BASE + 2))   # nginx: the static JSON upstream
NGINX_PROXY_PORT=$((PORT_BASE + 3))
SIM_PORT=$((PORT_BASE + 4))        # sluice simulate
QUEUE_PORT=$((PORT_BASE + 5))      # sluice with the send queue
QUEUE_ADMIN=$((PORT_BASE + 6))
HAPROXY_PORT=$((PORT_BASE + 7))
KEY=demo-key
SECTIONS=" ${SECTIONS:-1 2 3 4 5} "

# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------

log() { printf '\n== %s\n' "$*" >&2; }

# Installs a Debian package when its command is missing.
need() {
  local cmd=$1 pkg=${2:-$1}
  command -v "$cmd" >/dev/null 2>&1 && return
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  log "installing $pkg"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
}

PIDS=()
WORK=""
# Stops every process this script started (by pid, never by name), then removes the
# scratch directory.
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  [ -n "$WORK" ] && rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: runs CMD in the background, output to $RAW/NAME.log; sets $LAST_PID.
start() {
  local name=$1
  shift
  "$@" >"$RAW/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# stop PID: stops one process started with `start` and waits for it.
stop() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# Fails unless the port is free on 127.0.0.1.
port_free() {
  if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    echo "port 127.0.0.1:$1 is in use; set PORT_BASE to a free range" >&2
    exit 1
  fi
}

# Waits until something answers HTTP on the port.
wait_port() {
  for _ in $(seq 1 100); do
    curl -s -o /dev/null "http://127.0.0.1:$1/" && return
    sleep 0.1
  done
  echo "nothing answers on 127.0.0.1:$1" >&2
  exit 1
}

# Resident and peak memory of a process, in MB (from /proc/PID/status).
rss_mb() { awk '/^VmRSS:/ {printf "%.1f\n", $2 / 1024}' "/proc/$1/status"; }
hwm_mb() { awk '/^VmHWM:/ {printf "%.1f\n", $2 / 1024}' "/proc/$1/status"; }

# Sum of the RSS of a process and its children, in MB.
tree_rss_mb() {
  local total=0 pid
  for pid in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")))
  done
  awk -v kb="$total" 'BEGIN {printf "%.1f\n", kb / 1024}'
}

# CPU time (user + system, in clock ticks) used so far by a process and its children.
cpu_ticks() {
  local total=0 pid
  for pid in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(cut -d')' -f2 "/proc/$pid/stat" | awk '{print $12 + $13}')))
  done
  echo "$total"
}
TICKS_PER_SECOND=$(getconf CLK_TCK)
# per_request TICKS REQUESTS: CPU microseconds per request.
per_request() { awk -v t="$1" -v hz="$TICKS_PER_SECOND" -v n="$2" 'BEGIN {printf "%.1f\n", t / hz * 1e6 / n}'; }

# Samples the RSS (MB) of a process tree once a second into FILE until killed.
sample_rss() {
  while kill -0 "$1" 2>/dev/null; do
    tree_rss_mb "$1" >>"$2"
    sleep 1
  done
}

# Reads numbers (one a line) and prints "median (min–max)"; with an argument, that
# many decimals (default 0).
summary() {
  sort -g | awk -v d="${1:-0}" '
    { v[NR] = $1 }
    END {
      if (NR == 0) { print "n/a"; exit }
      m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      f = "%." d "f"
      printf f " (" f "–" f ")\n", m, v[1], v[NR]
    }'
}

# Whether a section is to run.
section() { [[ $SECTIONS == *" $1 "* ]]; }

# Just the median of numbers read one a line.
median() { summary 6 | awk '{print $1}'; }

# wrk's latency percentile ("50%", "99%") in ms from a wrk --latency output file.
wrk_ms() {
  awk -v p="$2" '$1 == p {
      v = $2
      if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 }
      else if (v ~ /ms$/) { sub(/ms$/, "", v) }
      else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 }
      printf "%.2f\n", v
    }' "$1"
}
wrk_rps() { awk '/^Requests\/sec:/ {printf "%.0f\n", $2}' "$1"; }
# Responses that were not 2xx/3xx, plus socket errors: must be 0.
wrk_bad() {
  awk '/Non-2xx or 3xx responses:/ {n += $NF}
       /Socket errors:/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10}
       END {print n + 0}' "$1"
}

# A `sluice simulate` on SIM_PORT with the given flags, and a started campaign in it.
# Sets SIM_PID and CAMPAIGN.
start_simulator() {
  local type=$1
  shift
  start simulator "$SLUICE" simulate --listen "127.0.0.1:$SIM_PORT" --api-key "$KEY" "$@"
  SIM_PID=$LAST_PID
  wait_port "$SIM_PORT"
  CAMPAIGN=$(curl -sf -X POST "http://127.0.0.1:$SIM_PORT/api/v1/campaigns" \
    -H "X-API-Key: $KEY" -H 'Content-Type: application/json' \
    -d "{\"name\":\"bench\",\"type\":\"$type\",\"channel\":\"SMS\"}" | jq -r .id)
  curl -sf -o /dev/null -X POST "http://127.0.0.1:$SIM_PORT/api/v1/campaigns/$CAMPAIGN/start" \
    -H "X-API-Key: $KEY"
}

# A `sluice serve` with the send queue in front of the simulator, in a fresh data dir.
# Sets QUEUE_PID.
start_queue_proxy() {
  local sync=$1 dir="$WORK/queue-$RANDOM$RANDOM"
  cat >"$dir.toml" <<EOF
[server]
listen = "127.0.0.1:$QUEUE_PORT"
admin_listen = "127.0.0.1:$QUEUE_ADMIN"
data_dir = "$dir"
[upstream]
url = "http://127.0.0.1:$SIM_PORT"
[queue]
synchronous = "$sync"
EOF
  start sluice-queue "$SLUICE" serve --config "$dir.toml"
  QUEUE_PID=$LAST_PID
  wait_port "$QUEUE_PORT"
}

# A metric's value from the queue proxy's /metrics (sum over its label sets).
metric() {
  curl -s "http://127.0.0.1:$QUEUE_ADMIN/metrics" |
    awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {printf "%.0f", s}'
}

# ---------------------------------------------------------------------------------------
# Setup: tools, build, scratch space, machine
# ---------------------------------------------------------------------------------------

need curl
need jq
need wrk
need nginx
need haproxy
need pgrep procps

TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
OUT_DIR="$TARGET_DIR/bench"
RAW="$OUT_DIR/raw"
RESULTS="$OUT_DIR/results.md"
rm -rf "$RAW"
mkdir -p "$RAW"
# Scratch space on the same disk as the build (not a tmpfs): SQLite's fsyncs must hit
# a real disk for synchronous=full to mean anything. nginx's workers (user nobody)
# must be able to traverse it.
WORK=$(mktemp -d "$TARGET_DIR/bench-work.XXXXXX")
chmod 755 "$WORK"

for port in $SLUICE_PORT $SLUICE_ADMIN $UPSTREAM_PORT $NGINX_PROXY_PORT $SIM_PORT $QUEUE_PORT $QUEUE_ADMIN $HAPROXY_PORT; do
  port_free "$port"
done

log "building (release)"
# Only what the sections asked for need: the examples are for sections 1 and 4.
BUILD=(--bin sluice)
if section 1; then BUILD+=(--example split_mem); fi
if section 4; then BUILD+=(--example naive_client); fi
cargo build --release --locked "${BUILD[@]}"
SLUICE="$TARGET_DIR/release/sluice"
EXAMPLES="$TARGET_DIR/release/examples"

# Results are written as Markdown; every section appends to it.
exec 4>"$RESULTS"
out() { printf '%s\n' "$*" >&4; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

out "# sluice benchmark results"
out
out "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
out "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
out "- machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
out "- tools: $(wrk --version 2>&1 | head -1 | awk '{print $1, $2}'), $(nginx -v 2>&1 | sed 's/.*: //'), $(haproxy -v 2>&1 | head -1 | awk '{print "haproxy", $3}'), $(cargo --version)"
out "- repeats: $REPEATS, load runs: ${DURATION}s, $CONNECTIONS connections"
out "- load average at start (1, 5, 15 min): $(load)"

# ---------------------------------------------------------------------------------------
# 1. Split and validate (in-process): criterion throughput, then peak memory.
# ---------------------------------------------------------------------------------------

bench_split() {
  log "1. split and validate: cargo bench --bench split"
  # One process per body shape: a group must not inherit the heap the other one left.
  for shape in strings objects; do
    cargo bench --locked --bench split -- "split_1m_$shape" | tee "$RAW/criterion-$shape.txt" >&2
  done
  out
  out "## 1. Split and validate 1,000,000 recipients (MB/s of the body; criterion samples)"
  out
  out "| body | body MB | sluice scan only | sluice scan + validate | + write every part | naive Value split | scan+validate / naive |"
  out "|---|---|---|---|---|---|---|"
  for shape in strings objects; do
    cells=""
    declare -A MEDIAN=()
    for fn in sluice_scan sluice_scan_validate sluice_split_write_parts naive_value_split; do
      dir="$TARGET_DIR/criterion/split_1m_$shape/$fn/new"
      bytes=$(jq -r '.throughput.BytesDecimal' "$dir/benchmark.json")
      # Each sample is `iters` iterations taking `times` ns in all: MB/s per sample.
      jq -r --argjson b "$bytes" '[.iters, .times] | transpose[] | ($b * .[0] / .[1] * 1000)' \
        "$dir/sample.json" >"$RAW/split-$shape-$fn.txt"
      MEDIAN[$fn]=$(median <"$RAW/split-$shape-$fn.txt")
      cells="$cells | $(summary <"$RAW/split-$shape-$fn.txt")"
    done
    ratio=$(awk -v a="${MEDIAN[sluice_scan_validate]}" -v b="${MEDIAN[naive_value_split]}" 'BEGIN {printf "%.1fx", a / b}')
    body_mb=$(awk -v b="$bytes" 'BEGIN {printf "%.1f", b / 1e6}')
    out "| $shape | $body_mb$cells | $ratio |"
    unset MEDIAN
  done

  log "1. split and validate: peak extra memory (examples/split_mem.rs)"
  REPEATS=$REPEATS "$EXAMPLES/split_mem" | tee "$RAW/split-mem.txt" >&2
  out
  out "### Peak extra memory (VmHWM, each in a fresh process; median (min–max) of $REPEATS)"
  out
  out "| body | way | body MB | extra MB | extra / body |"
  out "|---|---|---|---|---|"
  while read -r _ shape way body extra min max ratio; do
    out "| ${shape#shape=} | ${way#way=} | ${body#body_mb=} | ${extra#extra_mb_median=} (${min#min=}–${max#max=}) | ${ratio#ratio_median=}x |"
  done <"$RAW/split-mem.txt"
}

# ---------------------------------------------------------------------------------------
# 2. Pass-through overhead: direct vs sluice vs nginx and HAProxy as reverse proxies.
# ---------------------------------------------------------------------------------------

bench_passthrough() {
  log "2. pass-through overhead"
  # The upstream: nginx answering a static JSON body to every request (GET or POST), one
  # worker; the same upstream for all three targets. It logs nothing.
  cat >"$WORK/upstream.conf" <<EOF
worker_processes 1;
pid $WORK/upstream.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/upstream-body;
  server {
    listen 127.0.0.1:$UPSTREAM_PORT backlog=4096;
    location / {
      default_type application/json;
      return 200 '[{"id":1,"name":"Sluice Demo"},{"id":2,"name":"Sluice Alerts"}]';
    }
  }
}
EOF
  # The alternative: nginx as a plain reverse proxy with keep-alive to the upstream, with
  # its default worker count (one per CPU) and its access log on, as sluice logs one line
  # per request too.
  cat >"$WORK/proxy.conf" <<EOF
worker_processes auto;
pid $WORK/proxy.pid;
events { worker_connections 4096; }
http {
  access_log $RAW/nginx-proxy-access.log;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/proxy-body;
  proxy_temp_path $WORK/proxy-temp;
  upstream api {
    server 127.0.0.1:$UPSTREAM_PORT;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$NGINX_PROXY_PORT backlog=4096;
    location / {
      proxy_pass http://api;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
  # The other alternative: HAProxy in HTTP mode, its default thread count (one per CPU),
  # keep-alive both ways with idle upstream connections shared between client
  # connections (http-reuse always), and an access log line per request (option httplog)
  # written to its stdout, which goes to a file like the others' logs.
  cat >"$WORK/haproxy.cfg" <<EOF
global
  maxconn 4096
  pidfile $WORK/haproxy.pid
  log stdout format raw local0
defaults
  mode http
  log global
  option httplog
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend front
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend api
backend api
  server upstream 127.0.0.1:$UPSTREAM_PORT
EOF
  # sluice as a pure pass-through proxy (no send routes), defaults otherwise.
  cat >"$WORK/passthrough.toml" <<EOF
routes = []
[server]
listen = "127.0.0.1:$SLUICE_PORT"
admin_listen = "127.0.0.1:$SLUICE_ADMIN"
data_dir = "$WORK/passthrough-data"
[upstream]
url = "http://127.0.0.1:$UPSTREAM_PORT"
EOF
  cat >"$WORK/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"phoneNumber":"+38970000001","variables":{"name":"Ana","code":"123456"}}'
wrk.headers["Content-Type"] = "application/json"
EOF

  start nginx-upstream nginx -p "$WORK" -e "$RAW/nginx-upstream-error.log" -c "$WORK/upstream.conf" -g 'daemon off;'
  UPSTREAM_PID=$LAST_PID
  start nginx-proxy nginx -p "$WORK" -e "$RAW/nginx-proxy-error.log" -c "$WORK/proxy.conf" -g 'daemon off;'
  NGINX_PID=$LAST_PID
  start haproxy haproxy -db -f "$WORK/haproxy.cfg"
  HAPROXY_PID=$LAST_PID
  start sluice-passthrough "$SLUICE" serve --config "$WORK/passthrough.toml"
  SLUICE_PID=$LAST_PID
  for port in $UPSTREAM_PORT $NGINX_PROXY_PORT $HAPROXY_PORT $SLUICE_PORT; do wait_port "$port"; done
  PASS_IDLE_RSS=$(rss_mb "$SLUICE_PID")
  NGINX_IDLE_RSS=$(tree_rss_mb "$NGINX_PID")

  declare -A TARGET_PORT=([direct]=$UPSTREAM_PORT [sluice]=$SLUICE_PORT [nginx]=$NGINX_PROXY_PORT [haproxy]=$HAPROXY_PORT)
  # Targets alternate inside each repeat, so a change in background load hits all four.
  # No CPU pinning: wrk, the proxy and the upstream share both CPUs, each with its default
  # thread count (pinning wrk to one CPU with taskset gave the same ratios). The CPU time
  # per request, read from /proc, compares the proxies independently of that sharing.
  for r in $(seq 1 "$REPEATS"); do
    for method in GET POST; do
      for target in direct sluice nginx haproxy; do
        f="$RAW/wrk-$method-$target-$r.txt"
        script=()
        [ "$method" = POST ] && script=(-s "$WORK/post.lua")
        case $target in
          sluice) pid=$SLUICE_PID ;;
          nginx) pid=$NGINX_PID ;;
          haproxy) pid=$HAPROXY_PID ;;
          *) pid="" ;;
        esac
        [ -n "$pid" ] && { sample_rss "$pid" "$RAW/rss-$target.txt" & SAMPLER=$!; }
        proxy_before=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
        upstream_before=$(cpu_ticks "$UPSTREAM_PID")
        wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency "${script[@]}" \
          -H "X-API-Key: $KEY" "http://127.0.0.1:${TARGET_PORT[$target]}/api/v1/campaigns/1/messages/sms" >"$f"
        proxy_after=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
        upstream_after=$(cpu_ticks "$UPSTREAM_PID")
        [ -n "$pid" ] && { kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; }
        [ "$(wrk_bad "$f")" = 0 ] || { echo "errors in $f" >&2; cat "$f" >&2; exit 1; }
        wrk_rps "$f" >>"$RAW/rps-$method-$target.txt"
        wrk_ms "$f" 50% >>"$RAW/p50-$method-$target.txt"
        wrk_ms "$f" 99% >>"$RAW/p99-$method-$target.txt"
        # CPU microseconds per request, of the proxy (none for direct) and of the upstream.
        requests=$(awk '/requests in/ {print $1}' "$f")
        per_request $((proxy_after - proxy_before)) "$requests" >>"$RAW/cpu-proxy-$method-$target.txt"
        per_request $((upstream_after - upstream_before)) "$requests" >>"$RAW/cpu-upstream-$method-$target.txt"
        echo "$method $target #$r: $(wrk_rps "$f") req/s, p50 $(wrk_ms "$f" 50%) ms, p99 $(wrk_ms "$f" 99%) ms (load $(load))" >&2
      done
    done
  done
  out
  out "## 2. Pass-through overhead (wrk -t2 -c$CONNECTIONS -d${DURATION}s, static JSON upstream)"
  out
  out "| request | target | requests/s | p50 ms | p99 ms | proxy CPU µs/request | upstream CPU µs/request |"
  out "|---|---|---|---|---|---|---|"
  for method in GET POST; do
    for target in direct sluice nginx haproxy; do
      proxy_cpu="–"
      [ "$target" = direct ] || proxy_cpu=$(summary 1 <"$RAW/cpu-proxy-$method-$target.txt")
      out "| $method | $target | $(summary <"$RAW/rps-$method-$target.txt") | $(summary 2 <"$RAW/p50-$method-$target.txt") | $(summary 2 <"$RAW/p99-$method-$target.txt") | $proxy_cpu | $(summary 1 <"$RAW/cpu-upstream-$method-$target.txt") |"
    done
  done
  out
  for method in GET POST; do
    s=$(median <"$RAW/rps-$method-sluice.txt")
    n=$(median <"$RAW/rps-$method-nginx.txt")
    h=$(median <"$RAW/rps-$method-haproxy.txt")
    sp=$(median <"$RAW/p99-$method-sluice.txt")
    np=$(median <"$RAW/p99-$method-nginx.txt")
    hp=$(median <"$RAW/p99-$method-haproxy.txt")
    out "- $method: sluice/nginx throughput $(awk -v s="$s" -v n="$n" 'BEGIN {printf "%.2f", s / n}'), p99 sluice/nginx $(awk -v s="$sp" -v n="$np" 'BEGIN {printf "%.2f", s / n}'); sluice/HAProxy throughput $(awk -v s="$s" -v n="$h" 'BEGIN {printf "%.2f", s / n}'), p99 sluice/HAProxy $(awk -v s="$sp" -v n="$hp" 'BEGIN {printf "%.2f", s / n}')"
  done
  stop "$SLUICE_PID"
  stop "$NGINX_PID"
  stop "$HAPROXY_PID"
  stop "$UPSTREAM_PID"
  # The proxies logged one line per request (over 1 GB together); keep only the ends.
  local log
  for log in nginx-proxy-access haproxy sluice-passthrough; do
    tail -n 20 "$RAW/$log.log" >"$RAW/$log.tail.log"
    rm -f "$RAW/$log.log"
  done
}

# ---------------------------------------------------------------------------------------
# 3. Durable accept rate: single sends with Prefer: respond-async.
# ---------------------------------------------------------------------------------------

bench_accept() {
  log "3. durable accept rate"
  cat >"$WORK/accept.lua" <<EOF
wrk.method = "POST"
wrk.body = '{"phoneNumber":"+38970000001","variables":{"name":"Ana","code":"123456"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Prefer"] = "respond-async"
EOF
  for r in $(seq 1 "$REPEATS"); do
    for sync in full normal; do
      # A fresh simulator that accepts everything at once, so the dispatcher, which sends
      # the accepted jobs meanwhile, is never held back by 429s.
      start_simulator Transactional --max-pending 1000000000 --drain-rate 1000000000
      start_queue_proxy "$sync"
      f="$RAW/wrk-accept-$sync-$r.txt"
      wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$WORK/accept.lua" -H "X-API-Key: $KEY" \
        "http://127.0.0.1:$QUEUE_PORT/api/v1/campaigns/$CAMPAIGN/messages/sms" >"$f"
      [ "$(wrk_bad "$f")" = 0 ] || { echo "errors in $f" >&2; cat "$f" >&2; exit 1; }
      total=$(awk '/requests in/ {print $1}' "$f")
      accepted=$(metric sluice_queue_jobs_accepted_total)
      [ "$accepted" -ge "$total" ] || { echo "only $accepted of $total sends were accepted" >&2; exit 1; }
      delivered=$(metric sluice_queue_recipients_delivered_total)
      wrk_rps "$f" >>"$RAW/accept-rps-$sync.txt"
      wrk_ms "$f" 50% >>"$RAW/accept-p50-$sync.txt"
      wrk_ms "$f" 99% >>"$RAW/accept-p99-$sync.txt"
      awk -v d="$delivered" -v s="$DURATION" 'BEGIN {printf "%.0f\n", d / s}' >>"$RAW/accept-dispatched-$sync.txt"
      rss_mb "$QUEUE_PID" >>"$RAW/accept-rss-$sync.txt"
      metric sluice_queue_recipients_queued >>"$RAW/accept-backlog-$sync.txt"
      echo >>"$RAW/accept-backlog-$sync.txt"
      echo "accept $sync #$r: $(wrk_rps "$f") jobs/s, p99 $(wrk_ms "$f" 99%) ms; dispatched meanwhile: $delivered (load $(load))" >&2
      stop "$QUEUE_PID"
      stop "$SIM_PID"
    done
  done
  out
  out "## 3. Durable accept rate (single sends, Prefer: respond-async, wrk -t2 -c$CONNECTIONS -d${DURATION}s)"
  out
  out "| synchronous | accepted jobs/s | p50 ms | p99 ms | sent upstream meanwhile, jobs/s | still queued at the end | sluice RSS at the end, MB |"
  out "|---|---|---|---|---|---|---|"
  for sync in full normal; do
    out "| $sync | $(summary <"$RAW/accept-rps-$sync.txt") | $(summary 2 <"$RAW/accept-p50-$sync.txt") | $(summary 2 <"$RAW/accept-p99-$sync.txt") | $(summary <"$RAW/accept-dispatched-$sync.txt") | $(summary <"$RAW/accept-backlog-$sync.txt") | $(summary 1 <"$RAW/accept-rss-$sync.txt") |"
  done
}

# ---------------------------------------------------------------------------------------
# 4. Drain efficiency: 500,000 recipients, maxAllowed 50,000, 20,000/s, Retry-After 1.
# ---------------------------------------------------------------------------------------

bench_drain() {
  log "4. drain efficiency"
  SIM_FLAGS=(--max-pending 50000 --drain-rate 20000 --retry-after 1)
  BOUND=22.5 # (500000 - 50000) / 20000 seconds: the best any client can do
  # The 500,000 distinct recipients, "+3897" and 7 digits.
  {
    printf '{"sender":"Sluice","text":"Hello from the proxy","recipients":['
    seq -f '"+3897%07g"' 0 499999 | paste -sd, - | tr -d '\n'
    printf '],"channel":"sms"}'
  } >"$WORK/body-500k.json"

  # Simulator counters of interest, as "sends rate_limited distinct duplicates".
  sim_stats() {
    curl -sf "http://127.0.0.1:$SIM_PORT/_sim/stats" |
      jq -r '"\(.sends) \(.rate_limited) \(.distinct_recipients) \(.duplicate_recipients)"'
  }

  for r in $(seq 1 "$REPEATS"); do
    # sluice: one bulk send of 500,000; the makespan runs from its 202 until the job
    # has succeeded (every part accepted by the API).
    start_simulator Bulk "${SIM_FLAGS[@]}"
    start_queue_proxy full
    job=$(curl -sf -X POST "http://127.0.0.1:$QUEUE_PORT/api/v1/campaigns/$CAMPAIGN/bulk/sms" \
      -H "X-API-Key: $KEY" -H 'Content-Type: application/json' -H 'Prefer: respond-async' \
      --data-binary @"$WORK/body-500k.json" | jq -r .id)
    t0=$EPOCHREALTIME
    while :; do
      state=$(curl -sf "http://127.0.0.1:$QUEUE_PORT/sluice/v1/jobs/$job" -H "X-API-Key: $KEY" | jq -r .state)
      case $state in succeeded | failed | partially_failed | cancelled) break ;; esac
      sleep 0.05
    done
    t1=$EPOCHREALTIME
    [ "$state" = succeeded ] || { echo "the job ended $state" >&2; exit 1; }
    read -r sends limited distinct dups < <(sim_stats)
    makespan=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
    echo "$makespan" >>"$RAW/drain-sluice-makespan.txt"
    awk -v m="$makespan" -v b="$BOUND" 'BEGIN {printf "%.3f\n", m / b}' >>"$RAW/drain-sluice-ratio.txt"
    echo "$sends" >>"$RAW/drain-sluice-sends.txt"
    echo "$limited" >>"$RAW/drain-sluice-429.txt"
    echo "$distinct" >>"$RAW/drain-sluice-distinct.txt"
    echo "$dups" >>"$RAW/drain-sluice-dups.txt"
    echo $((500000 - distinct)) >>"$RAW/drain-sluice-missing.txt"
    echo "drain sluice #$r: ${makespan}s, $sends requests, $limited 429s, $distinct distinct, $dups duplicates (load $(load))" >&2
    stop "$QUEUE_PID"
    stop "$SIM_PID"

    # The provider's advice (sendWithRetry) against a fresh simulator with the same
    # settings: in batches of 200,000 (the API's maximum), and in batches of 50,000 (a
    # client that also knows maxAllowed).
    for batch in 200000 50000; do
      start_simulator Bulk "${SIM_FLAGS[@]}"
      "$EXAMPLES/naive_client" "http://127.0.0.1:$SIM_PORT" "$CAMPAIGN" 500000 "$batch" >"$RAW/naive-$batch-$r.txt"
      read -r sends limited distinct dups < <(sim_stats)
      makespan=$(sed -n 's/.*makespan_s=\([0-9.]*\).*/\1/p' "$RAW/naive-$batch-$r.txt")
      echo "$makespan" >>"$RAW/drain-naive$batch-makespan.txt"
      awk -v m="$makespan" -v b="$BOUND" 'BEGIN {printf "%.3f\n", m / b}' >>"$RAW/drain-naive$batch-ratio.txt"
      echo "$sends" >>"$RAW/drain-naive$batch-sends.txt"
      echo "$limited" >>"$RAW/drain-naive$batch-429.txt"
      echo "$distinct" >>"$RAW/drain-naive$batch-distinct.txt"
      echo "$dups" >>"$RAW/drain-naive$batch-dups.txt"
      echo $((500000 - distinct)) >>"$RAW/drain-naive$batch-missing.txt"
      echo "drain naive/$batch #$r: $(cat "$RAW/naive-$batch-$r.txt") (load $(load))" >&2
      stop "$SIM_PID"
    done
  done
  out
  out "## 4. Drain efficiency (500,000 recipients; simulator ${SIM_FLAGS[*]}; bound ${BOUND}s)"
  out
  out "| client | makespan s | / bound | upstream requests | 429s | delivered (distinct) | not delivered | duplicates |"
  out "|---|---|---|---|---|---|---|---|"
  for who in sluice naive200000 naive50000; do
    case $who in
      sluice) name="sluice (one bulk send, Prefer: respond-async)" ;;
      naive200000) name="sendWithRetry, batches of 200,000" ;;
      naive50000) name="sendWithRetry, batches of 50,000" ;;
    esac
    out "| $name | $(summary 2 <"$RAW/drain-$who-makespan.txt") | $(summary 3 <"$RAW/drain-$who-ratio.txt") | $(summary <"$RAW/drain-$who-sends.txt") | $(summary <"$RAW/drain-$who-429.txt") | $(summary <"$RAW/drain-$who-distinct.txt") | $(summary <"$RAW/drain-$who-missing.txt") | $(summary <"$RAW/drain-$who-dups.txt") |"
  done
}

# ---------------------------------------------------------------------------------------
# 5. Memory: idle, with 1,000,000 recipients queued, and under the load of section 2.
# ---------------------------------------------------------------------------------------

bench_memory() {
  log "5. memory"
  {
    printf '{"sender":"Sluice","text":"Hello from the proxy","recipients":['
    seq -f '"+3897%07g"' 0 999999 | paste -sd, - | tr -d '\n'
    printf '],"channel":"sms"}'
  } >"$WORK/body-1m-strings.json"
  {
    printf '{"sender":"Sluice","text":"Hello {{name}}, your code is {{code}}","recipients":['
    seq 0 999999 | awk '{printf "%s{\"phoneNumber\":\"3897%07d\",\"variables\":{\"name\":\"Ana %d\",\"code\":\"%06d\"}}", (NR > 1 ? "," : ""), $1, $1 % 97, ($1 * 7919) % 1000000}'
    printf '],"channel":"sms"}'
  } >"$WORK/body-1m-objects.json"

  for r in $(seq 1 "$REPEATS"); do
    for shape in strings objects; do
      # maxAllowed 0: the API refuses every part, so all 1,000,000 stay queued (the
      # dispatcher tries once, then waits out the 30 s hint).
      start_simulator Bulk --max-pending 0 --retry-after 30
      start_queue_proxy full
      sleep 1
      rss_mb "$QUEUE_PID" >>"$RAW/mem-idle.txt"
      code=$(curl -s -o /dev/null -w '%{http_code}' -X POST \
        "http://127.0.0.1:$QUEUE_PORT/api/v1/campaigns/$CAMPAIGN/bulk/sms" \
        -H "X-API-Key: $KEY" -H 'Content-Type: application/json' -H 'Prefer: respond-async' \
        --data-binary @"$WORK/body-1m-$shape.json")
      [ "$code" = 202 ] || { echo "the 1M send got $code" >&2; exit 1; }
      queued=$(metric sluice_queue_recipients_queued)
      [ "$queued" = 1000000 ] || { echo "queued: $queued" >&2; exit 1; }
      rss_mb "$QUEUE_PID" >>"$RAW/mem-$shape-after202.txt"
      sleep 5
      rss_mb "$QUEUE_PID" >>"$RAW/mem-$shape-after5s.txt"
      hwm_mb "$QUEUE_PID" >>"$RAW/mem-$shape-peak.txt"
      echo "memory $shape #$r: $(tail -1 "$RAW/mem-$shape-after5s.txt") MB queued, peak $(tail -1 "$RAW/mem-$shape-peak.txt") MB" >&2
      stop "$QUEUE_PID"
      stop "$SIM_PID"
    done
  done
  out
  out "## 5. Memory (RSS of sluice serve, MB)"
  out
  out "| state | sluice | nginx proxy (master + workers) |"
  out "|---|---|---|"
  if [ -n "${PASS_IDLE_RSS:-}" ]; then
    out "| idle, pass-through (routes = []) | $PASS_IDLE_RSS | $NGINX_IDLE_RSS |"
    out "| during section 2's load (highest 1 s sample) | $(sort -g "$RAW/rss-sluice.txt" | tail -1) | $(sort -g "$RAW/rss-nginx.txt" | tail -1) |"
  fi
  out "| idle, send queue on ($REPEATS starts) | $(summary 1 <"$RAW/mem-idle.txt") | |"
  for shape in strings objects; do
    mb=$(stat -c %s "$WORK/body-1m-$shape.json" | awk '{printf "%.1f", $1 / 1e6}')
    out "| 1,000,000 $shape recipients ($mb MB body) queued, right after the 202 | $(summary 1 <"$RAW/mem-$shape-after202.txt") | |"
    out "| … 5 s later | $(summary 1 <"$RAW/mem-$shape-after5s.txt") | |"
    out "| … peak while accepting it (VmHWM) | $(summary 1 <"$RAW/mem-$shape-peak.txt") | |"
  done
}

# ---------------------------------------------------------------------------------------
# Run the sections asked for
# ---------------------------------------------------------------------------------------

if section 1; then bench_split; fi
if section 2; then bench_passthrough; fi
if section 3; then bench_accept; fi
if section 4; then bench_drain; fi
if section 5; then bench_memory; fi

out
out "- load average at the end (1, 5, 15 min): $(load)"

log "done: $RESULTS"
cat "$RESULTS"
