# Sourced by the deployment test scripts: small checks that read a command's whole output
# (no `cmd | grep -q`: grep quitting early kills the writer with SIGPIPE, which pipefail
# turns into a failure).
# shellcheck shell=bash

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# expect PATTERN COMMAND...: the command's output (stdout and stderr) matches the ERE.
expect() {
  local pattern=$1 out
  shift
  out=$("$@" 2>&1) || true
  grep -qE -- "$pattern" <<< "$out" || { echo "expected /$pattern/ from: $*"; echo "$out"; return 1; }
}

# eventually SECONDS PATTERN COMMAND...: expect, retried every 0.2 s for up to SECONDS.
eventually() {
  local deadline=$((SECONDS + $1)) pattern=$2
  shift 2
  until expect "$pattern" "$@" >/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || { expect "$pattern" "$@"; return 1; }
    sleep 0.2
  done
}
