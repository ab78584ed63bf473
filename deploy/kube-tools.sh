#!/usr/bin/env bash
# Builds the real Kubernetes parts the deployment test runs, from the Go module proxy:
# kube-apiserver, kube-controller-manager, kube-scheduler and kubectl (v1.37.2), kwok
# (fake nodes), helm, and fetches KEDA's and cert-manager's CRDs and kwok's stage files.
#
# Everything lands in a cache outside the repository ($BATON_CACHE, default
# ~/.cache/baton/kube-v1.37.2), so a fresh clone reuses it: the first build takes ~10 min
# on 2 cores, later calls return at once. Prints the cache folder on its last line.
set -euo pipefail
K8S=v1.37.2
STAGING=v0.37.2
KWOK=v0.8.0
HELM=v3.22.0
KEDA=v2.21.0
CERT_MANAGER=v1.19.1
CACHE=${BATON_CACHE:-$HOME/.cache/baton}/kube-$K8S
BIN=$CACHE/bin
mkdir -p "$BIN" "$CACHE/kwok-stages" "$CACHE/keda-crds" "$CACHE/cert-manager-crds"
export GOFLAGS=-mod=mod

moddir() { go mod download -json "$1" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p'; }
work=
trap '[ -z "$work" ] || rm -rf "$work"' EXIT
# Each part is redone when its version changes: a stamp file names the version it has.
stale() { [ ! -f "$CACHE/.$1-$2" ]; }
stamp() { rm -f "$CACHE/.$1-"*; touch "$CACHE/.$1-$2"; }

if stale kubernetes "$K8S" || [ ! -x "$BIN/kube-apiserver" ] || [ ! -x "$BIN/kubectl" ]; then
  echo "==> building the Kubernetes $K8S control plane (first time ~10 min on 2 cores)" >&2
  src=$(moddir "k8s.io/kubernetes@$K8S")
  work=$(mktemp -d)
  cp -r "$src/." "$work/"
  chmod -R u+w "$work"
  (
    cd "$work"
    # The module's go.work and vendor/ turn on workspace and vendor modes; drop them and
    # take the staging modules from the proxy at their released versions instead.
    rm -rf go.work go.work.sum vendor
    for m in $(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' go.mod); do
      go mod edit -dropreplace="$m"
      case "$m" in
        k8s.io/sample-cli-plugin | k8s.io/sample-controller) ;;
        *) if grep -q "^\s*$m v0.0.0" go.mod; then go mod edit -require="$m@$STAGING"; fi ;;
      esac
    done
    go mod tidy -e >/dev/null 2>&1
    ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"
    for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
      go build -trimpath -ldflags "$ldflags" -o "$BIN/$cmd" "./cmd/$cmd"
    done
  )
  rm -rf "$work"
  work=
  stamp kubernetes "$K8S"
fi

if stale kwok "$KWOK"; then
  echo "==> go install sigs.k8s.io/kwok/cmd/kwok@$KWOK" >&2
  GOBIN=$BIN go install "sigs.k8s.io/kwok/cmd/kwok@$KWOK"
  dir=$(moddir "sigs.k8s.io/kwok@$KWOK")
  # Nodes turn Ready and keep a heartbeat; pods turn Running; Job pods and helm test hook
  # pods (which kwok's own pod-complete stage does not cover) finish.
  stages() { # the Stage documents of these folders, one YAML stream
    for f in "$@"; do
      if grep -q '^kind: Stage' "$f"; then
        printf -- '---\n'
        cat "$f"
      fi
    done
  }
  stages "$dir/kustomize/stage/node/fast/"*.yaml "$dir/kustomize/stage/node/heartbeat-with-lease/"*.yaml \
    > "$CACHE/kwok-stages/nodes.yaml"
  stages "$dir/kustomize/stage/pod/fast/"*.yaml > "$CACHE/kwok-stages/pods.yaml"
  # kwok completes only Job-owned pods; `helm test` waits for its hook pod to succeed.
  printf -- '---\n' >> "$CACHE/kwok-stages/pods.yaml"
  sed -e 's/name: pod-complete/name: pod-complete-helm-test/' \
      -e "s/key: '.metadata.ownerReferences.\[\].kind'/key: '.metadata.annotations[\"helm.sh\/hook\"]'/" \
      -e "s/- 'Job'/- 'test'/" \
      "$dir/kustomize/stage/pod/fast/pod-complete.yaml" >> "$CACHE/kwok-stages/pods.yaml"
  stamp kwok "$KWOK"
fi

if stale helm "$HELM"; then
  echo "==> go install helm.sh/helm/v3/cmd/helm@$HELM" >&2
  GOBIN=$BIN go install "helm.sh/helm/v3/cmd/helm@$HELM"
  stamp helm "$HELM"
fi

if stale keda "$KEDA"; then
  dir=$(moddir "github.com/kedacore/keda/v2@$KEDA")
  rm -f "$CACHE/keda-crds/"*.yaml
  cp "$dir/config/crd/bases/"*.yaml "$CACHE/keda-crds/"
  chmod u+w "$CACHE/keda-crds/"*.yaml
  stamp keda "$KEDA"
fi

if stale cert-manager "$CERT_MANAGER"; then
  dir=$(moddir "github.com/cert-manager/cert-manager@$CERT_MANAGER")
  rm -f "$CACHE/cert-manager-crds/"*.yaml
  cp "$dir/deploy/crds/cert-manager.io_"*.yaml "$CACHE/cert-manager-crds/"
  chmod u+w "$CACHE/cert-manager-crds/"*.yaml
  stamp cert-manager "$CERT_MANAGER"
fi
echo "$CACHE"
