#!/usr/bin/env bash
# Builds the sluice container image (deploy/Containerfile) and writes it as an OCI archive.
#
# The binary is compiled on the host first (static glibc, stripped), then copied into a
# FROM-scratch image: see --help and deploy/README.md for why.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: deploy/build-image.sh --output FILE [options]
       deploy/build-image.sh --stage DIR [--binary PATH]

Builds the sluice container image from deploy/Containerfile and writes it to FILE as an
OCI archive (load it with `podman load -i FILE`, `docker load -i FILE`, or use it as
`oci-archive:FILE` with skopeo/buildah).

Steps:
  1. cargo build --release --locked --target x86_64-unknown-linux-gnu --bin sluice
     with RUSTFLAGS="-C target-feature=+crt-static" (a static glibc binary: no musl
     target can be fetched here) plus --cfg getrandom_backend="linux_getrandom" (in a
     static binary getrandom 0.3 cannot find glibc's getrandom() through dlsym and
     would read /dev/urandom instead, which a bare chroot lacks), and
     CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols (no debug info
     in the image; Cargo.toml's release profile keeps debug = 1 for local builds).
     The binary lands in target/x86_64-unknown-linux-gnu/release/sluice, apart from
     target/release, so the two builds do not invalidate each other;
  2. checks the binary is static (no ELF interpreter) and stripped;
  3. builds the image with the first builder found: docker (if its engine answers),
     podman, buildah (as root: --storage-driver vfs --isolation chroot);
  4. writes the OCI archive and leaves the image tagged in the builder's local storage.

Options:
  --output FILE      where to write the OCI archive
  --stage DIR        only write the build context for deploy/Containerfile into DIR
                     (the binary and the data dir's template; DIR must be new, empty,
                     or an earlier context, which is replaced) and
                     stop: for `docker compose build` (deploy/compose) or a builder of
                     your own
  --tag NAME         image name and tag (default: localhost/sluice:<version of the binary>)
  --builder NAME     docker, podman or buildah (default: the first that works;
                     env SLUICE_IMAGE_BUILDER)
  --binary PATH      use this already built static binary instead of building one
  -h, --help         this text

Environment:
  BUILDAH_STORAGE_DRIVER   storage driver for buildah (default as root: vfs)
  CARGO                    cargo to run (default: cargo)
EOF
}

die() { echo "build-image: error: $*" >&2; exit 1; }
say() { echo "build-image: $*" >&2; }

