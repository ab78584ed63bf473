#!/usr/bin/env bash
# The Helm chart's pods run for real: helm renders helm/baton with its default values (one
# coordinator on the embedded store and its PVC, one CPU agent pool, the `helm test` pod),
# kube-play.py turns each workload into the pod its controller would create, and
# `podman kube play` runs them from the images build.sh made, on podman's bridge network:
# the coordinator's Service port published on 127.0.0.1, its Service name resolving to the
# coordinator pod. Checks: the coordinator answers gRPC health through the Service port; the
# agent pod registers under its pod name with pool=cpu; a job submitted through the Service
# port succeeds on it; the coordinator's metrics show the pool; the `helm test` pod's command
# exits 0. Everything is removed at the end, also on failure.
#
#   bash deploy/images/kube-play-test.sh      (BATON_IMAGES_REUSE=1: use the images as they are)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
if [ "${BATON_IMAGES_REUSE:-0}" != 1 ] || ! podman image exists "$(image_name agent-cpu)"; then
  bash deploy/images/build.sh coordinator agent-cpu
fi
CACHE=$(bash deploy/kube-tools.sh | tail -1)
export PATH="$CACHE/bin:$ROOT/.tools/bin:$ROOT/target/debug:$PATH"
PY=$ROOT/.venv/bin/python # has PyYAML (a dependency of transformers)
WORK=$(mktemp -d /tmp/baton-kube-play.XXXXXX)
pods=()
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    for pod in "${pods[@]}"; do
      for c in $(podman pod inspect "$pod" --format '{{range .Containers}}{{.Name}} {{end}}' 2>/dev/null); do
        echo "--- logs of $c" >&2
        podman logs --tail 20 "$c" >&2 2>&1 || true
      done
    done
  fi
  for pod in "${pods[@]}"; do podman pod rm -f -t 5 "$pod" >/dev/null 2>&1 || true; done
  podman volume rm -f data-one-baton-coordinator-0 >/dev/null 2>&1 || true
  rm -rf "$WORK" "${BATON_CONTAINERS_DIR:-}"
  exit $rc
}
trap cleanup EXIT
trap 'echo "FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR
step() { echo "==> $*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GRPC=$(free_port) METRICS=$(free_port)
URL=http://127.0.0.1:$GRPC

helm template one helm/baton --namespace one --kube-version 1.37.2 --set image.tag="$VERSION" \
  > "$WORK/rendered.yaml" 2>/dev/null
play() { # FILE: plays it, remembers its pods
  podman kube play --network podman ${2:+--configmap "$2"} "$WORK/$1" >/dev/null
  pods+=($("$PY" -c 'import sys,yaml; [print(d["metadata"]["name"]) for d in yaml.safe_load_all(open(sys.argv[1])) if d["kind"]=="Pod"]' "$WORK/$1"))
}

step "the coordinator pod (StatefulSet one-baton-coordinator, its PVC as a podman volume)"
"$PY" deploy/images/kube-play.py "$WORK" - "$GRPC" "$METRICS" < "$WORK/rendered.yaml"
play coordinator.yaml
for _ in $(seq 50); do grpcurl -plaintext "127.0.0.1:$GRPC" grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING && break; sleep 0.2; done
grpcurl -plaintext "127.0.0.1:$GRPC" grpc.health.v1.Health/Check | grep -q SERVING
ip=$(podman inspect one-baton-coordinator-0-coordinator --format '{{.NetworkSettings.IPAddress}}')
[ -n "$ip" ] || ip=$(podman pod inspect one-baton-coordinator-0 --format '{{.InfraContainerID}}' | xargs podman inspect --format '{{.NetworkSettings.IPAddress}}')
echo "   SERVING on the Service port $URL (pod IP $ip)"

step "the agent pod (Deployment one-baton-agent-cpu) and the helm test pod, reaching the Service by name"
"$PY" deploy/images/kube-play.py "$WORK" "$ip" "$GRPC" "$METRICS" < "$WORK/rendered.yaml"
play agent-cpu.yaml
for _ in $(seq 100); do baton --coordinator "$URL" agents 2>/dev/null | grep -q one-baton-agent-cpu-0 && break; sleep 0.2; done
baton --coordinator "$URL" -o json agents | grep -q '"pool": "cpu"'
echo "   agent one-baton-agent-cpu-0 registered with pool=cpu"

step "a job submitted through the Service port"
job=$(baton --coordinator "$URL" -o json submit --wait examples/hello.json)
grep -q '"state": "JOB_STATE_SUCCEEDED"' <<< "$job"
grep -q '"agentId": "one-baton-agent-cpu-0"' <<< "$job"
echo "   succeeded on one-baton-agent-cpu-0"

step "the coordinator's metrics"
metrics=$(curl -sf "http://127.0.0.1:$METRICS/metrics")
grep -q '^baton_agents{pool="cpu",status="ready"} 1$' <<< "$metrics"
grep -q '^baton_jobs_finished_total{kind="sleep",state="succeeded"} 1$' <<< "$metrics"

step "the helm test pod"
play test.yaml "$WORK/configmaps.yaml"
code=$(podman wait one-baton-test-submit-submit)
podman logs one-baton-test-submit-submit 2>&1 | tail -n 3 | sed 's/^/   /'
[ "$code" = 0 ] || { echo "the helm test pod exited $code"; exit 1; }
echo "==> kube-play-test passed"
