#!/usr/bin/env bash
# Tests the Helm chart against a real Kubernetes control plane on loopback: etcd,
# kube-apiserver, kube-controller-manager and kube-scheduler (v1.37.2, built by
# deploy/kube-tools.sh), with fake nodes from kwok (a CPU, a GPU and a browser node).
#
# Checks: helm lint; bad values refused by the schema with the field named; helm install
# --wait of the default values (embedded store on a PVC); helm upgrade to every agent pool
# kind with KEDA on (KEDA's CRDs installed from its module); helm test; a second release
# with 3 coordinators on the chart's etcd; every object the API server accepted; uninstall.
#
# kwok runs no containers: pods turn Running and Ready by its stages, and `helm test`'s
# pod "succeeds" when it is scheduled. What runs for real is tested by
# deploy/images/test.sh (the images under podman). Stops everything it started on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source deploy/check.sh
[ -x .tools/bin/etcd ] || bash deploy/install.sh
CACHE=$(bash deploy/kube-tools.sh | tail -1)
export PATH="$CACHE/bin:$ROOT/.tools/bin:$ROOT/target/debug:$PATH"
WORK=$(mktemp -d /tmp/baton-kube.XXXXXX)
PIDS=()
cleanup() {
  status=$?
  set +e
  shopt -s nullglob
  # The control plane holds nothing worth a graceful stop (kube-apiserver takes minutes).
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$status" -ne 0 ]; then
    for log in "$WORK"/*.log; do echo "---- tail of $log"; grep -v 'stats.go\|checker.go' "$log" | tail -n 15; done
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'echo "FAILED at line $LINENO: $BASH_COMMAND"' ERR
step() { echo "==> $*"; }
ETCD_PORT=$(free_port) ETCD_PEER=$(free_port) API_PORT=$(free_port) CM_PORT=$(free_port) SCHED_PORT=$(free_port) KWOK_PORT=$(free_port)

step "certificates"
(
  cd "$WORK"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=baton-test-ca -keyout ca.key -out ca.crt 2>/dev/null
  sign() { # name subject [san]
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
    if [ -n "${3:-}" ]; then printf 'subjectAltName=%s\n' "$3" > "$1.ext"; else : > "$1.ext"; fi
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  }
  sign apiserver /CN=kube-apiserver "IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc"
  sign admin "/O=system:masters/CN=admin"
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
)
export KUBECONFIG=$WORK/kubeconfig
kubectl config set-cluster test --server="https://127.0.0.1:$API_PORT" --certificate-authority="$WORK/ca.crt" --embed-certs >/dev/null
kubectl config set-credentials admin --client-certificate="$WORK/admin.crt" --client-key="$WORK/admin.key" --embed-certs >/dev/null
kubectl config set-context test --cluster=test --user=admin >/dev/null
kubectl config use-context test >/dev/null

step "control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok"
etcd --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-cluster "default=http://127.0.0.1:$ETCD_PEER" \
  > "$WORK/etcd.log" 2>&1 &
PIDS+=($!)
kube-apiserver --etcd-servers="http://127.0.0.1:$ETCD_PORT" --bind-address=127.0.0.1 --secure-port="$API_PORT" \
  --advertise-address=127.0.0.1 --endpoint-reconciler-type=none --service-cluster-ip-range=10.96.0.0/16 \
  --tls-cert-file="$WORK/apiserver.crt" --tls-private-key-file="$WORK/apiserver.key" --client-ca-file="$WORK/ca.crt" \
  --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$WORK/sa.pub" \
  --service-account-signing-key-file="$WORK/sa.key" --authorization-mode=Node,RBAC --allow-privileged=true \
  > "$WORK/kube-apiserver.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 120); do kubectl get --raw /readyz >/dev/null 2>&1 && break; sleep 0.5; done
kubectl get --raw /readyz >/dev/null
kube-controller-manager --kubeconfig="$KUBECONFIG" --leader-elect=false --bind-address=127.0.0.1 \
  --secure-port="$CM_PORT" --service-account-private-key-file="$WORK/sa.key" --root-ca-file="$WORK/ca.crt" \
  --cluster-signing-cert-file="$WORK/ca.crt" --cluster-signing-key-file="$WORK/ca.key" \
  > "$WORK/kube-controller-manager.log" 2>&1 &
PIDS+=($!)
kube-scheduler --kubeconfig="$KUBECONFIG" --leader-elect=false --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" \
  > "$WORK/kube-scheduler.log" 2>&1 &
PIDS+=($!)
kwok --kubeconfig="$KUBECONFIG" --manage-all-nodes=false \
  --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake --server-address="127.0.0.1:$KWOK_PORT" \
  --config="$CACHE/kwok-stages/nodes.yaml" --config="$CACHE/kwok-stages/pods.yaml" \
  > "$WORK/kwok.log" 2>&1 &
PIDS+=($!)

step "fake nodes (cpu, gpu with 8 × nvidia.com/gpu, browser), a default StorageClass and volumes"
for spec in "cpu-0:cpu:0" "gpu-0:gpu:8" "browser-0:browser:0"; do
  IFS=: read -r node pool gpus <<< "$spec"
  taint=""
  [ "$pool" = gpu ] && taint='taints: [{key: nvidia.com/gpu, value: "true", effect: NoSchedule}]'
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $node
  annotations: {kwok.x-k8s.io/node: fake}
  labels: {kubernetes.io/hostname: $node, type: kwok, baton.dev/node-pool: $pool$([ "$pool" = gpu ] && echo ", nvidia.com/gpu.product: NVIDIA-H200")}
spec:
  $taint
status:
  allocatable: {cpu: "16", memory: 64Gi, pods: "110", nvidia.com/gpu: "$gpus"}
  capacity: {cpu: "16", memory: 64Gi, pods: "110", nvidia.com/gpu: "$gpus"}
EOF
done
kubectl apply -f - >/dev/null <<'EOF'
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: Immediate
EOF
for i in $(seq 0 9); do
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-$i}
spec:
  capacity: {storage: 2Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: local
  hostPath: {path: /tmp/baton-kube-pv-$i}
EOF
done
kubectl wait --for=condition=Ready node --all --timeout=60s >/dev/null

step "KEDA's and cert-manager's CRDs"
kubectl apply --server-side -f "$CACHE/keda-crds/" -f "$CACHE/cert-manager-crds/" >/dev/null
for _ in $(seq 60); do kubectl get scaledobjects.keda.sh,certificates.cert-manager.io -A >/dev/null 2>&1 && break; sleep 0.5; done
kubectl get scaledobjects.keda.sh,certificates.cert-manager.io -A >/dev/null

CHART=helm/baton
step "helm lint"
helm lint "$CHART" --strict
helm lint "$CHART" --strict -f deploy/kube-test-values.yaml

step "bad values are refused, naming the field and the rule"
refused() { # expected-text helm-args...
  local expected=$1; shift
  if out=$(helm template bad "$CHART" --kube-version 1.37.2 "$@" 2>&1); then
    echo "accepted, but should not be: $*"; exit 1
  fi
  if ! grep -qF -- "$expected" <<< "$out"; then
    echo "refused without saying '$expected': $*"; echo "$out"; exit 1
  fi
  echo "   refused ($*): $(grep -F -- "$expected" <<< "$out" | head -1 | sed 's/^ *//')"
}
refused "/agents/pools/0/kind" --set 'agents.pools[0].name=x,agents.pools[0].kind=tpu,agents.pools[0].replicas=1,agents.pools[0].slots=1'
refused "/agents/pools/0/slots" --set 'agents.pools[0].name=x,agents.pools[0].kind=cpu,agents.pools[0].replicas=1,agents.pools[0].slots=0'
refused "/agents/pools/0/name" --set 'agents.pools[0].name=Bad_Name,agents.pools[0].kind=cpu,agents.pools[0].replicas=1,agents.pools[0].slots=1'
refused "/coordinator/store" --set coordinator.store=postgres
refused "/coordinator/leaseTimeout" --set coordinator.leaseTimeout=ten
refused "additional properties 'replica'" --set coordinator.replica=2
refused "coordinator.replicas: the embedded store allows one coordinator" --set coordinator.replicas=3
refused "etcd.endpoints: store etcd with etcd.deploy=false needs the endpoints" --set coordinator.store=etcd --set etcd.deploy=false
refused "/keda/cooldownPeriod" --set keda.cooldownPeriod=7200
refused "security.insecure: false needs security.tls" --set security.insecure=false
refused "agents.pools[0].clientCertSecret: pool cpu needs a client certificate" --set security.tls.existingSecret=tls --set security.helmTestTokenSecret=t
refused "security.helmTestTokenSecret: helm test needs a token" --set security.tls.existingSecret=tls \
  --set-json 'agents.pools=[{"name":"cpu","kind":"cpu","replicas":1,"slots":1,"clientCertSecret":"c"}]'
