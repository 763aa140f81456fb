#!/usr/bin/env bash
# Build a stand-in for the Dockerfile's base images (pytorch/pytorch:<tag>-devel and
# -runtime) from Debian packages, for testing the container where no image registry can be
# reached. Prints the value to pass as `--build-arg TORCH_IMAGE=...` on stdout.
#
# Usage: scripts/standin_base.sh [HOST_PYTHON]
#
#   HOST_PYTHON  a Python environment whose pip can download the torch wheel
#                (default: <repo>/.venv/bin/python, as made by `make install`).
#
# What the stand-in is (laid out like the real images, so the Dockerfile runs unchanged):
#   <name>-runtime  Debian minbase (the host's release), Python 3 in a virtual environment at
#                   /opt/conda (first on PATH, with pip), torch $TORCH_VERSION CPU from the
#                   wheel that the host's pip picks; no compiler, no libgomp1 (the Dockerfile's
#                   runtime stage must install what NiftyReg needs itself);
#   <name>-devel    the same plus g++, make and the Python headers.
# Both trust the host's CA certificates and get a pip.conf with the host pip's index settings
# (http(s) indexes only: host files and constraints are not reachable from a build), so pip
# inside a build reaches the same package registry as the host. The apt sources are the
# host's entries for its own Debian release, read from the host's apt configuration at run
# time, with the host's apt proxy and validity settings.
#
# Cached: both images carry a label with a hash of every input (this script, the wheel, the
# suite, the sources, the CA store, the pip settings); a run whose hash matches reuses them
# (seconds). STANDIN_REBUILD=1 forces a rebuild.
#
# Environment: TORCH_VERSION (default 2.13.0), STANDIN_SUITE (default: the host's release
# codename), STANDIN_IMAGE (default remind2reg-standin), STANDIN_TORCH_PIP_ARGS (extra
# arguments for `pip download torch`, e.g. an index that serves CPU wheels),
# REMIND2REG_CACHE (wheel cache, default ~/.cache/remind2reg).
#
# Needs: a Docker engine, mmdebstrap, root (mmdebstrap's root mode), and the registries.
set -euo pipefail

REPO_ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
SCRIPT="$REPO_ROOT/scripts/standin_base.sh"
HOST_PYTHON="${1:-$REPO_ROOT/.venv/bin/python}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
STANDIN_IMAGE="${STANDIN_IMAGE:-remind2reg-standin}"
CACHE_DIR="${REMIND2REG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/remind2reg}"
WHEEL_DIR="$CACHE_DIR/standin/torch-$TORCH_VERSION"
KEY_LABEL="org.remind2reg.standin.key"

