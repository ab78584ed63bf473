#!/usr/bin/env bash
# The Helm chart's pods run for real: helm renders helm/baton (one coordinator on the
# embedded store and its PVC, a CPU and a browser agent pool, the `helm test` pod),
# kube-play.py turns each workload into the pod its controller would create, and
# `podman kube play` runs them from the images build.sh made, on podman's bridge network:
# the coordinator's Service port published on 127.0.0.1, its Service name resolving to the
# coordinator pod. Checks: the coordinator answers gRPC health through the Service port; the
# agent pods register under their pod names with their pools; a job submitted through the
# Service port succeeds on each; the coordinator's metrics show the pools; the `helm test`
# pod's command exits 0. Then the same release under TLS (security.insecure=false, the
# coordinator's certificate and the CPU pool's client certificate from Secrets made with
# openssl, tokens from `baton token`): plaintext is refused, the agent registers as
# cpu/POD under its certificate, a job succeeds through the Service port over TLS with a
# token, and the `helm test` pod passes with its token. Everything is removed at the end,
# also on failure.
#
#   bash deploy/images/kube-play-test.sh      (BATON_IMAGES_REUSE=1: use the images as they are)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/../check.sh"
cd "$ROOT"
if [ "${BATON_IMAGES_REUSE:-0}" != 1 ] || ! podman image exists "$(image_name agent-cpu)"; then
  bash deploy/images/build.sh coordinator agent-cpu agent-browser
fi
CACHE=$(bash deploy/kube-tools.sh | tail -1)
export PATH="$CACHE/bin:$ROOT/.tools/bin:$ROOT/target/debug:$PATH"
PY=$ROOT/.venv/bin/python # with PyYAML (deploy/install.sh)
WORK=$(mktemp -d /tmp/baton-kube-play.XXXXXX)
# The pods' names are fixed by the chart: any left by an earlier, interrupted run go first.
pods=(one-baton-coordinator-0 one-baton-agent-cpu-0 one-baton-agent-desktop-0 one-baton-test-submit)
for pod in "${pods[@]}"; do podman pod rm -f -t 5 "$pod" >/dev/null 2>&1 || true; done
podman volume rm -f data-one-baton-coordinator-0 >/dev/null 2>&1 || true
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
GRPC=$(free_port) METRICS=$(free_port)
URL=http://127.0.0.1:$GRPC

helm template one helm/baton --namespace one --kube-version 1.37.2 --set image.tag="$VERSION" \
  --set-json 'agents.pools=[{"name":"cpu","kind":"cpu","replicas":1,"slots":1},{"name":"desktop","kind":"browser","replicas":1,"slots":1}]' \
  > "$WORK/rendered.yaml" 2>/dev/null
play() { # FILE [CONFIGMAPS]
  podman kube play --network podman ${2:+--configmap "$2"} "$WORK/$1" >/dev/null
}

step "the coordinator pod (StatefulSet one-baton-coordinator, its PVC as a podman volume)"
"$PY" deploy/images/kube-play.py "$WORK" - "$GRPC" "$METRICS" < "$WORK/rendered.yaml"
play coordinator.yaml
eventually 10 '"SERVING"' grpcurl -plaintext "127.0.0.1:$GRPC" grpc.health.v1.Health/Check
expect '"SERVING"' grpcurl -plaintext -d '{"service":"liveness"}' "127.0.0.1:$GRPC" grpc.health.v1.Health/Check
ip=$(podman inspect one-baton-coordinator-0-coordinator --format '{{.NetworkSettings.IPAddress}}')
[ -n "$ip" ] || ip=$(podman pod inspect one-baton-coordinator-0 --format '{{.InfraContainerID}}' | xargs podman inspect --format '{{.NetworkSettings.IPAddress}}')
echo "   SERVING on the Service port $URL (pod IP $ip)"

step "the agent pods (Deployments one-baton-agent-cpu, -desktop), reaching the Service by name"
"$PY" deploy/images/kube-play.py "$WORK" "$ip" "$GRPC" "$METRICS" < "$WORK/rendered.yaml"
play agent-cpu.yaml
play agent-desktop.yaml
for pool in cpu desktop; do
  eventually 60 "one-baton-agent-$pool-0" baton --coordinator "$URL" agents
  echo "   agent one-baton-agent-$pool-0 registered"
done
expect '"pool": "desktop"' baton --coordinator "$URL" -o json agents

step "jobs submitted through the Service port, one pinned to each pool"
for pool in cpu desktop; do
  printf '{"spec":{"name":"on %s","sleep":{"durationMs":100},"requirements":{"agentLabels":{"pool":"%s"}}}}' \
    "$pool" "$pool" > "$WORK/on-$pool.json"
  job=$(baton --coordinator "$URL" -o json submit --wait "$WORK/on-$pool.json")
  expect '"state": "JOB_STATE_SUCCEEDED"' echo "$job"
  expect "\"agentId\": \"one-baton-agent-$pool-0\"" echo "$job"
  echo "   succeeded on one-baton-agent-$pool-0"
