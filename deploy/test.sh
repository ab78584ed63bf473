#!/usr/bin/env bash
# Runs every test of baton on a fresh machine: installs what is missing (deploy/install.sh),
# builds the binaries the end-to-end tests start, then runs all unit and end-to-end tests
# (real gRPC, grpcurl, Jaeger, Prometheus, Chromium + chromedriver, Xvfb, libtorch, and the
# Helm chart on a real Kubernetes control plane), and each fuzz target for 20 s.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh
# The Kubernetes control plane, kwok and helm for the chart's test: built once (~10 min on
# 2 cores), then cached in ~/.cache/baton.
bash deploy/kube-tools.sh >/dev/null
export PATH="$PWD/.venv/bin:$PATH"
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo build --bins"
cargo build --workspace --bins
echo "==> container images (deploy/images/build.sh: release binaries, podman)"
bash deploy/images/build.sh
echo "==> cargo test"
# The deployment tests (a Kubernetes control plane, podman containers with Chromium and
# libtorch) would load both cores while the fault tests time leases of 2 s: they run after
# the others, one at a time.
cargo test --workspace -- --skip kube::
echo "==> cargo test: the deployment (tests/e2e/kube.rs)"
cargo test -p baton-tests --test e2e -- kube:: --test-threads=1
echo "==> fuzz (deploy/fuzz.sh: 20 s per target)"
bash deploy/fuzz.sh 20
