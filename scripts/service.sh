# What the service scripts (kafka.sh, registry.sh, oci.sh) share, sourced
# after they set PIDFILE (one process's id) and LOG (its output) and
# define die(): whether the process runs, waiting for it to come up, and
# stopping it.

# Whether the recorded process is alive.
running() {
    [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

# await_up NAME TRIES STEP CHECK...: runs CHECK every STEP seconds until
# it succeeds; dies with the log's tail if the process exits first or
# TRIES run out.
await_up() {
    local name=$1 tries=$2 step=$3
    shift 3
    for _ in $(seq 1 "$tries"); do
        if "$@"; then
            echo "$name is up (pid $(cat "$PIDFILE"))"
            return 0
        fi
        running || { tail -30 "$LOG" >&2; die "$name exited during start-up"; }
        sleep "$step"
    done
    tail -30 "$LOG" >&2
    die "$name did not answer within $(awk "BEGIN { print $tries * $step }") s"
}

# stop_service NAME TRIES STEP: SIGTERM, up to TRIES x STEP seconds to
# exit, then SIGKILL; forgets the pid either way.
stop_service() {
    local name=$1 tries=$2 step=$3
    if running; then
        local pid
        pid=$(cat "$PIDFILE")
        kill "$pid"
        for _ in $(seq 1 "$tries"); do
            kill -0 "$pid" 2>/dev/null || break
            sleep "$step"
        done
        kill -9 "$pid" 2>/dev/null || true
        echo "$name stopped"
    else
        echo "$name is not running"
    fi
    rm -f "$PIDFILE"
}
