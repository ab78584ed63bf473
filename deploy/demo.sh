#!/usr/bin/env bash
# The main job, on one machine: installs what is missing, builds, starts Jaeger, the
# coordinator (embedded store), the reference site and one agent on loopback, runs the two
# reference experiments (GPT-2 training on CPU, the browser login flow), and prints a report.
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
for spec in examples/gpt2-train.json examples/browser-login.json; do
  echo "==> baton submit $spec --wait"
  id=$(baton submit "$spec" -o json | sed -n 's/^  "id": "\(.*\)",$/\1/p')
  baton watch "$id" >/dev/null || true
  ids+=("$id")
done
baton report "${ids[@]}"
sleep 4 # let the span exporters flush
for id in "${ids[@]}"; do
  trace=$(baton get "$id" -o json | sed -n 's/^  "traceId": "\(.*\)",$/\1/p')
  echo
  echo "==> trace $trace in Jaeger: http://127.0.0.1:16686/api/traces/$trace"
  curl -s "http://127.0.0.1:16686/api/traces/$trace" | python3 deploy/span-tree.py
done
echo "logs and data: $work"
if [ -t 0 ]; then read -rp "Jaeger keeps the traces until you press Enter. " _; fi
