#!/usr/bin/env bash
# Checks the sluice container image without a container engine: buildah unpacks it, and
# the image's own binary runs from its root filesystem under chroot, as the image's user,
# on a read-only root (as with readOnlyRootFilesystem) with only the data dir writable.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: deploy/test-image.sh [--image FILE] [--keep-work]

Builds the image with deploy/build-image.sh --builder buildah (or takes an OCI archive
with --image FILE), then, with buildah (as root, --storage-driver vfs):
  1. checks the image config: user 65532:65532, ENTRYPOINT ["/sluice"], CMD ["serve"],
     the SLUICE_* env defaults, EXPOSE 8080 9090, VOLUME /var/lib/sluice;
  2. checks the root filesystem holds only /sluice (static, stripped, root-owned) and
     /var/lib/sluice (65532:65532, mode 0700), and that it is at most 25 MB;
  3. runs `/sluice --version` under chroot --userspec=65532:65532;
  4. starts `sluice simulate` on the host (the image's own binary) on a free loopback
     port, and `/sluice serve` under chroot, in a mount namespace where the root is
     read-only and only /var/lib/sluice is writable, with no /dev, no /etc/nsswitch.conf
     and the upstream given by host name through /etc/hosts (as a container runtime
     provides it); checks /healthz, /readyz, /metrics on the admin port, a pass-through
     GET /api/v1/viber-services (X-API-Key: demo-key) answering 200, that the queue's
     database was created in the data dir, and that SIGTERM stops sluice with exit 0;
  5. if dnsmasq is installed, does step 4 again with the upstream resolved by DNS only
     (/etc/resolv.conf -> a dnsmasq on 127.0.0.2, no /etc/hosts); otherwise says so;
  6. cleans up: stops what it started, buildah umount, rm, rmi.

Needs: root, buildah, chroot, unshare, curl, python3 (free ports, JSON), readelf.

Options:
  --image FILE   test this OCI archive instead of building one
  --keep-work    keep the work directory (logs) and print its path
  -h, --help     this text
EOF
}

die() { echo "test-image: FAIL: $*" >&2; exit 1; }
say() { echo "test-image: $*" >&2; }
ok() { echo "test-image: ok: $*" >&2; }

image=""
keep_work=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --image) [[ $# -ge 2 ]] || die "--image needs a FILE"; image="$2"; shift 2 ;;
    --image=*) image="${1#*=}"; shift ;;
    --keep-work) keep_work=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[[ "$(id -u)" == 0 ]] || die "run as root (buildah mount and chroot --userspec need it)"
for tool in buildah chroot unshare mount curl python3 readelf; do
  command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install -y --no-install-recommends buildah curl python3 binutils)"
done

CHROOT="$(command -v chroot)"
UNSHARE="$(command -v unshare)"
deploy_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
start_all=$(date +%s.%N)
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(date +%s.%N)"; }

UID_GID=65532:65532
MAX_BYTES=$((25 * 1000 * 1000))
B=(buildah --storage-driver "${BUILDAH_STORAGE_DRIVER:-vfs}")

work="$(mktemp -d "${TMPDIR:-/tmp}/sluice-test-image.XXXXXX")"
pids=()
ctr=""
image_id=""
remove_image=0
cleanup() {
  local rc=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ -n "$ctr" ]]; then
    "${B[@]}" umount "$ctr" >/dev/null 2>&1 || true
    "${B[@]}" rm "$ctr" >/dev/null 2>&1 || true
  fi
  if [[ "$remove_image" == 1 && -n "$image_id" ]]; then
    "${B[@]}" rmi -f "$image_id" >/dev/null 2>&1 || true
  fi
  if [[ "$keep_work" == 1 || "$rc" != 0 ]]; then
    say "work directory (logs): $work"
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT

# --- the image ---------------------------------------------------------------------------
if [[ -z "$image" ]]; then
  say "building the image (deploy/build-image.sh --builder buildah)"
  t=$(date +%s.%N)
  image="$work/sluice.oci.tar"
  "$deploy_dir/build-image.sh" --builder buildah --tag localhost/sluice:test-image --output "$image"
  say "built in $(elapsed "$t") s"
  built_here=1
else
  [[ -f "$image" ]] || die "no file $image"
  built_here=0
fi
archive_bytes=$(stat -c %s "$image")

