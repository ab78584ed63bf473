#!/usr/bin/env bash
# Builds baton's container images without a Docker engine (podman/buildah only), from a
# Debian 12 base made here with debootstrap, since no base image can be pulled:
#
#   bash deploy/images/build.sh [coordinator] [agent-cpu] [agent-cuda] [agent-browser]
#
# (all four without arguments) → localhost/baton-base:bookworm (made once, then reused),
# localhost/baton-{coordinator,agent-cpu,agent-cuda,agent-browser}:VERSION (the workspace
# version). Steps:
#  1. the base: `debootstrap --variant=minbase bookworm` + ca-certificates, from the Debian
#     mirror this machine's apt uses, trimmed (no apt lists or caches, no docs or man
#     pages, also for packages installed later) and `podman import`ed; skipped when the
#     image exists (`podman rmi localhost/baton-base:bookworm` to remake it).
#  2. the binaries, built here with cargo in release: the Containerfiles copy them
#     instead of compiling in a stage (the base has no Rust toolchain; see
#     Containerfile.coordinator). BATON_IMAGES_NO_CARGO=1 takes target/release as it is.
#  3. a build context in target/images/context: the binaries with debug info stripped,
#     and hard links to the libtorch/CUDA libraries that ldd says they load.
#  4. `podman build` of each Containerfile (runc, host network for apt; see lib.sh).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
trap 'rm -rf "${BATON_CONTAINERS_DIR:-}"' EXIT
HERE=deploy/images
CTX=$ROOT/target/images/context
# The PyTorch wheel's site-packages (deploy/install.sh links .venv/torch to its torch folder).
SITE=$(dirname "$(realpath "$ROOT/.venv/torch")")
export PATH="$ROOT/.venv/bin:$PATH"

