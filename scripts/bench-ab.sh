#!/usr/bin/env bash
# A/B of host binaries on the Kafka backlog benchmark, in turn, so that both
# see the same stretches of a noisy machine (this VM runs 20-25% apart
# between stretches of minutes; a change smaller than that only shows when
# the binaries alternate).
#
#   scripts/bench-ab.sh ROUNDS HOST_BINARY...
#
# Each round runs `--throughput both` once per binary, each copied in turn
# over the `persona-bus-host` that the benchmark starts, and prints its two
# lines (fresh, reuse), then for each of those runs the CPU the host's
# threads used (milliseconds, from /proc, summed per thread name). Build the
# binaries first (`cargo build --release -p persona-bus-tests --bin
# persona-bus-host`, copied aside per version) and `make kafka-up`. The
# benchmark's own `persona-bus-host` is left as the last binary given.
set -euo pipefail

rounds="${1:?usage: scripts/bench-ab.sh ROUNDS HOST_BINARY...}"
shift
[ $# -ge 1 ] || { echo "usage: scripts/bench-ab.sh ROUNDS HOST_BINARY..." >&2; exit 2; }
# Where Cargo builds: the Makefile's default (the clone's own `target/`)
# unless CARGO_TARGET_DIR says otherwise. The benchmark is looked for, and
# its host replaced, in the same folder the build below writes to.
root=$(cd "$(dirname "$0")/.." && pwd)
target="${CARGO_TARGET_DIR:-$root/target}"
CARGO_TARGET_DIR="$target" cargo bench --manifest-path "$root/Cargo.toml" \
  -p persona-bus-tests --bench kafka --no-run >/dev/null 2>&1
bench=$(ls -t "$target"/release/deps/kafka-* | grep -v '\.d$' | head -1)

# Samples each host process's threads every 100 ms until it exits, then
# prints CPU per thread name (threads keep their last sample).
watch_threads() {
  local pid=$1 samples
  samples=$(mktemp)
  while [ -d "/proc/$pid" ]; do
    for t in /proc/"$pid"/task/*; do
      s=$(cat "$t/stat" 2>/dev/null) && echo "${t##*/} $s"
    done >>"$samples"
    sleep 0.1
  done
  awk '{ tid = $1; line = $0; sub(/^[0-9]+ /, "", line)
         name = line; sub(/\) .*/, "", name); sub(/^[0-9]+ \(/, "", name)
         rest = line; sub(/^.*\) /, "", rest); split(rest, f, " ")
         ms = (f[12] + f[13]) * 10
         if (ms > top[tid]) { top[tid] = ms; of[tid] = name } }
       END { for (t in top) sum[of[t]] += top[t]
             total = 0; for (n in sum) total += sum[n]
             if (total < 5000) exit   # the untimed warm-up run
             printf "  thread CPU ms: total=%d", total
             for (n in sum) if (sum[n] >= 100) printf " %s=%d", n, sum[n]
             print "" }' "$samples"
  rm -f "$samples"
}

for r in $(seq 1 "$rounds"); do
  for host in "$@"; do
    cp "$host" "$target/release/persona-bus-host"
    seen=" "
    threads=$(mktemp)
    (
      while true; do
        for p in $(pgrep -f 'persona-bus-host --config .* run$' || true); do
          case "$seen" in *" $p "*) continue ;; esac
          seen="$seen$p "
          watch_threads "$p" >>"$threads" &
        done
        sleep 0.05
      done
    ) &
    watcher=$!
    out=$(env -u RUST_BACKTRACE "$bench" --bench --throughput both 2>&1) || {
      echo "$out" | tail -5 >&2
      kill "$watcher" 2>/dev/null || true
      exit 1
    }
    echo "$out" | grep -E '^2 handlers' | sed "s|^|$(basename "$host") round $r: |"
    sleep 1
    kill "$watcher" 2>/dev/null || true
    wait "$watcher" 2>/dev/null || true
    cat "$threads"
    rm -f "$threads"
  done
done