refused "/security/tls/certManager/issuerKind" --set security.tls.certManager.issuerKind=Vault
refused "/agents/pools/0/data/0/mountPath" --set-json 'agents.pools=[{"name":"c","kind":"cpu","replicas":1,"slots":1,"data":[{"name":"m","mountPath":"models","volume":{"emptyDir":{}}}]}]'

pods_ready() { # namespace selector count
  for _ in $(seq 60); do
    n=$(kubectl get pods -n "$1" -l "$2" -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true)
    [ "$n" -eq "$3" ] && return 0
    sleep 1
  done
  echo "expected $3 ready pods for $2 in $1"; kubectl get pods -n "$1" -o wide; exit 1
}

step "helm install (default values: one coordinator on the embedded store, one CPU agent)"
helm install one "$CHART" --namespace one --create-namespace --wait --timeout 120s >/dev/null
pods_ready one app.kubernetes.io/component=coordinator 1
pods_ready one app.kubernetes.io/component=agent 1
[ "$(kubectl get pvc -n one -o jsonpath='{.items[0].status.phase}')" = Bound ]
expect '^/readyz$' kubectl get -n one statefulset/one-baton-coordinator -o jsonpath='{.spec.template.spec.containers[0].readinessProbe.httpGet.path}'
expect '--insecure' kubectl get -n one statefulset/one-baton-coordinator -o jsonpath='{.spec.template.spec.containers[0].args}'
kubectl get -n one pdb one-baton-coordinator >/dev/null
expect 'baton-fleet' kubectl get -n one configmap -l grafana_dashboard=1 -o name