images=("$@")
[ ${#images[@]} -gt 0 ] || images=(coordinator agent-browser agent-cpu agent-cuda)
wants() { local i; for i in "${images[@]}"; do [ "$i" = "$1" ] && return 0; done; return 1; }
for i in "${images[@]}"; do
  [ -f "$HERE/Containerfile.$i" ] || { echo "no image $i (coordinator agent-cpu agent-cuda agent-browser)" >&2; exit 2; }
done
# The CUDA image is the CPU image plus the CUDA libraries: build that first, always (its
# layers are cached), so the CUDA image never inherits an older agent.
if wants agent-cuda && ! wants agent-cpu; then
  images=(agent-cpu "${images[@]}")
fi

step() { echo "==> [${SECONDS} s] $*"; }

# 1. The Debian base.
if podman image exists "$BASE_IMAGE"; then
  step "$BASE_IMAGE exists; reusing it"
else
  # The mirror this machine's apt uses (one-line or deb822 sources), else Debian's CDN.
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -v '^[[:space:]]*#' | grep -oE 'https?://[^ ]+/debian/?( |$)' | tr -d ' ' | sed 's:/$::' | head -n1 || true)
  mirror=${DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}
  security=${DEBIAN_SECURITY_MIRROR:-${mirror}-security}
  step "debootstrap --variant=minbase bookworm from $mirror"
  rootfs=$(mktemp -d /var/tmp/baton-base.XXXXXX)
  trap 'rm -rf "$rootfs" "${BATON_CONTAINERS_DIR:-}"' EXIT
  debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 ||
    { tail -20 "$rootfs.log" >&2; exit 1; }
  rm -f "$rootfs.log"
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
    "$mirror" "$mirror" "$security" >"$rootfs/etc/apt/sources.list"
  # Later apt installs (the browser image) leave out docs, man pages, translations, and
  # recommended packages. Copyright files stay.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/baton-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
CFG
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$rootfs/etc/apt/apt.conf.d/90baton-slim"
  find "$rootfs/usr/share/doc" -type f ! -name copyright -delete
  rm -rf "$rootfs"/usr/share/{man,info,locale}/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* "$rootfs/etc/hostname" "$rootfs/etc/resolv.conf"
  step "podman import → $BASE_IMAGE"
  tar --numeric-owner -C "$rootfs" -c . |
    podman import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
      --change 'LABEL baton.image=base' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
fi

# 2. Binaries. The browser-only agent first: cargo keeps both feature sets' builds, and
# switching back to the default features only re-links target/release/baton-agent.
mkdir -p "$CTX/bin"
if wants agent-browser; then
  if [ "${BATON_IMAGES_NO_CARGO:-0}" != 1 ]; then
    step "cargo build --release -p baton-agent --no-default-features --features browser"
    cargo build --release -p baton-agent --no-default-features --features browser
    strip --strip-debug -o "$CTX/bin/baton-agent-browser" target/release/baton-agent
  fi
  [ -x "$CTX/bin/baton-agent-browser" ] || { echo "no browser-only agent in $CTX/bin; run without BATON_IMAGES_NO_CARGO" >&2; exit 1; }
fi
# Coordinator and agent are always built together: cargo unifies the features of the
# packages built at once, so building them apart would compile a second set of crates.
if wants coordinator || wants agent-cpu || wants agent-cuda; then
  if [ "${BATON_IMAGES_NO_CARGO:-0}" != 1 ]; then
    step "cargo build --release -p baton-coordinator -p baton-agent -p baton"
    cargo build --release -p baton-coordinator -p baton-agent -p baton
  fi
  if wants coordinator; then
    strip --strip-debug -o "$CTX/bin/baton-coordinator" target/release/baton-coordinator
    # The CLI too: `helm test` and `kubectl exec` use it from this image.
    strip --strip-debug -o "$CTX/bin/baton" target/release/baton
  fi
  if wants agent-cpu || wants agent-cuda; then
    strip --strip-debug -o "$CTX/bin/baton-agent" target/release/baton-agent
  fi
fi
cp "$HERE/rootfs.sh" "$HERE/entrypoint-browser.sh" "$CTX/"

# 3. The libtorch libraries, picked with ldd from the PyTorch wheel in .venv. LIBPATH is
# every library folder of the wheel and its CUDA packages. A library with a static symbol
# table (libtorch_cpu: 88 of its 451 MB, libtorch_cuda 68 MB, NCCL 26 MB) is copied with
# `strip --strip-unneeded`, as Debian ships its libraries (the dynamic symbols stay); the
# others are hard links (no copy on disk).
LIBPATH=$SITE/torch/lib$(printf ':%s' "$SITE"/nvidia/*/lib)
# Supplied by the NVIDIA driver on the host at run time, never shipped in an image.
DRIVER_LIBS='^(libcuda\.so\.1|libnvidia-ml\.so\.1)$'
venv_libs() { # ELF... → "name path" of each wheel library they load (transitively)
  LD_LIBRARY_PATH=$LIBPATH ldd "$@" | awk -v site="$SITE" -v driver="$DRIVER_LIBS" '
    /not found/ && $1 !~ driver { print "missing " $1; next }
    $2 == "=>" && index($3, site) == 1 { print $1 " " $3 }' | sort -u
}
fill() { # DIR: makes DIR hold exactly the "name path" lines on stdin (kept when up to date)
  local dir=$1 name path src
  mkdir -p "$dir"
  : >"$dir.list"
  while read -r name path; do
    [ "$name" != missing ] || { echo "ldd: $path not found" >&2; exit 1; }
    echo "$name" >>"$dir.list"
    src=$(realpath "$path")
    [ "$dir/$name" -nt "$src" ] && continue
    rm -f "$dir/$name"
    if readelf -SW "$src" | grep '\.symtab' >/dev/null; then # (no grep -q: SIGPIPE + pipefail)
      strip --strip-unneeded -o "$dir/$name" "$src" # newer than $src: reused next time
    else
      ln "$src" "$dir/$name" 2>/dev/null || cp -p "$src" "$dir/$name"
    fi
  done
  for path in "$dir"/*; do
    grep -qxF "$(basename "$path")" "$dir.list" || rm -f "$path"
  done
  rm -f "$dir.list"
}
if wants agent-cpu || wants agent-cuda; then
  step "libtorch libraries (ldd of baton-agent)"
  venv_libs target/release/baton-agent | fill "$CTX/lib-cpu"
fi
if wants agent-cuda; then
  step "CUDA libraries (ldd of libtorch_cuda.so, cuDNN's sub-libraries, NVRTC)"
  # libtorch_cuda.so: the agent dlopens it; its closure covers cuBLAS, cuSPARSE, cuFFT,
  # cuRAND, NCCL, cuDNN's front library... Loaded later by name, so not in any ldd:
  # cuDNN's engines (libcudnn_*.so.9), and NVRTC (libcaffe2_nvrtc.so → libnvrtc.so.13,
  # its builtins) for the kernels libtorch compiles at run time. Left out: cuSOLVER and
  # libtorch_cuda_linalg.so (linear-algebra ops only), cuFFTW, nvBLAS, profiling libs.
  extra=("$SITE"/torch/lib/libtorch_cuda.so "$SITE"/torch/lib/libcaffe2_nvrtc.so
    "$SITE"/nvidia/cudnn/lib/libcudnn*.so.* "$SITE"/nvidia/cu13/lib/libnvrtc.so.*
    "$SITE"/nvidia/cu13/lib/libnvrtc-builtins.so.*)
  {
    venv_libs "${extra[@]}"
    for f in "${extra[@]}"; do echo "$(basename "$f") $f"; done
  } | sort -u | while read -r name path; do
    [ -e "$CTX/lib-cpu/$name" ] || echo "$name $path"
  done | fill "$CTX/lib-cuda"
fi

# 4. The images.
for image in coordinator agent-browser agent-cpu agent-cuda; do
  wants "$image" || continue
  step "podman build $(image_name "$image")"
  version_arg=()
  [ "$image" != agent-cuda ] || version_arg=(--build-arg "VERSION=$VERSION") # FROM agent-cpu:VERSION
  start=$(date +%s)
  podman build --runtime runc --network host ${version_arg[@]+"${version_arg[@]}"} \
    --label "baton.image=$image" --label "org.opencontainers.image.version=$VERSION" \
    -f "$HERE/Containerfile.$image" -t "$(image_name "$image")" "$CTX"
  echo "    $(image_name "$image") built in $(($(date +%s) - start)) s"
done
# The build stages' leftovers (untagged images from our base, nobody else's).
podman image prune -f --filter label=baton.image >/dev/null
step "done"
podman images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep 'localhost/baton-'