before="$("${B[@]}" images --quiet --no-trunc 2>/dev/null || true)"
ctr="$("${B[@]}" from --name "sluice-test-image-$$" "oci-archive:$image" | tail -n 1)"
image_id="$("${B[@]}" inspect --type container --format '{{.FromImageID}}' "$ctr")"
if [[ "$built_here" == 1 ]] || ! grep -q "$image_id" <<<"$before"; then
  remove_image=1
fi
root="$("${B[@]}" mount "$ctr")"
say "image $image_id unpacked at $root"

# --- 1. the image config --------------------------------------------------------------------
"${B[@]}" inspect --type container "$ctr" > "$work/inspect.json"
python3 - "$work/inspect.json" <<'EOF' || die "image config (see above)"
import json, sys
c = json.load(open(sys.argv[1]))["OCIv1"]["config"]
env = dict(e.split("=", 1) for e in c.get("Env", []))
want_env = {
    "SLUICE_LISTEN": "0.0.0.0:8080",
    "SLUICE_ADMIN_LISTEN": "0.0.0.0:9090",
    "SLUICE_DATA_DIR": "/var/lib/sluice",
    "SLUICE_LOG_FORMAT": "json",
}
problems = []
def want(what, got, expected):
    if got != expected:
        problems.append(f"{what}: {got!r}, expected {expected!r}")
want("User", c.get("User"), "65532:65532")
want("Entrypoint", c.get("Entrypoint"), ["/sluice"])
want("Cmd", c.get("Cmd"), ["serve"])
want("ExposedPorts", sorted(c.get("ExposedPorts", {})), ["8080/tcp", "9090/tcp"])
want("Volumes", sorted(c.get("Volumes", {})), ["/var/lib/sluice"])
for k, v in want_env.items():
    want(f"Env {k}", env.get(k), v)