done

step "the coordinator's metrics"
expect '^baton_pool_slots\{pool="desktop"\} 1$' curl -sf "http://127.0.0.1:$METRICS/metrics"
expect '^baton_agents\{pool="cpu",status="ready"\} 1$' curl -sf "http://127.0.0.1:$METRICS/metrics"
expect '^baton_jobs_finished_total\{kind="sleep",state="succeeded"\} 2$' curl -sf "http://127.0.0.1:$METRICS/metrics"

step "the helm test pod"
play test.yaml "$WORK/configmaps.yaml"
code=$(podman wait one-baton-test-submit-submit)
podman logs one-baton-test-submit-submit 2>&1 | tail -n 3 | sed 's/^/   /'
[ "$code" = 0 ] || { echo "the helm test pod exited $code"; exit 1; }

step "the same release under TLS: certificates and tokens from Secrets"
for pod in "${pods[@]}"; do podman pod rm -f -t 5 "$pod" >/dev/null 2>&1 || true; done
podman volume rm -f data-one-baton-coordinator-0 >/dev/null 2>&1 || true
S=$WORK/secrets
mkdir -p "$S/one-tls" "$S/cpu-tls" "$S/access" "$S/helm-test"
( cd "$S"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=test-ca -keyout ca-key.pem -out one-tls/ca.crt 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=one-baton-coordinator -keyout one-tls/tls.key -out c.csr 2>/dev/null
  openssl x509 -req -in c.csr -CA one-tls/ca.crt -CAkey ca-key.pem -days 1 -out one-tls/tls.crt 2>/dev/null \
    -extfile <(printf "subjectAltName=DNS:one-baton-coordinator.one.svc,IP:127.0.0.1\nextendedKeyUsage=serverAuth")
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=cpu -keyout cpu-tls/tls.key -out a.csr 2>/dev/null
  openssl x509 -req -in a.csr -CA one-tls/ca.crt -CAkey ca-key.pem -days 1 -out cpu-tls/tls.crt 2>/dev/null \
    -extfile <(printf "extendedKeyUsage=clientAuth")
  { echo "tokens:"
    baton token helm-test --role submit --out helm-test/token
    baton token root --role admin --out root.token; } > access/access.yaml )
helm template one helm/baton --namespace one --kube-version 1.37.2 --set image.tag="$VERSION" \
  --set security.insecure=false --set security.tls.existingSecret=one-tls --set security.accessSecret=access \
  --set security.helmTestTokenSecret=helm-test \
  --set-json 'agents.pools=[{"name":"cpu","kind":"cpu","replicas":1,"slots":1,"clientCertSecret":"cpu-tls"}]' \
  > "$WORK/rendered-tls.yaml" 2>/dev/null
URL=https://127.0.0.1:$GRPC
secure() { baton --coordinator "$URL" --tls-ca "$S/one-tls/ca.crt" --token-file "$S/root.token" "$@"; }
"$PY" deploy/images/kube-play.py "$WORK" - "$GRPC" "$METRICS" "$S" < "$WORK/rendered-tls.yaml"
play coordinator.yaml
eventually 20 'cpu|id' secure agents
if baton --coordinator "http://127.0.0.1:$GRPC" agents >/dev/null 2>&1; then echo "plaintext got in"; exit 1; fi
expect 'unauthenticated' baton --coordinator "$URL" --tls-ca "$S/one-tls/ca.crt" agents
echo "   TLS on the Service port; plaintext and calls without a token refused"
ip=$(podman inspect one-baton-coordinator-0-coordinator --format '{{.NetworkSettings.IPAddress}}')
[ -n "$ip" ] || ip=$(podman pod inspect one-baton-coordinator-0 --format '{{.InfraContainerID}}' | xargs podman inspect --format '{{.NetworkSettings.IPAddress}}')
"$PY" deploy/images/kube-play.py "$WORK" "$ip" "$GRPC" "$METRICS" "$S" < "$WORK/rendered-tls.yaml"
play agent-cpu.yaml
eventually 60 'cpu/one-baton-agent-cpu-0' secure agents
echo "   agent cpu/one-baton-agent-cpu-0 registered under its certificate"
job=$(secure -o json submit --wait "$WORK/on-cpu.json")
expect '"state": "JOB_STATE_SUCCEEDED"' echo "$job"
expect '"agentId": "cpu/one-baton-agent-cpu-0"' echo "$job"
expect '"owner": "root"' echo "$job"
echo "   a job succeeded over TLS, owned by root"
play test.yaml "$WORK/configmaps.yaml"
code=$(podman wait one-baton-test-submit-submit)
podman logs one-baton-test-submit-submit 2>&1 | tail -n 3 | sed 's/^/   /'
[ "$code" = 0 ] || { echo "the helm test pod exited $code under TLS"; exit 1; }
echo "==> kube-play-test passed"
