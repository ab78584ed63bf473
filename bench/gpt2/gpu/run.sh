#!/usr/bin/env bash
# GPT-2 on an NVIDIA GPU (issue 14), prepared to run in one go on a lent device machine:
# the CUDA image there has torch 2.11.0+cu130 (/opt/torch/.venv) and transformers but no
# Rust toolchain and no network, so the binaries are built here and carried.
#
#   here:   bench/gpt2/gpu/run.sh pack     release build, stripped and packed into .gpu/
#   there:  bench/gpt2/gpu/run.sh check    (device tool: carry [".gpu"], timeout 600 s)
#
# check runs, through a coordinator and an agent on loopback, every spec in this folder
# with bench-gpt2 (baton beside PyTorch eager, fused AdamW, same shapes), one bench-gpt2
# per spec so one failure loses one spec, then the CPU-vs-GPU sweep with its report; the
# figures go to $OUT (bench.txt, sweep.txt, sweep.html, sweep.csv, env.txt).
# `SPECS=dir bench/gpt2/gpu/run.sh check` runs another folder's specs (a rehearsal on a
# CPU machine with CPU-sized copies of these).
set -uo pipefail
cd "$(dirname "$0")/../../.."
root=$PWD
here=bench/gpt2/gpu
specs=${SPECS:-$here}
pack=.gpu

case "${1:-}" in
pack)
  set -e
  export PATH="$root/.venv/bin:$PATH"
  cargo build --release --bins
  rm -rf "$pack" && mkdir -p "$pack/bin"
  for b in baton baton-coordinator baton-agent bench-gpt2; do strip -o "$pack/bin/$b" "target/release/$b"; done
  tar -C "$pack" -cJf "$pack/baton.tar.xz" bin && rm -rf "$pack/bin"
  du -h "$pack/baton.tar.xz"
  ;;
check)
  out=${OUT:-/tmp/gpu-out}
  mkdir -p "$out"
  tar -C "$pack" -xJf "$pack/baton.tar.xz" || exit 1
  # bench-gpt2 runs the reference with this checkout's .venv/bin/python: there, the image's.
  export BATON_WORKSPACE=$root
  if [ ! -e .venv ]; then
    ln -s "$("${PYTHON:-python3}" -c 'import sys; print(sys.prefix)')" .venv
  fi
  [ -x .venv/bin/python ] || { echo ".venv/bin/python is missing: set PYTHON to a venv's python"; exit 1; }
  torch_lib=$(.venv/bin/python -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') || exit 1
  export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  bin=$root/$pack/bin
  {
    date -u
    nvidia-smi || true
    .venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version(), "transformers", transformers.__version__); print([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])'
    nproc; free -g
  } > "$out/env.txt" 2>&1
  cat "$out/env.txt"

  for spec in "$specs"/train-*.json "$specs"/infer-*.json; do
    echo "== $spec" | tee -a "$out/bench.txt"
    timeout 150 "$bin/bench-gpt2" "$(realpath "$spec")" 2>>"$out/log.txt" | tee -a "$out/bench.txt"
    echo "exit ${PIPESTATUS[0]}" | tee -a "$out/bench.txt"
  done

  # The CPU-vs-GPU sweep through a coordinator and an agent started here (as deploy/demo.sh).
  dir=$(mktemp -d)
  export BATON_COORDINATOR=http://127.0.0.1:7070
  "$bin/baton-coordinator" --listen 127.0.0.1:7070 --data-dir "$dir/data" >"$dir/coordinator.log" 2>&1 &
  coordinator=$!
  "$bin/baton-agent" --no-browser >"$dir/agent.log" 2>&1 &
  agent=$!
  for _ in $(seq 300); do "$bin/baton" agents -o json 2>/dev/null | grep -q '"connected": true' && break; sleep 0.1; done
  {
    "$bin/baton" agents
    id=$("$bin/baton" submit "$specs/sweep-cpu-gpu.json" -o json | sed -n 's/^  "id": "\(.*\)",$/\1/p')
    timeout 150 "$bin/baton" watch "$id" >/dev/null
    "$bin/baton" report "$id" --html "$out/sweep.html" --csv "$out/sweep.csv"
  } > "$out/sweep.txt" 2>&1
  cat "$out/sweep.txt"
  tail -n 30 "$dir/agent.log" >> "$out/log.txt"
  kill "$coordinator" "$agent" 2>/dev/null
  wait 2>/dev/null
  ;;
*)
  sed -n '2,/^set/p' "$0" | sed '$d'
  exit 2
  ;;
esac
