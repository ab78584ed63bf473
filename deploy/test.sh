#!/usr/bin/env bash
# Runs every test of baton on a fresh machine: installs what is missing (deploy/install.sh),
# builds the binaries the end-to-end tests start, then runs all unit and end-to-end tests
# (real gRPC, grpcurl, Jaeger, Chromium + chromedriver, Xvfb, libtorch).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo build --bins"
cargo build --workspace --bins
echo "==> cargo test"
cargo test --workspace
