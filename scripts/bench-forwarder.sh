#!/usr/bin/env bash
# Benchmark of the forwarder in `spooled` mode (every 2xx durable), as in docs/benchmarks.md.
#
#   scripts/bench-forwarder.sh            # builds release binaries, then measures
#   SKIP_BUILD=1 DURATION=10s OUTAGE_SECS=30 scripts/bench-forwarder.sh
#
# Layout on 2 cores: the forwarder pinned to core FWD_CORE (0), wrk and the fake Segment sink
# on core LOAD_CORE (1). 1 KB signed bodies (one precomputed body and signature, sent by a wrk
# Lua script). Measures: throughput and p99 at 16 and 64 connections, CPU per request, idle
# RSS, peak RSS under load and during a Segment outage (sink killed), time to the first 200
# after process start. Needs: wrk (apt-get install -y wrk), openssl, python3, taskset.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-10s}
OUTAGE_SECS=${OUTAGE_SECS:-30}
FWD_CORE=${FWD_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
SPOOL_MAX_BYTES=${SPOOL_MAX_BYTES:-256MiB}
BIN=${BIN:-"$ROOT/target/release"}  # override to compare builds
SECRET=bench-webhook-secret
KEY=bench-write-key

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  (cd "$ROOT" && cargo build --release -p forwarder -p fakes --bins)
fi
command -v wrk >/dev/null || { echo "wrk missing: apt-get install -y wrk" >&2; exit 1; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- one ~1 KB body, signed once --------------------------------------------------------
BODY=$(python3 - <<'EOF'
import json
body = {
    "id": "bk_01HZX3Q7M2N8P4R6T9V1W3Y5Z7",
    "contact": {"id": "ct_9f2a7b3c", "name": "Ada Lovelace", "email": "ada.lovelace@example.com",
                "phone": "+44 20 7946 0001"},
    "service": {"id": "svc_morning_yoga", "name": "Morning Yoga (all levels)"},
    "seats": 2,
    "slot": {"startTime": "2026-01-05T07:30:00Z", "endTime": "2026-01-05T08:30:00Z"},
    "location": {"id": "loc_soho"},
    "payment": {"amount": 4000, "currency": "usd"},
    "status": "pending",
    "notes": "",
}
text = json.dumps(body, separators=(",", ":"))
body["notes"] = "x" * (1024 - len(text))
print(json.dumps(body, separators=(",", ":")), end="")
EOF
)
SIG=$(printf '%s' "$BODY" | openssl dgst -sha256 -hmac "$SECRET" -hex | awk '{print $NF}')
cat > "$WORK/post.lua" <<EOF
wrk.method = "POST"
wrk.body = [==[$BODY]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Webhook-Event"] = "booking.created"
wrk.headers["X-Webhook-Signature"] = "sha256=$SIG"
EOF
echo "body: ${#BODY} bytes"

# --- helpers ----------------------------------------------------------------------------
wait_for_log() { # file pattern
  for _ in $(seq 1 500); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.02
  done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
CLK_TCK=$(getconf CLK_TCK)
sample_rss_max() { # pid file: writes the max VmRSS (KiB) seen until killed
  local max=0 v
  while kill -0 "$1" 2>/dev/null; do
    v=$(rss_kib "$1" 2>/dev/null || echo 0)
    [ "${v:-0}" -gt "$max" ] && max=$v && echo "$max" > "$2"
    sleep 0.2
  done
}
start_sink() { # [port]
  local listen="127.0.0.1:${1:-0}"
  taskset -c "$LOAD_CORE" "$BIN/fake-segment" --listen "$listen" --write-key "$KEY" --quiet \
    2> "$WORK/sink.log" &
  SINK_PID=$!
  PIDS+=("$SINK_PID")
  wait_for_log "$WORK/sink.log" "listening on"
  SINK_URL=$(grep -o 'http://127.0.0.1:[0-9]*' "$WORK/sink.log" | head -1)
}
start_forwarder() { # spool dir, listen
  taskset -c "$FWD_CORE" env -i PATH="$PATH" \
    FORWARDER_LISTEN="$2" SESHN_WEBHOOK_SECRET="$SECRET" SEGMENT_WRITE_KEY="$KEY" \
    SEGMENT_ENDPOINT="$SINK_URL" SPOOL_DIR="$1" SPOOL_MAX_BYTES="$SPOOL_MAX_BYTES" \
    LOG_FORMAT=json LOG_FILTER=warn,seshn_segment_forwarder=info \
    "$BIN/seshn-segment-forwarder" 2> "$WORK/fwd.log" &
  FWD_PID=$!
  PIDS+=("$FWD_PID")
}
run_wrk() { # connections duration out
  taskset -c "$LOAD_CORE" wrk -t1 -c"$1" -d"$2" --latency -s "$WORK/post.lua" \
    "http://$ADDR/api/webhooks/seshn" > "$3"
}
report_wrk() { # label file cpu_ticks_delta
  local reqs rps p99 non2xx
  reqs=$(awk '/requests in/ {print $1}' "$2")
  rps=$(awk '/Requests\/sec/ {print $2}' "$2")
  p99=$(awk '$1 == "99%" {print $2}' "$2")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$2"); non2xx=${non2xx:-0}
  local cpu_us
  cpu_us=$(python3 -c "print(round($3 / $CLK_TCK * 1e6 / max($reqs, 1), 1))")
  printf '%-28s %10s req/s  p99 %-8s  requests %-9s non-2xx %-7s CPU/request %s us\n' \
    "$1" "$rps" "$p99" "$reqs" "$non2xx" "$cpu_us"
}

# --- first 200 after process start ------------------------------------------------------
start_sink
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
FIRST=$(python3 - "$BIN/seshn-segment-forwarder" "$PORT" "$SECRET" "$KEY" "$SINK_URL" "$WORK/first" "$BODY" "$SIG" <<'EOF'
import http.client, os, subprocess, sys, time
binary, port, secret, key, sink, spool, body, sig = sys.argv[1:]
env = {"PATH": os.environ["PATH"], "FORWARDER_LISTEN": f"127.0.0.1:{port}",
       "SESHN_WEBHOOK_SECRET": secret, "SEGMENT_WRITE_KEY": key, "SEGMENT_ENDPOINT": sink,
       "SPOOL_DIR": spool, "LOG_FILTER": "warn"}
t0 = time.monotonic()
proc = subprocess.Popen(["taskset", "-c", os.environ.get("FWD_CORE", "0"), binary], env=env,
                        stderr=subprocess.DEVNULL)
status = None
while time.monotonic() - t0 < 10:
    try:
        c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=1)
        c.request("POST", "/api/webhooks/seshn", body=body,
                  headers={"X-Webhook-Event": "booking.created", "X-Webhook-Signature": "sha256=" + sig})
        status = c.getresponse().status
        if status == 200:
            break
    except OSError:
        time.sleep(0.0005)
elapsed = (time.monotonic() - t0) * 1000
proc.terminate(); proc.wait()
print(f"{elapsed:.1f} ms (status {status})")
EOF
)
echo "first 200 after process start: $FIRST"

# --- steady state ---------------------------------------------------------------------
start_forwarder "$WORK/spool" "127.0.0.1:0"
wait_for_log "$WORK/fwd.log" '"listening"'
ADDR=$(grep '"listening"' "$WORK/fwd.log" | grep -o '127.0.0.1:[0-9]*' | head -1)
sleep 2
echo "idle RSS: $(( $(rss_kib "$FWD_PID") / 1024 )) MiB ($(rss_kib "$FWD_PID") KiB)"

sample_rss_max "$FWD_PID" "$WORK/rss_load" & PIDS+=($!)
# Warm-up (connections, allocator, spool file growth), not reported.
run_wrk 16 3s "$WORK/warm.txt"
for c in 16 64; do
  before=$(cpu_ticks "$FWD_PID")
  run_wrk "$c" "$DURATION" "$WORK/wrk$c.txt"
  after=$(cpu_ticks "$FWD_PID")
  report_wrk "spooled, $c connections" "$WORK/wrk$c.txt" $((after - before))
done
sleep 1
echo "peak RSS under load: $(( $(cat "$WORK/rss_load") / 1024 )) MiB"
grep -E 'Latency|Non-2xx|Socket errors' "$WORK/wrk16.txt" "$WORK/wrk64.txt" || true

# --- Segment outage: the sink is killed, load continues ------------------------------------
SINK_PORT=${SINK_URL##*:}
kill -9 "$SINK_PID"
echo "outage: sink killed, ${OUTAGE_SECS}s of load at 64 connections (spool bound $SPOOL_MAX_BYTES)"
sample_rss_max "$FWD_PID" "$WORK/rss_outage" & PIDS+=($!)
before=$(cpu_ticks "$FWD_PID")
run_wrk 64 "${OUTAGE_SECS}s" "$WORK/outage.txt"
after=$(cpu_ticks "$FWD_PID")
report_wrk "outage, 64 connections" "$WORK/outage.txt" $((after - before))
echo "peak RSS during the outage: $(( $(cat "$WORK/rss_outage") / 1024 )) MiB"
curl -s "http://$ADDR/metrics" | grep -E '^seshn_forwarder_spool_(depth|bytes)' || true
du -sh "$WORK/spool" | awk '{print "spool on disk: " $1}'

# --- recovery: the sink comes back on the same port; time to drain -------------------------
start_sink "$SINK_PORT"
t0=$(date +%s.%N)
for _ in $(seq 1 600); do
  depth=$(curl -s "http://$ADDR/metrics" | awk '/^seshn_forwarder_spool_depth/ {print $2}')
  [ "${depth:-1}" = 0 ] && break
  sleep 0.5
done
t1=$(date +%s.%N)
echo "drained the backlog in $(python3 -c "print(round($t1 - $t0, 1))") s (depth now ${depth:-?})"
echo "RSS after recovery: $(( $(rss_kib "$FWD_PID") / 1024 )) MiB"
