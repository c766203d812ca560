#!/bin/sh
# Three `leadership run` processes elect a leader on the embedded file://
# store; the leader is stopped with SIGTERM, then the next one killed with
# -9, and the handover times are printed.
set -eu
cd "$(dirname "$0")/.."
BIN=${LEADERSHIP_BUILD:-build}/leadership
DIR=$(mktemp -d /tmp/leadership-demo.XXXXXX)
trap 'kill -9 $(cat "$DIR"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$DIR"' EXIT INT TERM

for node in node-1 node-2 node-3; do
    "$BIN" run examples/demo-policy.lua --store "file://$DIR/store" --node "$node" \
        --log-level warn >"$DIR/$node.out" 2>&1 &
    echo $! >"$DIR/$node.pid"
    sleep 0.2
done

now() { date +%H:%M:%S.%N; }

# The node whose last line says it was elected (and has not lost since).
leader() {
    for node in node-1 node-2 node-3; do
        last=$(grep -E "elected|lost" "$DIR/$node.out" 2>/dev/null | tail -n 1)
        case "$last" in *elected*) kill -0 "$(cat "$DIR/$node.pid")" 2>/dev/null && echo "$node" ;; esac
    done | head -n 1
}

wait_new_leader() { # old leader name; prints the new one
    i=0
    while [ $i -lt 400 ]; do
        l=$(leader)
        if [ -n "$l" ] && [ "$l" != "$1" ]; then echo "$l"; return 0; fi
        sleep 0.01
        i=$((i + 1))
    done
    echo "no new leader within 4 s" >&2
    exit 1
}

handover() { # what, old leader, new leader, signal time (HH:MM:SS.nnn)
    elected=$(grep elected "$DIR/$3.out" | tail -n 1 | cut -d' ' -f1)
    awk -v a="$4" -v b="$elected" -v what="$1" -v old="$2" -v new="$3" '
        function seconds(hms, p) { split(hms, p, ":"); return p[1] * 3600 + p[2] * 60 + p[3] }
        BEGIN { printf "%s: %s -> %s, new leader elected %.0f ms after the signal\n",
                       what, old, new, (seconds(b) - seconds(a)) * 1000 }'
}

first=$(wait_new_leader none)
echo "leader: $first (three candidates on file://$DIR/store)"

t=$(now)
kill -TERM "$(cat "$DIR/$first.pid")"
second=$(wait_new_leader "$first")
handover "SIGTERM handover" "$first" "$second" "$t"

t=$(now)
kill -9 "$(cat "$DIR/$second.pid")"
wait "$(cat "$DIR/$second.pid")" 2>/dev/null || true # reap it: a zombie still answers kill -0
third=$(wait_new_leader "$second")
handover "kill -9 handover" "$second" "$third" "$t"

echo "--- what each node printed"
for node in node-1 node-2 node-3; do sed "s/^/$node: /" "$DIR/$node.out"; done
