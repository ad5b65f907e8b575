#!/usr/bin/env bash
# alignray container entrypoint, shared by the CPU and GPU images (and runnable outside a container).
#
#   alignray-entrypoint head                 start a Ray head (GCS + dashboard/job API), block
#   alignray-entrypoint worker               join the head at $RAY_HEAD_ADDRESS (or $RAY_ADDRESS), block
#   alignray-entrypoint submit [ARGS...]     alignray submit ARGS (job API at $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS)
#   alignray-entrypoint CMD [ARGS...]        run any other command (e.g. alignray job list, bash)
#
# Environment (all optional unless stated):
#   RAY_AUTH_MODE        token (default here) | disabled
#   RAY_AUTH_TOKEN       the token itself, e.g. from a Kubernetes Secret; else
#   RAY_AUTH_TOKEN_PATH  a file holding it; default /run/secrets/ray_auth_token (a compose secret)
#   RAY_PORT=6379  RAY_DASHBOARD_HOST=0.0.0.0  RAY_DASHBOARD_PORT=8265      head only
#   RAY_HEAD_ADDRESS / RAY_ADDRESS = host:6379                             worker only (required)
#   RAY_NODE_IP_ADDRESS  RAY_NUM_CPUS  RAY_NUM_GPUS  RAY_TEMP_DIR            head and worker
#   RAY_START_ARGS       extra `ray start` flags, split on whitespace
set -euo pipefail

die() {
    echo "alignray-entrypoint: error: $*" >&2
    exit 2
}

# Auth stays on unless explicitly disabled; a node without the token must not start half-configured.
setup_auth() {
    export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
    if [ "${RAY_AUTH_MODE}" = "disabled" ]; then
        echo "alignray-entrypoint: warning: RAY_AUTH_MODE=disabled, anyone who reaches the ports can run code" >&2
        return
    fi
    [ "${RAY_AUTH_MODE}" = "token" ] || die "RAY_AUTH_MODE must be token or disabled, got '${RAY_AUTH_MODE}'"
    if [ -n "${RAY_AUTH_TOKEN:-}" ]; then
        return
    fi
    export RAY_AUTH_TOKEN_PATH="${RAY_AUTH_TOKEN_PATH:-/run/secrets/ray_auth_token}"
    if [ ! -r "${RAY_AUTH_TOKEN_PATH}" ] || [ ! -s "${RAY_AUTH_TOKEN_PATH}" ]; then
        die "token auth is on but there is no token: set RAY_AUTH_TOKEN or mount a readable token file at" \
            "${RAY_AUTH_TOKEN_PATH} (see docker/README.md)"
    fi
}

# Flags shared by head and worker, from the environment.
node_args() {
    NODE_ARGS=()
    if [ -n "${RAY_NODE_IP_ADDRESS:-}" ]; then NODE_ARGS+=("--node-ip-address=${RAY_NODE_IP_ADDRESS}"); fi
    if [ -n "${RAY_NUM_CPUS:-}" ]; then NODE_ARGS+=("--num-cpus=${RAY_NUM_CPUS}"); fi
    if [ -n "${RAY_NUM_GPUS:-}" ]; then NODE_ARGS+=("--num-gpus=${RAY_NUM_GPUS}"); fi
    if [ -n "${RAY_TEMP_DIR:-}" ]; then NODE_ARGS+=("--temp-dir=${RAY_TEMP_DIR}"); fi
    local extra=()
    read -r -a extra <<< "${RAY_START_ARGS:-}"
    NODE_ARGS+=("${extra[@]}")
}

role="${1:-head}"
if [ "$#" -gt 0 ]; then shift; fi

case "${role}" in
    head)
        setup_auth
        node_args
        exec ray start --head --block \
            --port="${RAY_PORT:-6379}" \
            --include-dashboard=true \
            --dashboard-host="${RAY_DASHBOARD_HOST:-0.0.0.0}" \
            --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" \
            "${NODE_ARGS[@]}" "$@"
        ;;
    worker)
        setup_auth
        node_args
        head="${RAY_HEAD_ADDRESS:-${RAY_ADDRESS:-}}"
        [ -n "${head}" ] || die "worker needs the head's address: set RAY_HEAD_ADDRESS=host:6379"
        exec ray start --block --address="${head}" "${NODE_ARGS[@]}" "$@"
        ;;
    submit)
        setup_auth
        exec alignray submit "$@"
        ;;
    -h|--help|help)
        sed -n '2,18p' "$0"
        ;;
    *)
        exec "${role}" "$@"
        ;;
esac
