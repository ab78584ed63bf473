#!/bin/sh
# The browser agent's entrypoint: starts Xvfb on :99 (headed browsers and desktop input
# draw there), waits for its socket, then runs the agent on that display. Arguments are
# passed on to baton-agent. BATON_DESKTOP_INPUT=0 turns off desktop steps (OS keyboard
# and mouse); the display is the container's own, so they are on by default.
set -eu
display=${BATON_XVFB_DISPLAY:-:99}
Xvfb "$display" -screen 0 "${BATON_XVFB_SCREEN:-1920x1080x24}" -nolisten tcp -nolisten unix-abstract \
  >/tmp/xvfb.log 2>&1 &
socket=/tmp/.X11-unix/X${display#:}
i=0
until [ -S "$socket" ]; do
  i=$((i + 1))
  if [ "$i" -gt 100 ] || ! kill -0 $! 2>/dev/null; then
    echo "Xvfb did not start on $display:" >&2
    cat /tmp/xvfb.log >&2
    exit 1
  fi
  sleep 0.1
done
desktop_input=${BATON_DESKTOP_INPUT:-1}
for arg in "$@"; do
  [ "$arg" != --desktop-input ] || desktop_input=0 # given already (clap refuses it twice)
done
set -- --display "$display" "$@"
if [ "$desktop_input" = 1 ]; then
  set -- --desktop-input "$@"
fi
exec /usr/local/bin/baton-agent "$@"
