#!/usr/bin/env bash
# The main job, on one machine: installs what is missing, builds, starts Jaeger, the
# coordinator (embedded store), the reference site and one agent on loopback, runs the two
# reference questions as sweeps (GPT-2 training: two model sizes x sequence length x threads
# on CPU; the browser login flow, cold vs warm browser, 5 repeats each), prints the report
# and writes it as one HTML page (and a PNG of it, taken with headless Chromium).
# Everything it started stops when it ends; its logs and data stay in the printed folder.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh
export PATH="$PWD/target/release:$PWD/.tools/bin:$PATH"
echo "==> cargo build --release --bins"
cargo build --release --bins

work=$(mktemp -d /tmp/baton-demo.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
start() { # name command...
  "${@:2}" >"$work/$1.log" 2>&1 &
  pids+=($!)
}
wait_port() { # port name
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "$2 did not start on port $1; see $work/$2.log" >&2; exit 1
}

start jaeger jaeger --config deploy/jaeger/memory.yaml
wait_port 16686 jaeger
export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317
export OTEL_BSP_SCHEDULE_DELAY=1000   # export spans every second (default 5 s)
export BATON_COORDINATOR=http://127.0.0.1:7070
start coordinator baton-coordinator --listen 127.0.0.1:7070 --data-dir "$work/data"
wait_port 7070 coordinator
start site baton-site --listen 127.0.0.1:8088
wait_port 8088 site
start agent baton-agent
for _ in $(seq 100); do baton agents -o json 2>/dev/null | grep -q '"connected": true' && break; sleep 0.1; done
baton agents

ids=()
for spec in examples/sweep-gpt2.json examples/sweep-browser.json; do
  echo "==> baton submit $spec  (a sweep: one job per point; a few minutes)"
  id=$(baton submit "$spec" -o json | sed -n 's/^  "id": "\(.*\)",$/\1/p')
  baton watch "$id" >/dev/null || true
  ids+=("$id")
done
baton report "${ids[@]}" --html "$work/report.html" --csv "$work/points.csv"
no_sandbox=$([ "$(id -u)" = 0 ] && echo --no-sandbox || true)
chromium --headless $no_sandbox --disable-gpu --hide-scrollbars --window-size=1200,4400 \
  --screenshot="$work/report.png" "file://$work/report.html" >/dev/null 2>&1 || echo "(no PNG: chromium failed)"
sleep 4 # let the span exporters flush
for id in "${ids[@]}"; do
  # One point's trace: its spans from the queue to the engine's phases or steps.
  point=$(baton list --sweep "$id" --limit 1 -o json | sed -n 's/^    "id": "\(.*\)",$/\1/p')
  trace=$(baton get "$point" -o json | sed -n 's/^  "traceId": "\(.*\)",$/\1/p')
  echo
  echo "==> a point's trace $trace in Jaeger: http://127.0.0.1:16686/api/traces/$trace"
  curl -s "http://127.0.0.1:16686/api/traces/$trace" | python3 deploy/span-tree.py
done
echo
echo "report: $work/report.html (a picture of it: $work/report.png; the tidy table: $work/points.csv)"
echo "logs and data: $work"
if [ -t 0 ]; then read -rp "Jaeger keeps the traces until you press Enter. " _; fi
