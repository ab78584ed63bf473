#!/usr/bin/env bash
# Installs everything baton's build, demo and tests need on a fresh Debian 12 machine.
# Idempotent: each step is skipped when its result is already there.
# Tools land in .tools/ (Go binaries, geckodriver) and .venv/ (Python: libtorch, transformers, selenium).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export GOBIN=$ROOT/.tools/bin
mkdir -p "$GOBIN"

need_apt=()
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
command -v firefox-esr >/dev/null || need_apt+=(firefox-esr)
command -v Xvfb >/dev/null || need_apt+=(xvfb)
command -v curl >/dev/null || need_apt+=(curl)
command -v openssl >/dev/null || need_apt+=(openssl) # the test control plane's certificates
command -v prometheus >/dev/null || need_apt+=(prometheus)
# Container images without a Docker engine (deploy/images): podman with runc, debootstrap.
command -v podman >/dev/null || need_apt+=(podman)
command -v runc >/dev/null || need_apt+=(runc)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# geckodriver (Firefox's WebDriver server) from crates.io, into .tools/bin.
if [ ! -x "$GOBIN/geckodriver" ]; then
  echo "==> cargo install geckodriver 0.37.1"
  cargo install geckodriver --locked --version 0.37.1 --root "$ROOT/.tools" --quiet
fi

go_tool() { # name module@version
  if [ ! -x "$GOBIN/$1" ]; then
    echo "==> go install $2"
    go install "$2"
  fi
}
go_tool grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3
# Jaeger's go.mod has replace directives, so `go install pkg@v` refuses it; build it as a
# tool of a throw-away module instead.
if [ ! -x "$GOBIN/jaeger" ]; then
  echo "==> building jaeger v1.76.0 (Jaeger v2) from the Go module proxy"
  tmp=$(mktemp -d)
  (cd "$tmp" && go mod init jaeger-build >/dev/null 2>&1 &&
   go get -tool github.com/jaegertracing/jaeger/cmd/jaeger@v1.76.0 &&
   go build -o "$GOBIN/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger)
  rm -rf "$tmp"
fi

# etcd 3.6 (the store of several coordinators): go.etcd.io/etcd/server/v3 has replace
# directives too, so build etcdmain from a three-line wrapper module.
if [ ! -x "$GOBIN/etcd" ]; then
  echo "==> building etcd v3.6.16 from the Go module proxy"
  tmp=$(mktemp -d)
  (cd "$tmp" && go mod init etcd-build >/dev/null 2>&1 &&
   printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' > main.go &&
   go get go.etcd.io/etcd/server/v3@v3.6.16 && go mod tidy &&
   go build -trimpath -ldflags "-s -w" -o "$GOBIN/etcd" .)
  rm -rf "$tmp"
fi

if [ ! -f .venv/.baton-ready ]; then
  echo "==> python venv .venv (torch 2.11.0, transformers, selenium)"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q torch==2.11.0 transformers safetensors selenium numpy pyyaml
  touch .venv/.baton-ready
fi
# One stable path to libtorch for tch (see .cargo/config.toml).
if [ ! -e .venv/torch ]; then
  ln -s "$(.venv/bin/python -c 'import torch, os; print(os.path.dirname(torch.__file__))')" .venv/torch
fi
echo "==> tools ready"
