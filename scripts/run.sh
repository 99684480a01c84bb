#!/usr/bin/env bash
# make run: three local downstairs under crucible-dsc (regions in var/, kept between
# runs) and the volume mounted at ./mnt/disk.img with etc/crucible.yaml. Mutual TLS by
# default: the first run makes a throw-away CA and certificates in var/tls (crucible-dsc
# create --tls), the downstairs use them and the mount gets var/crucible.yaml (the example
# plus volume.tls). Ctrl-C unmounts (after a final flush) and stops everything.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=build/bin
var=var
mnt=mnt
config=etc/crucible.yaml

if [[ $(id -u) -ne 0 && ! -w /dev/fuse ]]; then
  echo "make run: needs /dev/fuse (run as root, or be in a group that can open it)" >&2
  exit 1
fi
if mountpoint -q "$mnt" 2>/dev/null; then
  echo "make run: $mnt is already mounted (another make run?); unmount it first: umount $mnt" >&2
  exit 1
fi

if [[ ! -e $var/0/region.json ]]; then
  echo "make run: creating three regions in $var/ (1 GiB each, 4 KiB blocks) and TLS certificates"
  "$bin/crucible-dsc" create --dir "$var" --count 3 --tls || exit 1
fi
if [[ -e $var/tls/ca.pem ]]; then
  # The example config plus the upstairs's certificate (crucible-dsc start finds the
  # downstairs' certificates in $var/tls itself).
  tls="  tls: { cert: $var/tls/upstairs.pem, key: $var/tls/upstairs-key.pem, ca: $var/tls/ca.pem }"
  sed "/^volume:/a\\$tls" "$config" >"$var/crucible.yaml" || exit 1
else
  echo "make run: $var/ was made without TLS certificates: plain TCP (remove $var/ for TLS)" >&2
  cp "$config" "$var/crucible.yaml" || exit 1
fi
# Prometheus metrics (docs/observability.md; etc/prometheus.yml scrapes these): the volume
# on :9810, the downstairs on :9811, :9821, :9831.
printf 'metrics:\n  listen: 127.0.0.1:9810\n' >>"$var/crucible.yaml" || exit 1
config=$var/crucible.yaml
mkdir -p "$mnt"

dsc_pid="" fuse_pid="" fuse_rc=0
cleanup() {
  trap - INT TERM EXIT
  # The volume first, so its final flush reaches the downstairs; then the downstairs.
  if [[ -n $fuse_pid ]] && kill -0 "$fuse_pid" 2>/dev/null; then
    if losetup -j "$PWD/$mnt/disk.img" 2>/dev/null | grep -q .; then
      echo "make run: a loop device still uses $mnt/disk.img; it will see IO errors:" >&2
      losetup -j "$PWD/$mnt/disk.img" >&2
    fi
    kill -TERM "$fuse_pid" 2>/dev/null
    wait "$fuse_pid" 2>/dev/null
    fuse_rc=$?
    ((fuse_rc == 0)) || echo "make run: crucible-fuse's final flush or unmount failed (status $fuse_rc)" >&2
  fi
  if [[ -n $dsc_pid ]] && kill -0 "$dsc_pid" 2>/dev/null; then
    kill -TERM "$dsc_pid" 2>/dev/null
    wait "$dsc_pid" 2>/dev/null
  fi
  echo "make run: stopped; the data stays in $var/ (run again to remount it)"
}
trap cleanup EXIT
# Ctrl-C is the normal way to stop: exit 0 if everything stopped cleanly.
trap 'cleanup; exit $fuse_rc' INT TERM

# Own sessions: Ctrl-C reaches this script only, which stops them in the right order.
setsid "$bin/crucible-dsc" start --dir "$var" --port-base 3810 --metrics-port-base 9811 &
dsc_pid=$!
setsid "$bin/crucible-fuse" -c "$config" "$mnt" --foreground &
fuse_pid=$!

cat <<INFO
make run: mounting $mnt/disk.img (replicas on 127.0.0.1:3810, :3820, :3830; config $config).
  In another shell, once it says "ready":
    dev=\$(losetup -f --show $mnt/disk.img)
    mkfs.ext4 \$dev && mkdir -p /tmp/vol && mount \$dev /tmp/vol
    cp -r /usr/share/doc /tmp/vol/ && umount /tmp/vol && losetup -d \$dev
  Watch it:           build/bin/crucible-fuse status -c $config
  Metrics:            curl -s 127.0.0.1:9810/metrics (a Prometheus: prometheus --config.file=etc/prometheus.yml)
  Kill a replica:     build/bin/crucible-dsc kill-random --dir $var   (start it: crucible-dsc start N --dir $var)
  Ctrl-C here unmounts and stops everything.
INFO
wait "$fuse_pid"
rc=$?
fuse_pid=""
[[ $rc -eq 0 ]] || echo "make run: crucible-fuse exited with status $rc" >&2
exit "$rc"
