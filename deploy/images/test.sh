#!/usr/bin/env bash
# Runs baton's container images for real with podman (runc; see lib.sh) and checks that
# each one starts its binary, answers health, and runs jobs:
#
#   bash deploy/images/test.sh [agent-cpu] [agent-cuda] [agent-browser]
#
# (all three agents without arguments; the coordinator always). The images are built
# first with build.sh (incremental: cached layers, cargo no-ops); BATON_IMAGES_REUSE=1 uses
# the images as they are when they exist. Every container runs with --network host (on
# free loopback ports), --read-only (podman mounts tmpfs on /tmp, /var/tmp, /run) and the
# image's non-root user 10001.
#
# Checks, in order:
#  coordinator    runs as uid 10001 on a read-only root with a volume for its store;
#                 grpc.health.v1.Health/Check answers SERVING (grpcurl)
#  each agent     GET /healthz answers 200 on --metrics-listen; the agent registers with the
#                 coordinator (`baton agents`); a sleep job pinned to it (label image=NAME)
#                 succeeds (`baton submit --wait`)
#  agent-cpu      examples/gpt2-train.json (a 4-layer GPT-2, 10 steps) succeeds on libtorch
#  agent-cuda     the agent starts without a GPU (CPU only) and, with an NVIDIA device node
#                 faked, loads libtorch_cuda.so and every library it needs (no GPU here to
#                 run CUDA work); examples/gpt2-train.json succeeds on its CPU
#  agent-browser  examples/browser-login.json (headless Chromium through chromedriver) and
#                 examples/desktop-login.json (headed Chromium on the image's Xvfb, typing
#                 and clicking with OS input) succeed against baton-site on the host
# Everything started is stopped and removed at the end, also on failure.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/../check.sh"
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"