step "helm test"
helm test one --namespace one --timeout 60s

step "helm upgrade: every pool kind (cpu, gpu, browser) and KEDA autoscaling"
helm upgrade one "$CHART" --namespace one -f deploy/kube-test-values.yaml --wait --timeout 120s >/dev/null
pods_ready one baton.dev/pool=cpu 2
pods_ready one baton.dev/pool=h200 1
pods_ready one baton.dev/pool=desktop 1
gpu_node=$(kubectl get pods -n one -l baton.dev/pool=h200 -o jsonpath='{.items[0].spec.nodeName}')
[ "$gpu_node" = gpu-0 ] || { echo "the GPU agent landed on $gpu_node, not the GPU node"; exit 1; }
expect '"nvidia.com/gpu":"1"' kubectl get -n one deploy/one-baton-agent-h200 -o jsonpath='{.spec.template.spec.containers[0].resources.limits}'
# The two autoscaled pools have a ScaledObject (and no replicas of their own); cpu keeps 2.
scaled=$(kubectl get scaledobjects.keda.sh -n one -o name | sort | tr '\n' ' ')
[ "$scaled" = "scaledobject.keda.sh/one-baton-agent-desktop scaledobject.keda.sh/one-baton-agent-h200 " ]
expect '^2$' kubectl get -n one deploy/one-baton-agent-cpu -o jsonpath='{.spec.replicas}'
expect '--data-root=/models' kubectl get -n one deploy/one-baton-agent-cpu -o jsonpath='{.spec.template.spec.containers[0].args}'
expect '"mountPath":"/models","name":"data-models","readOnly":true' kubectl get -n one deploy/one-baton-agent-cpu -o jsonpath='{.spec.template.spec.containers[0].volumeMounts}'
expect 'pool_kind="gpu",pool=~"h200\\|"' kubectl get -n one scaledobject/one-baton-agent-h200 -o jsonpath='{.spec.triggers[0].metadata.query}'
helm test one --namespace one --timeout 60s
expect '2 .*deployed' helm history one --namespace one

