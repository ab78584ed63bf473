#!/usr/bin/env bash
# Runs every fuzz target (tests/fuzz: spec JSON and YAML, the browser's URL policy, the
# agent stream) for SECONDS each (default 20; CI), starting from its corpus
# tests/fuzz/corpus/TARGET (read only: new finds go to a temporary folder). A crash fails
# the run; libFuzzer leaves the input under tests/fuzz/artifacts/TARGET — add it to the
# corpus once fixed.
#
#   bash deploy/fuzz.sh [SECONDS]      (cargo-fuzz is installed from crates.io if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
each=${1:-20}
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# libFuzzer's instrumentation needs nightly flags: the nightly toolchain when there is
# one, else the stable compiler with its unstable features unlocked.
case "$(rustup toolchain list 2>/dev/null)" in
  *nightly*) toolchain=(+nightly) ;;
  *) toolchain=(); export RUSTC_BOOTSTRAP=1 ;;
esac
targets=(spec_json spec_yaml url_policy agent_stream)
cargo "${toolchain[@]}" fuzz build --fuzz-dir tests/fuzz --sanitizer none
for target in "${targets[@]}"; do
  work=$(mktemp -d)
  echo "==> fuzz $target for ${each}s"
  if ! cargo "${toolchain[@]}" fuzz run --fuzz-dir tests/fuzz --sanitizer none "$target" "$work" "tests/fuzz/corpus/$target" \
    -- -max_total_time="$each" -max_len=4096 -print_final_stats=1 > "$work.log" 2>&1; then
    tail -n 40 "$work.log"
    echo "fuzz target $target failed (its input is under tests/fuzz/artifacts/$target)"
    exit 1
  fi
  echo "   $(sed -n "s/^stat::number_of_executed_units: *//p" "$work.log") runs, $(ls "$work" | wc -l) new inputs, no crash"
  rm -rf "$work" "$work.log"
done