for p in problems:
    print("test-image:   " + p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
ok "config: user 65532:65532, entrypoint /sluice serve, env defaults, ports 8080 9090, volume /var/lib/sluice"

# --- 2. the root filesystem -------------------------------------------------------------------
listing="$(cd "$root" && find . -mindepth 1 -printf '%p %u:%g %m\n' | sort)"
expected="./sluice root:root 755
./var root:root 755
./var/lib root:root 755
./var/lib/sluice 65532:65532 700"
if [[ "$listing" != "$expected" ]]; then
  printf 'test-image:   found:\n%s\ntest-image:   expected:\n%s\n' "$listing" "$expected" >&2
  die "the root filesystem holds something else than /sluice and /var/lib/sluice"
fi
readelf -lW "$root/sluice" | grep -q 'Requesting program interpreter' && die "/sluice is not static"
readelf -SW "$root/sluice" | grep -Eq '\.debug_info|\.symtab' && die "/sluice is not stripped"
root_bytes=$(du -sb "$root" | cut -f1)
[[ "$root_bytes" -le "$MAX_BYTES" ]] || die "root filesystem is $root_bytes bytes, over $MAX_BYTES"
ok "root filesystem: only /sluice (static, stripped) and /var/lib/sluice (65532:65532, 0700); $root_bytes bytes unpacked, archive $archive_bytes bytes"

# --- 3. --version ----------------------------------------------------------------------------
version="$(env -i "$CHROOT" --userspec="$UID_GID" "$root" /sluice --version)" || die "/sluice --version failed under chroot"
ok "chroot --userspec=$UID_GID $root /sluice --version: $version"

# --- 4. serve against a simulator ------------------------------------------------------------
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# The simulator runs on the host: the image's binary is static, so it runs anywhere.
cp "$root/sluice" "$work/sluice-host"
sim_port=$(free_port)
"$work/sluice-host" simulate --listen "127.0.0.1:$sim_port" --log-format text >"$work/simulator.log" 2>&1 &
pids+=($!)
sim_pid=$!

wait_http() { # URL SECONDS: until URL answers 200
  local deadline=$(( $(date +%s) + $2 ))
  until curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null; do
    [[ $(date +%s) -lt $deadline ]] || return 1
    sleep 0.1
  done
}
wait_http "http://127.0.0.1:$sim_port/_sim/stats" 10 || die "the simulator did not start (see $work/simulator.log)"

# Emulates what a container runtime provides: /etc/hosts (written into the throwaway
# container's root), the image's env; then the root goes read-only in a private mount
# namespace, with the data dir bind-mounted writable over it.
mkdir -p "$root/etc"
printf '127.0.0.1 localhost\n127.0.0.1 sluice-upstream.test\n' > "$root/etc/hosts"

run_serve() { # NAME UPSTREAM_HOST
  local name="$1" host="$2" main admin log pid rc t
  main=$(free_port); admin=$(free_port)
  log="$work/serve-$name.log"
  rm -rf "${root:?}/var/lib/sluice/"*
  t=$(date +%s.%N)
  env -i \
    SLUICE_LISTEN="127.0.0.1:$main" \
    SLUICE_ADMIN_LISTEN="127.0.0.1:$admin" \
    SLUICE_DATA_DIR=/var/lib/sluice \
    SLUICE_LOG_FORMAT=json \
    SLUICE_UPSTREAM="http://$host:$sim_port" \
    ROOT="$root" UID_GID="$UID_GID" CHROOT="$CHROOT" \
    "$UNSHARE" --mount --propagation private -- /bin/sh -c '
      set -e
      mount --bind "$ROOT/var/lib/sluice" "$ROOT/var/lib/sluice"
      mount --rbind "$ROOT" "$ROOT"
      mount -o remount,bind,ro "$ROOT"
      if touch "$ROOT/.rw-probe" 2>/dev/null; then echo "the root is writable" >&2; exit 97; fi
      exec "$CHROOT" --userspec="$UID_GID" "$ROOT" /sluice serve' >"$log" 2>&1 &
  pid=$!
  pids+=("$pid")
  wait_http "http://127.0.0.1:$admin/healthz" 15 || die "[$name] /healthz did not answer 200 (see $log)"
  ok "[$name] /healthz 200 after $(elapsed "$t") s"
  wait_http "http://127.0.0.1:$admin/readyz" 5 || die "[$name] /readyz did not answer 200 (see $log)"
  curl -fsS "http://127.0.0.1:$admin/metrics" | grep -q '^sluice_' || die "[$name] /metrics has no sluice_ series"
  ok "[$name] /readyz 200, /metrics has sluice_ series"
  local code
  code="$(curl -sS -o "$work/body-$name" -w '%{http_code}' --max-time 10 \
    -H 'X-API-Key: demo-key' "http://127.0.0.1:$main/api/v1/viber-services")" || true
  [[ "$code" == 200 ]] || die "[$name] GET /api/v1/viber-services through sluice (upstream http://$host:$sim_port): HTTP $code, body: $(head -c 300 "$work/body-$name")"
  ok "[$name] GET /api/v1/viber-services through sluice -> 200 (upstream http://$host:$sim_port)"
  [[ "$(stat -c '%u:%g' "$root/var/lib/sluice/sluice.db" 2>/dev/null)" == "$UID_GID" ]] \
    || die "[$name] no sluice.db owned by $UID_GID in the data dir"
  ok "[$name] the queue's database is in /var/lib/sluice, owned by $UID_GID"
  t=$(date +%s.%N)
  kill -TERM "$pid"
  rc=0; wait "$pid" || rc=$?
  [[ "$rc" == 0 ]] || die "[$name] sluice exited $rc after SIGTERM (see $log)"
  ok "[$name] SIGTERM: exit 0 after $(elapsed "$t") s"
}

run_serve hosts sluice-upstream.test

# --- 5. DNS only -------------------------------------------------------------------------------
if command -v dnsmasq >/dev/null; then
  rm -f "$root/etc/hosts"
  echo 'nameserver 127.0.0.2' > "$root/etc/resolv.conf"
  dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
    --listen-address=127.0.0.2 --port=53 --address=/sluice-upstream.test/127.0.0.1 \
    --log-queries --log-facility="$work/dnsmasq.log" --user=root --pid-file= &
  pids+=($!)
  sleep 0.3
  run_serve dns sluice-upstream.test
  grep -q 'query\[A\] sluice-upstream.test' "$work/dnsmasq.log" || die "[dns] dnsmasq saw no query for sluice-upstream.test"
  ok "[dns] the name was resolved by DNS (dnsmasq logged the query)"
else
  say "skipped: the DNS-only check (dnsmasq not installed: apt-get install -y --no-install-recommends dnsmasq-base)"
fi

kill "$sim_pid" 2>/dev/null || true
say "all checks passed in $(elapsed "$start_all") s"