step "helm install: three coordinators on the chart's etcd, sealing secrets with a key from a Secret; TLS from cert-manager, tokens from a Secret"
kubectl create namespace ha >/dev/null
kubectl create secret generic baton-secrets-key -n ha --from-literal=secrets.key="$(head -c32 /dev/urandom | base64)" >/dev/null
{ echo "tokens:"; baton token helm-test --role submit --out "$WORK/helm-test.token"; } > "$WORK/access.yaml"
kubectl create secret generic baton-access -n ha --from-file=access.yaml="$WORK/access.yaml" >/dev/null
kubectl create secret generic baton-helm-test -n ha --from-file=token="$WORK/helm-test.token" >/dev/null
helm install ha "$CHART" --namespace ha --set coordinator.store=etcd --set coordinator.replicas=3 \
  --set coordinator.secretsKey.existingSecret=baton-secrets-key --set security.insecure=false \
  --set security.tls.certManager.issuerName=baton-ca --set security.accessSecret=baton-access \
  --set security.helmTestTokenSecret=baton-helm-test --wait --timeout 120s >/dev/null
pods_ready ha app.kubernetes.io/component=coordinator 3
pods_ready ha app.kubernetes.io/component=etcd 3
expect '--store=etcd' kubectl get -n ha statefulset/ha-baton-coordinator -o jsonpath='{.spec.template.spec.containers[0].args}'
expect '--secrets-key-file=/etc/baton/secrets/secrets.key' kubectl get -n ha statefulset/ha-baton-coordinator -o jsonpath='{.spec.template.spec.containers[0].args}'
expect 'baton-secrets-key' kubectl get -n ha statefulset/ha-baton-coordinator -o jsonpath='{.spec.template.spec.volumes}'
args() { kubectl get -n ha "$1" -o jsonpath='{.spec.template.spec.containers[0].args}'; }
for flag in --tls-cert=/etc/baton/tls/tls.crt --client-ca=/etc/baton/tls/ca.crt --access-file=/etc/baton/access/access.yaml \
  'advertise-url=https://\$\(POD_NAME\)\.ha-baton-coordinator-headless\.ha\.svc:7070'; do
  expect "$flag" args statefulset/ha-baton-coordinator
done
case "$(args statefulset/ha-baton-coordinator)" in *--insecure*) echo "--insecure under TLS"; exit 1 ;; esac
for flag in --coordinator=https://ha-baton-coordinator.ha.svc:7070 '--name=cpu/\$\(POD_NAME\)' --tls-cert=/etc/baton/tls/tls.crt --tls-ca=/etc/baton/ca/ca.crt; do
  expect "$flag" args deploy/ha-baton-agent-cpu
done
# Agents get the coordinator's CA only, never its key.
expect '"items":\[{"key":"ca.crt","path":"ca.crt"}\],"secretName":"ha-baton-coordinator-tls"' kubectl get -n ha deploy/ha-baton-agent-cpu -o jsonpath='{.spec.template.spec.volumes}'
expect 'ha-baton-agent-cpu ' kubectl get -n ha certificates.cert-manager.io -o custom-columns=NAME:.metadata.name,CN:.spec.commonName --no-headers
expect 'ha-baton-coordinator .*ha-baton-coordinator-tls' kubectl get -n ha certificates.cert-manager.io -o custom-columns=NAME:.metadata.name,SECRET:.spec.secretName --no-headers

step "helm uninstall"
helm uninstall ha --namespace ha --wait >/dev/null
helm uninstall one --namespace one --wait >/dev/null
echo "==> kube-test passed"