output=""
stage=""
tag=""
builder="${SLUICE_IMAGE_BUILDER:-}"
binary=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --output) [[ $# -ge 2 ]] || die "--output needs a FILE"; output="$2"; shift 2 ;;
    --output=*) output="${1#*=}"; shift ;;
    --stage) [[ $# -ge 2 ]] || die "--stage needs a DIR"; stage="$2"; shift 2 ;;
    --stage=*) stage="${1#*=}"; shift ;;
    --tag) [[ $# -ge 2 ]] || die "--tag needs a NAME"; tag="$2"; shift 2 ;;
    --tag=*) tag="${1#*=}"; shift ;;
    --builder) [[ $# -ge 2 ]] || die "--builder needs a NAME"; builder="$2"; shift 2 ;;
    --builder=*) builder="${1#*=}"; shift ;;
    --binary) [[ $# -ge 2 ]] || die "--binary needs a PATH"; binary="$2"; shift 2 ;;
    --binary=*) binary="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[[ -n "$output" || -n "$stage" ]] || { usage >&2; die "--output FILE (or --stage DIR) is required"; }
[[ -z "$output" || -z "$stage" ]] || die "--output and --stage exclude each other"

deploy_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$deploy_dir/.." && pwd)"
target=x86_64-unknown-linux-gnu

[[ "$(uname -m)" == x86_64 ]] || die "this script builds for $target; this machine is $(uname -m)"

# --- 1. the binary -------------------------------------------------------------------
if [[ -z "$binary" ]]; then
  command -v "${CARGO:-cargo}" >/dev/null || die "cargo not found (install Rust, or pass --binary)"
  say "building a static, stripped binary (cargo build --release --locked --target $target)"
  (
    cd "$repo"
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static --cfg getrandom_backend=\"linux_getrandom\"" \
    CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
      "${CARGO:-cargo}" build --release --locked --target "$target" --bin sluice
  ) || die "cargo build failed"
  target_dir="${CARGO_TARGET_DIR:-$repo/target}"
  [[ "$target_dir" = /* ]] || target_dir="$repo/$target_dir"
  binary="$target_dir/$target/release/sluice"
fi
[[ -f "$binary" && -x "$binary" ]] || die "no executable binary at $binary"

# --- 2. static and stripped? ------------------------------------------------------------
if command -v readelf >/dev/null; then
  if readelf -lW "$binary" | grep -q 'Requesting program interpreter'; then
    die "$binary is dynamically linked (it has an ELF interpreter); a FROM-scratch image needs a static binary"
  fi
  if readelf -SW "$binary" | grep -Eq '\.debug_info|\.symtab'; then
    die "$binary still has symbols or debug info; build with CARGO_PROFILE_RELEASE_STRIP=symbols or strip it"
  fi
else
  say "readelf not found (binutils): not checking that the binary is static and stripped"
fi
version="$("$binary" --version | awk '{print $2}')" || die "$binary --version failed"
[[ -n "$version" ]] || die "could not read the version from $binary --version"
tag="${tag:-localhost/sluice:$version}"

# --- 3. the build context: the binary and an empty data dir ------------------------------
# rootfs/ is copied as root:root, state/ with --chown to the runtime user (see Containerfile).
write_context() {
  local dir="$1"
  mkdir -p "$dir/rootfs/var/lib" "$dir/state"
  chmod 0755 "$dir/rootfs" "$dir/rootfs/var" "$dir/rootfs/var/lib" "$dir/state"
  cp "$binary" "$dir/rootfs/sluice"
  chmod 0755 "$dir/rootfs/sluice"
  mkdir -m 0700 "$dir/state/sluice"
  chmod 0700 "$dir/state/sluice"   # whatever the umask
}
if [[ -n "$stage" ]]; then
  # Only ever empties a directory holding nothing but an earlier context.
  if [[ -e "$stage" ]]; then
    [[ -d "$stage" ]] || die "--stage $stage exists and is not a directory"
    for entry in "$stage"/* "$stage"/.[!.]*; do
      [[ -e "$entry" ]] || continue
      case "$(basename "$entry")" in
        rootfs|state) ;;
        *) die "--stage $stage holds $(basename "$entry"): give an empty or new directory" ;;
      esac
    done
    rm -rf "$stage/rootfs" "$stage/state"
  fi
  write_context "$stage"
  say "wrote the build context for deploy/Containerfile to $stage"
  exit 0
fi
context="$(mktemp -d "${TMPDIR:-/tmp}/sluice-image.XXXXXX")"
trap 'rm -rf "$context"' EXIT
write_context "$context"

# --- 4. the builder --------------------------------------------------------------------
if [[ -z "$builder" ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    builder=docker
  elif command -v podman >/dev/null; then
    builder=podman
  elif command -v buildah >/dev/null; then
    builder=buildah
  else
    die "no image builder: install podman or buildah, or start a Docker engine ('docker info' must work)"
  fi
fi
command -v "$builder" >/dev/null || die "builder '$builder' not found"

mkdir -p "$(dirname "$output")"
output="$(cd "$(dirname "$output")" && pwd)/$(basename "$output")"
rm -f "$output"

say "building $tag with $builder"
case "$builder" in
  docker)
    docker info >/dev/null 2>&1 || die "the Docker client cannot reach an engine ('docker info' fails); use --builder podman or buildah"
    server="$(docker version --format '{{.Server.Version}}')"
    [[ "${server%%.*}" -ge 25 ]] 2>/dev/null \
      || die "Docker engine $server: 'docker save' writes an OCI archive from version 25 on; use podman or buildah"
    docker build --file "$deploy_dir/Containerfile" --tag "$tag" "$context"
    docker save --output "$output" "$tag"
    ;;
  podman)
    podman build --file "$deploy_dir/Containerfile" --tag "$tag" "$context"
    podman save --format oci-archive --output "$output" "$tag"
    ;;
  buildah)
    opts=()
    if [[ "$(id -u)" == 0 ]]; then
      opts=(--storage-driver "${BUILDAH_STORAGE_DRIVER:-vfs}")
      bud_opts=(--isolation chroot)
    else
      [[ -n "${BUILDAH_STORAGE_DRIVER:-}" ]] && opts=(--storage-driver "$BUILDAH_STORAGE_DRIVER")
      bud_opts=()
    fi
    buildah "${opts[@]}" bud "${bud_opts[@]}" --file "$deploy_dir/Containerfile" --tag "$tag" "$context"
    buildah "${opts[@]}" push "$tag" "oci-archive:$output:$tag"
    ;;
  *) die "unknown builder '$builder' (docker, podman or buildah)" ;;
esac

[[ -s "$output" ]] || die "$builder wrote no archive at $output"
bytes="$(stat -c %s "$output")"
say "binary: $(stat -c %s "$binary") bytes; archive: $bytes bytes"
say "wrote $output ($tag)"