log() { printf '[standin_base] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

[[ -x "$HOST_PYTHON" ]] || die "host python '$HOST_PYTHON' not found (run 'make install' first)"
command -v docker >/dev/null 2>&1 || die "no docker client (scripts/docker_engine.sh installs one)"
docker info >/dev/null 2>&1 || die "no Docker engine answers (scripts/docker_engine.sh start)"

if [[ -z "${STANDIN_SUITE:-}" ]]; then
    # shellcheck disable=SC1091
    STANDIN_SUITE="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    [[ -n "$STANDIN_SUITE" ]] || die "cannot read the host's release codename from /etc/os-release; set STANDIN_SUITE"
fi
TAG="$STANDIN_IMAGE:torch$TORCH_VERSION-$STANDIN_SUITE"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/standin-base.XXXXXX")"
trap 'rm -rf -- "$WORK"' EXIT

# 1. The torch wheel, as the host's pip picks it (cached).
mkdir -p "$WHEEL_DIR"
shopt -s nullglob
wheels=("$WHEEL_DIR"/torch-*.whl)
if ((${#wheels[@]} == 0)); then
    log "downloading the torch $TORCH_VERSION wheel with the host's pip ..."
    # shellcheck disable=SC2086  # STANDIN_TORCH_PIP_ARGS is a list of words
    "$HOST_PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
        --dest "$WORK/dl" ${STANDIN_TORCH_PIP_ARGS:-} "torch==$TORCH_VERSION" ||
        die "pip download torch==$TORCH_VERSION failed"
    for whl in "$WORK"/dl/torch-*.whl; do mv -- "$whl" "$WHEEL_DIR/"; done
    wheels=("$WHEEL_DIR"/torch-*.whl)
fi
shopt -u nullglob
((${#wheels[@]} == 1)) || die "expected one torch wheel in $WHEEL_DIR, found ${#wheels[@]}: remove the folder"
WHEEL="${wheels[0]}"
WHEEL_NAME="$(basename -- "$WHEEL")"
# torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl -> cp311
PY_TAG="$(sed -E 's/^torch-[^-]+-(cp[0-9]+)-.*$/\1/' <<<"$WHEEL_NAME")"
[[ "$PY_TAG" =~ ^cp[0-9]+$ ]] || die "cannot read the Python tag of $WHEEL_NAME"
size_mb=$(($(stat -c %s "$WHEEL") / 1000000))
((size_mb < 1000)) || log "warning: $WHEEL_NAME is $size_mb MB (a CUDA build?); STANDIN_TORCH_PIP_ARGS can point pip at CPU wheels"
log "torch wheel: $WHEEL_NAME ($size_mb MB, for $PY_TAG)"

# 2. The host's settings that the stand-in needs, read now (nothing host-specific is committed).
# CA store: the bundle the host's pip trusts (its `cert` setting), else the system bundle.
CA_BUNDLE="$("$HOST_PYTHON" -m pip config get global.cert 2>/dev/null || true)"
[[ -n "$CA_BUNDLE" && -f "$CA_BUNDLE" ]] || CA_BUNDLE="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
[[ -f "$CA_BUNDLE" ]] || die "no CA bundle found (looked at pip's cert setting and $CA_BUNDLE)"
cp -- "$CA_BUNDLE" "$WORK/host-trust-store.crt"

# pip.conf: the host pip's index settings that a build can use (http(s) URLs only).
"$HOST_PYTHON" - "$HOST_PYTHON" >"$WORK/pip.conf" <<'EOF'
import subprocess
import sys

listing = subprocess.run(
    [sys.argv[1], "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
).stdout
settings: dict[str, str] = {}
for line in listing.splitlines():
    key, sep, value = line.partition("=")
    if sep:
        # "global.index-url" and ":env:.index-url" (from PIP_* variables): env wins, as in pip.
        settings[key.split(".", 1)[-1]] = value.strip().strip("'\"")


def urls(name: str) -> list[str]:
    return [u for u in settings.get(name, "").split() if u.startswith(("http://", "https://"))]


print("[global]")
print("cert = /etc/ssl/certs/ca-certificates.crt")
print("disable-pip-version-check = 1")
for name in ("index-url", "extra-index-url", "find-links"):
    found = urls(name)
    if name == "index-url":
        found = found[:1]
    if found:
        print(f"{name} = {' '.join(found)}")
for name in ("trusted-host", "timeout", "default-timeout", "retries"):
    if settings.get(name):
        print(f"{name} = {settings[name]}")
EOF

# apt sources: the host's deb entries for the stand-in's suite (and -updates, -security).
"$HOST_PYTHON" - "$STANDIN_SUITE" >"$WORK/sources.sources" <<'EOF'
import glob
import re
import sys

suite = sys.argv[1]


def ours(suites: list[str]) -> list[str]:
    return [s for s in suites if s == suite or s.startswith(suite + "-")]


stanzas = []
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        continue
    for line in lines:
        # deb [opt=value ...] URI SUITE [COMPONENT ...]
        m = re.match(r"^deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line.split("#", 1)[0].strip())
        if not m or not ours([m.group(3)]):
            continue
        options = dict(o.partition("=")[::2] for o in (m.group(1) or "").split())
        stanza = {"Types": "deb", "URIs": m.group(2), "Suites": m.group(3), "Components": m.group(4) or "main"}
        if options.get("signed-by"):
            stanza["Signed-By"] = options["signed-by"]
        stanzas.append(stanza)
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    try:
        text = open(path).read()
    except OSError:
        continue
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        last = None
        for line in block.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and last:
                fields[last] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            last = key.strip()
            fields[last] = value.strip()
        if fields.get("Enabled", "yes").lower() == "no" or "deb" not in fields.get("Types", "").split():
            continue
        suites = ours(fields.get("Suites", "").split())
        if suites and fields.get("URIs"):
            stanza = {
                "Types": "deb",
                "URIs": fields["URIs"],
                "Suites": " ".join(suites),
                "Components": fields.get("Components", "main"),
            }
            if fields.get("Signed-By"):
                stanza["Signed-By"] = fields["Signed-By"]
            stanzas.append(stanza)
if not stanzas:
    sys.exit(f"no apt source for suite {suite!r} in /etc/apt/sources.list(.d)")
print("\n\n".join("\n".join(f"{k}: {v}" for k, v in s.items()) for s in stanzas))
EOF
[[ -s "$WORK/sources.sources" ]] || die "no apt source found for $STANDIN_SUITE in the host's apt configuration"

# apt options that decide whether the host reaches its mirrors: proxies and validity checks.
APTOPTS=()
for opt in Acquire::http::Proxy Acquire::https::Proxy Acquire::Check-Valid-Until Acquire::Check-Date; do
    value="$(apt-config dump "$opt" 2>/dev/null | sed -n "s/^$opt \"\(.*\)\";$/\1/p" | head -n 1)"
    [[ -n "$value" ]] && APTOPTS+=("--aptopt=$opt \"$value\"")
done
printf '%s\n' "${APTOPTS[@]}" >"$WORK/aptopts"

KEY="$({
    sha256sum "$SCRIPT" "$WORK/host-trust-store.crt" "$WORK/pip.conf" "$WORK/sources.sources" "$WORK/aptopts" | cut -d' ' -f1
    echo "$WHEEL_NAME $(stat -c %s "$WHEEL") $STANDIN_SUITE"
} | sha256sum | cut -c1-16)"

image_key() { docker image inspect --format "{{index .Config.Labels \"$KEY_LABEL\"}}" "$1" 2>/dev/null || true; }

if [[ "${STANDIN_REBUILD:-0}" != "1" ]] && [[ "$(image_key "$TAG-runtime")" == "$KEY" ]] &&
    [[ "$(image_key "$TAG-devel")" == "$KEY" ]]; then
    log "cached: $TAG-runtime and $TAG-devel (key $KEY)"
    echo "$TAG"
    exit 0
fi

command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap not found (apt-get install mmdebstrap)"
[[ "$(id -u)" == "0" ]] || die "building the stand-in base needs root (mmdebstrap root mode)"

# The images this run replaces, removed at the end if nothing else uses them.
old_ids=()
for suffix in devel runtime; do
    id="$(docker image inspect --format '{{.Id}}' "$TAG-$suffix" 2>/dev/null || true)"
    [[ -n "$id" ]] && old_ids+=("$id")
done

# 3. The runtime stand-in: one mmdebstrap root file system, imported as an image.
log "building $TAG-runtime with mmdebstrap ($STANDIN_SUITE minbase, python3 venv at /opt/conda, torch) ..."
start=$SECONDS
cp -- "$WHEEL" "$WORK/$WHEEL_NAME"
CHROOT_PY_TAG='python3 -c "import sys; print(\"cp%d%d\" % sys.version_info[:2])"'
# The hooks are run by mmdebstrap's shell, with $1 = the new root file system.
# shellcheck disable=SC2016
mmdebstrap --mode=root --variant=minbase --format=tar \
    --include=python3,python3-venv,ca-certificates \
    "${APTOPTS[@]}" \
    --aptopt='Acquire::Languages "none"' \
    --customize-hook="upload '$WORK/host-trust-store.crt' /usr/local/share/ca-certificates/host-trust-store.crt" \
    --customize-hook='chroot "$1" update-ca-certificates >/dev/null' \
    --customize-hook="upload '$WORK/pip.conf' /etc/pip.conf" \
    --customize-hook="tag=\$(chroot \"\$1\" $CHROOT_PY_TAG); [ \"\$tag\" = '$PY_TAG' ] || { echo \"the stand-in's python3 is \$tag but the torch wheel is for $PY_TAG: set STANDIN_SUITE to a release with that Python\" >&2; exit 1; }" \
    --customize-hook='chroot "$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin python3 -m venv /opt/conda' \
    --customize-hook="upload '$WORK/$WHEEL_NAME' '/tmp/$WHEEL_NAME'" \
    --customize-hook="chroot \"\$1\" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root /opt/conda/bin/pip install --quiet --no-cache-dir '/tmp/$WHEEL_NAME'" \
    --customize-hook="rm -f \"\$1/tmp/$WHEEL_NAME\"" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/root/.cache' \
    "$STANDIN_SUITE" "$WORK/rootfs.tar" "$WORK/sources.sources" >&2 ||
    die "mmdebstrap failed"
log "root file system: $(($(stat -c %s "$WORK/rootfs.tar") / 1000000)) MB in $((SECONDS - start)) s"
docker import \
    --change 'ENV PATH=/opt/conda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL $KEY_LABEL=$KEY" \
    --change 'LABEL org.opencontainers.image.description="Stand-in for the pytorch/pytorch runtime image, for tests only"' \
    --change 'CMD ["/bin/bash"]' \
    "$WORK/rootfs.tar" "$TAG-runtime" >/dev/null || die "docker import failed"
rm -f -- "$WORK/rootfs.tar"

# 4. The devel stand-in: the runtime one plus the build tools.
log "building $TAG-devel (g++, make, Python headers) ..."
docker build --quiet --tag "$TAG-devel" - >/dev/null <<EOF || die "building $TAG-devel failed"
FROM $TAG-runtime
RUN apt-get update && apt-get install -y --no-install-recommends g++ make python3-dev \\
    && apt-get clean && rm -rf /var/lib/apt/lists/*
LABEL $KEY_LABEL=$KEY \\
      org.opencontainers.image.description="Stand-in for the pytorch/pytorch devel image, for tests only"
EOF
log "built $TAG-runtime and $TAG-devel in $((SECONDS - start)) s (key $KEY)"
for id in "${old_ids[@]}"; do
    docker image rm "$id" >/dev/null 2>&1 || true # still used (e.g. by a cached build): kept
done
echo "$TAG"
