# Sourced by build.sh and test.sh: the repository root, the version, image names, and a
# podman set up for this kind of machine.
# shellcheck shell=bash
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# The workspace version tags every image.
VERSION=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$ROOT/Cargo.toml")
BASE_IMAGE=localhost/baton-base:bookworm
image_name() { echo "localhost/baton-$1:$VERSION"; } # coordinator | agent-cpu | agent-cuda | agent-browser

# podman on this kind of host (Debian 12's podman 4.3, cgroups v1/hybrid, low hard
# ulimits) runs containers only with runc (crun: "cgroups in hybrid mode not supported")
# and without containers.conf's default ulimits ("setrlimit RLIMIT_NOFILE: Operation not
# permitted"). Rather than edit /etc, write our own containers.conf and point
# CONTAINERS_CONF at it; a CONTAINERS_CONF already set is left alone.
if [ -z "${CONTAINERS_CONF:-}" ]; then
  BATON_CONTAINERS_DIR=$(mktemp -d /tmp/baton-containers.XXXXXX)
  printf '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' \
    > "$BATON_CONTAINERS_DIR/containers.conf"
  export CONTAINERS_CONF=$BATON_CONTAINERS_DIR/containers.conf
fi