agents=("$@")
[ ${#agents[@]} -gt 0 ] || agents=(agent-cpu agent-cuda agent-browser)
images=(coordinator "${agents[@]}")

run_id=baton-test-$$
tmp=$(mktemp -d /tmp/baton-images-test.XXXXXX)
site_pid=
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    for c in $(podman ps -a --filter "name=^$run_id-" --format '{{.Names}}'); do
      echo "--- logs of $c (last 30 lines)" >&2
      podman logs --tail 30 "$c" >&2 2>&1 || true
    done
  fi
  podman ps -a --filter "name=^$run_id-" --format '{{.Names}}' | xargs -r podman rm -f -t 5 >/dev/null 2>&1 || true
  podman volume rm -f "$run_id-data" >/dev/null 2>&1 || true
  [ -z "$site_pid" ] || kill "$site_pid" 2>/dev/null || true
  rm -rf "$tmp" "${BATON_CONTAINERS_DIR:-}"
  exit $rc
}
trap cleanup EXIT

step() { echo "==> $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
wait_for() { # SECONDS WHAT COMMAND... : retries COMMAND every 0.2 s
  local deadline=$(($(date +%s) + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "$what (waited $1 s)"
    sleep 0.2
  done
}
running() { [ "$(podman inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" = true ]; }

# Images.
need_build=()
for image in "${images[@]}"; do
  if [ "${BATON_IMAGES_REUSE:-0}" != 1 ] || ! podman image exists "$(image_name "$image")"; then
    need_build+=("$image")
  fi
done
if [ ${#need_build[@]} -gt 0 ]; then
  step "build.sh ${need_build[*]}"
  bash deploy/images/build.sh "${need_build[@]}"
fi
# The CLI and the test site run on the host.
if [ ! -x target/debug/baton ] || [ ! -x target/debug/baton-site ]; then
  step "cargo build --bin baton --bin baton-site"
  cargo build --bin baton --bin baton-site
fi
grpcurl=$(command -v grpcurl || echo "$ROOT/.tools/bin/grpcurl")
[ -x "$grpcurl" ] || fail "grpcurl not found (deploy/install.sh puts it in .tools/bin)"

# Coordinator.
grpc_port=$(free_port)
coordinator=http://127.0.0.1:$grpc_port
step "coordinator: podman run $(image_name coordinator) on 127.0.0.1:$grpc_port"
podman run -d --name "$run_id-coordinator" --network host --read-only \
  -v "$run_id-data:/var/lib/baton" "$(image_name coordinator)" --listen "127.0.0.1:$grpc_port" >/dev/null
health() { "$grpcurl" -plaintext "127.0.0.1:$grpc_port" grpc.health.v1.Health/Check | grep '"SERVING"' >/dev/null; }
wait_for 20 "coordinator health" health
running "$run_id-coordinator" || fail "coordinator container exited"
uid=$(podman top "$run_id-coordinator" huser | tail -n +2 | head -n1 | tr -d ' ')
[ "$uid" = 10001 ] || fail "coordinator runs as uid $uid, not 10001"
echo "    grpc.health.v1.Health/Check: SERVING (uid $uid, read-only root, store on a volume)"

# Agents.
submit() { # NAME IMAGE: spec JSON on stdin, submitted and followed; fails unless the job
  # succeeds on IMAGE's agent
  local name=$1 agent=$run_id-$2 start
  start=$(date +%s)
  timeout 300 target/debug/baton --coordinator "$coordinator" -o json submit --wait - \
    >"$tmp/$name.json" 2>"$tmp/$name.err" ||
    { cat "$tmp/$name.json" "$tmp/$name.err" >&2; fail "job $name"; }
  python3 - "$tmp/$name.json" "$agent" <<'PY' || fail "job $name"
import json, sys
job, agent = json.load(open(sys.argv[1])), sys.argv[2]
assert job["state"] == "JOB_STATE_SUCCEEDED", f"state {job['state']}"
assert job.get("agentId") == agent, f"ran on {job.get('agentId')}, not {agent}"
PY
  echo "    job $name succeeded on $agent in $(($(date +%s) - start)) s"
}
pinned() { # IMAGE [FILE]: the spec (examples/FILE, else a 200 ms sleep) pinned to IMAGE's agent
  python3 - "$1" "${2:-}" "${site:-}" <<'PY'
import json, sys
image, path, site = sys.argv[1:4]
job = json.load(open(path)) if path else {"spec": {"name": "sleep", "sleep": {"durationMs": 200}}}
spec = job["spec"]
spec.setdefault("requirements", {}).setdefault("agentLabels", {})["image"] = image
if "browser" in spec and site:
    spec["browser"]["variables"]["base"] = site
print(json.dumps(job))
PY
}
start_agent() { # IMAGE [podman run options...]: starts the agent, waits for health and registration
  local image=$1 port
  shift
  port=$(free_port)
  step "$image: podman run $(image_name "$image"), metrics on 127.0.0.1:$port"
  podman run -d --name "$run_id-$image" --network host --read-only "$@" "$(image_name "$image")" \
    --coordinator "$coordinator" --metrics-listen "127.0.0.1:$port" \
    --name "$run_id-$image" --label "image=$image" >/dev/null
  wait_for 60 "$image: GET /healthz" curl -fsS "http://127.0.0.1:$port/healthz"
  wait_for 30 "$image: registered with the coordinator" \
    sh -c "target/debug/baton --coordinator $coordinator -o json agents | grep -q '$run_id-$image'"
  running "$run_id-$image" || fail "$image container exited"
  uid=$(podman top "$run_id-$image" huser | tail -n +2 | head -n1 | tr -d ' ')
  [ "$uid" = 10001 ] || fail "$image runs as uid $uid, not 10001"
  echo "    /healthz: 200; registered; uid $uid"
  pinned "$image" | submit "sleep-on-$image" "$image"
}

for image in "${agents[@]}"; do
  case $image in
    agent-cpu)
      start_agent agent-cpu
      pinned agent-cpu examples/gpt2-train.json | submit gpt2-train-on-agent-cpu agent-cpu
      ;;
    agent-cuda)
      # The agent loads libtorch_cuda.so only where it sees an NVIDIA driver: fake one
      # (an empty /dev/nvidiactl) so that it tries, then require that nothing was missing.
      # With no real driver (libcuda.so.1) CUDA stays off and the agent offers its CPU.
      touch "$tmp/nvidiactl"
      start_agent agent-cuda -v "$tmp/nvidiactl:/dev/nvidiactl:ro"
      pid=$(podman inspect -f '{{.State.Pid}}' "$run_id-agent-cuda")
      if podman logs "$run_id-agent-cuda" 2>&1 | grep 'libtorch_cuda.so could not be loaded' >/dev/null ||
        ! grep -q '/opt/baton/lib/libtorch_cuda.so' "/proc/$pid/maps"; then
        fail "agent-cuda: libtorch_cuda.so was not loaded (a CUDA library missing from the image?)"
      fi
      echo "    libtorch_cuda.so loaded with its $(grep -oE '/opt/baton/lib/[^ ]+' "/proc/$pid/maps" | sort -u | wc -l) libraries; no GPU here, so CPU only"
      pinned agent-cuda examples/gpt2-train.json | submit gpt2-train-on-agent-cuda agent-cuda
      ;;
    agent-browser)
      site_port=$(free_port)
      site=http://127.0.0.1:$site_port
      target/debug/baton-site --listen "127.0.0.1:$site_port" >"$tmp/site.log" 2>&1 &
      site_pid=$!
      wait_for 10 "baton-site on $site" curl -fsS "$site/login"
      start_agent agent-browser
      pinned agent-browser examples/browser-login.json | submit browser-login-on-agent-browser agent-browser
      pinned agent-browser examples/desktop-login.json | submit desktop-login-on-agent-browser agent-browser
      # uid 10001: Chromium keeps its sandbox where the runtime lets it make a user namespace.
      echo "    $(podman logs "$run_id-agent-browser" 2>&1 | grep -oE 'Chromium runs with(out)? its sandbox( reason="[^"]*")?' | head -n1)"
      ;;
    *) fail "unknown image $image (agent-cpu agent-cuda agent-browser)" ;;
  esac
done

step "all checks passed; sizes:"
for image in "${images[@]}"; do
  podman images --format "    {{.Repository}}:{{.Tag}}  {{.Size}}" "$(image_name "$image")"
done
