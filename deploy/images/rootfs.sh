#!/bin/sh
# rootfs.sh DEST ELF... — runs in the build stage (FROM localhost/baton-base:bookworm) and
# lays out under DEST the smallest root file system the ELF files run in: the system
# libraries `ldd` says they load (from this Debian base, not from the build machine),
# /etc/passwd and /etc/group with the user baton (uid/gid 10001), the CA bundle, /tmp
# (1777) and /var/lib/baton (owned by baton). Libraries under /ctx (libtorch, CUDA: the
# caller copies those itself) are left out; LD_LIBRARY_PATH must point at them so ldd
# resolves their own system dependencies.
set -eu
dest=$1
shift
mkdir -p "$dest/etc/ssl/certs" "$dest/tmp" "$dest/var/lib/baton" "$dest/usr/local/bin" "$dest/opt/baton/lib"
chmod 1777 "$dest/tmp"
chown 10001:10001 "$dest/var/lib/baton"
printf 'root:x:0:0:root:/root:/sbin/nologin\nbaton:x:10001:10001:baton:/tmp:/sbin/nologin\n' > "$dest/etc/passwd"
printf 'root:x:0:\nbaton:x:10001:\n' > "$dest/etc/group"
cp /etc/ssl/certs/ca-certificates.crt "$dest/etc/ssl/certs/"
for elf in "$@"; do
  # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
  out=$(ldd "$elf")
  # libcuda.so.1 and libnvidia-ml.so.1 come from the NVIDIA driver on the host at run time.
  if printf '%s\n' "$out" | grep 'not found' | grep -qvE '^[[:space:]]*(libcuda\.so\.1|libnvidia-ml\.so\.1) '; then
    printf '%s: missing libraries:\n%s\n' "$elf" "$out" >&2
    exit 1
  fi
  printf '%s\n' "$out" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
done | sort -u | grep -v '^/ctx/' | while read -r lib; do
  cp -L --parents "$lib" "$dest/"
done
