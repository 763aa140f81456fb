#!/usr/bin/env bash
# Make a Docker engine answer, for the container test (make test-docker) and for local use.
#
# Usage:
#   scripts/docker_engine.sh run CMD [ARG...]   engine up, run CMD, stop the engine if this started it
#   scripts/docker_engine.sh start              engine up; leaves a dockerd it started running
#   scripts/docker_engine.sh stop               stop the dockerd that `start` started (by its pid)
#   scripts/docker_engine.sh status             say whether an engine answers
#
# "Engine up" means:
#   1. `docker info` answers -> use that engine, touch nothing;
#   2. else, as root: install what is missing with apt-get (docker.io, docker-compose,
#      mmdebstrap: the engine, compose v1 and the tool that makes the test's stand-in base
#      image), then start `dockerd` in the background (log and pid under $STATE_DIR) and
#      wait until it answers;
#   3. else (not root, or no apt-get): no engine can be had. With CI=true that is an error
#      (exit 1); elsewhere `run` says why and still runs CMD (the docker tests then skip,
#      naming the reason), `start` exits 1.
#
# `run` stops the dockerd it started when CMD ends (or on Ctrl-C), by its process id, and
# exits with CMD's status. It never stops an engine it did not start.
#
# State: ${REMIND2REG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/remind2reg}/dockerd/{dockerd.pid,dockerd.log}
# DOCKERD_ARGS: extra arguments for dockerd (e.g. "--data-root /mnt/docker").
set -euo pipefail

CACHE_DIR="${REMIND2REG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/remind2reg}"
STATE_DIR="$CACHE_DIR/dockerd"
PID_FILE="$STATE_DIR/dockerd.pid"
LOG_FILE="$STATE_DIR/dockerd.log"
START_TIMEOUT_S="${DOCKERD_START_TIMEOUT_S:-60}"

log() { printf '[docker_engine] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

is_ci() { [[ "${CI:-}" == "true" || "${CI:-}" == "1" ]]; }

engine_answers() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

# Why no engine can be had here (empty: one can, as root with apt-get).
why_no_engine() {
    if [[ "$(id -u)" != "0" ]]; then
        echo "no Docker engine answers and this user is not root (cannot install or start dockerd; start an engine or add yourself to the docker group)"
    elif ! command -v dockerd >/dev/null 2>&1 && ! command -v apt-get >/dev/null 2>&1; then
        echo "no Docker engine answers, dockerd is not installed and there is no apt-get to install it"
    fi
}

install_missing() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    # The Debian client is /usr/bin/docker; another client on PATH is fine too.
    command -v docker >/dev/null 2>&1 || missing+=(docker.io)
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
    # Needed too (importing images, TLS to the registries), but only installed when absent:
    # `apt-get install` would upgrade a package that is already there.
    local pkg
    for pkg in ca-certificates xz-utils iptables; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    log "installing ${missing[*]} with apt-get (once per machine) ..."
    local start=$SECONDS
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    # --no-install-recommends: the engine's recommends (apparmor, git, needrestart, ...) are
    # not needed here.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
        die "apt-get install ${missing[*]} failed"
    log "installed ${missing[*]} in $((SECONDS - start)) s"
}

start_dockerd() {
    mkdir -p "$STATE_DIR"
    log "starting dockerd (log: $LOG_FILE) ..."
    # setsid: its own session, so that a Ctrl-C in the caller's terminal reaches it only
    # through our trap (which stops it cleanly).
    # shellcheck disable=SC2086  # DOCKERD_ARGS is a list of words
    setsid dockerd ${DOCKERD_ARGS:-} >"$LOG_FILE" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$PID_FILE"
    local waited=0
    until docker info >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            tail -n 30 "$LOG_FILE" >&2 || true
            die "dockerd exited during start-up (last lines of $LOG_FILE above)"
        fi
        if ((waited >= START_TIMEOUT_S * 2)); then
            tail -n 30 "$LOG_FILE" >&2 || true
            stop_pid "$pid"
            die "dockerd did not answer within $START_TIMEOUT_S s (last lines of $LOG_FILE above)"
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    log "dockerd (pid $pid) answers after $((waited / 2)) s: $(docker info --format '{{.ServerVersion}}, storage {{.Driver}}, cgroup driver {{.CgroupDriver}}' 2>/dev/null)"
}

# Stop one process by its id: SIGTERM, wait up to 30 s, then SIGKILL.
stop_pid() {
    local pid="$1" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 60; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    log "dockerd (pid $pid) still running after 30 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

# Stop the dockerd recorded in the pid file, if it is still the dockerd we started.
stop_recorded() {
    [[ -f "$PID_FILE" ]] || {
        log "no dockerd started by this script is recorded ($PID_FILE); nothing to stop"
        return 0
    }
    local pid
    pid="$(cat "$PID_FILE")"
    if [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "dockerd" ]]; then
        log "stopping dockerd (pid $pid) ..."
        stop_pid "$pid"
        log "dockerd (pid $pid) stopped"
    else
        log "recorded dockerd (pid $pid) is not running any more"
    fi
    rm -f "$PID_FILE"
}

# Succeeds if some process named dockerd runs (without procps: read /proc).
dockerd_running() {
    local comm
    for comm in /proc/[0-9]*/comm; do
        [[ "$(cat "$comm" 2>/dev/null)" == "dockerd" ]] && return 0
    done
    return 1
}

# Engine up. Returns 0 when an engine answers; 2 when none can be had (reason on stderr).
# Sets STARTED=1 when this call started dockerd.
STARTED=0
ensure_engine() {
    if engine_answers; then
        log "a Docker engine answers: $(docker info --format '{{.ServerVersion}}' 2>/dev/null)"
        return 0
    fi
    local why
    why="$(why_no_engine)"
    if [[ -n "$why" ]]; then
        is_ci && die "CI=true and $why"
        log "$why"
        return 2
    fi
    install_missing
    command -v docker >/dev/null 2>&1 || die "no docker client after installing docker.io"
    if [[ -z "${DOCKER_HOST:-}" ]] && dockerd_running; then
        die "a dockerd is running but does not answer (see 'docker info'); not starting a second one"
    fi
    start_dockerd
    STARTED=1
}

cmd="${1:-}"
[[ -n "$cmd" ]] && shift
case "$cmd" in
run)
    (($#)) || die "usage: $0 run CMD [ARG...]"
    rc=0
    ensure_engine || rc=$?
    ((rc == 0 || rc == 2)) || exit "$rc"
    if ((STARTED)); then
        trap 'stop_recorded' EXIT
        trap 'exit 130' INT TERM
    fi
    set +e
    "$@"
    status=$?
    set -e
    exit "$status"
    ;;
start)
    ensure_engine || exit 1
    ((STARTED)) && log "leaving dockerd running; stop it with: $0 stop"
    ;;
stop)
    stop_recorded
    ;;
status)
    if engine_answers; then
        log "a Docker engine answers: $(docker info --format '{{.ServerVersion}}' 2>/dev/null)"
    else
        log "no Docker engine answers"
        exit 1
    fi
    ;;
*)
    sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//' >&2
    [[ "$cmd" == "-h" || "$cmd" == "--help" ]] || exit 2
    ;;
esac
