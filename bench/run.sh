#!/usr/bin/env bash
# make bench: the fio suite (../shared/bench or BENCH_DIR) on crucible-fuse's disk.img with
# three local downstairs, side by side with the one-file FUSE ceiling, plus the
# losetup + mkfs.ext4 + copy + sync wall time; prints each shape's ratio against
# DESIGN.md's targets. Usage: bench/run.sh [SECONDS_PER_SHAPE] (default 8). Results also
# go to build/bench/results.txt. Needs root (FUSE, loop devices).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bench_dir=${BENCH_DIR:-$root/../shared/bench}
secs=${1:-8}
bin=$root/build/bin
out=$root/build/bench
mkdir -p "$out"
[[ -x $bench_dir/fio-suite.sh ]] || { echo "bench: no fio suite at $bench_dir (set BENCH_DIR)" >&2; exit 1; }

work=$(mktemp -d /tmp/cru-bench.XXXXXX)
ceiling_pid="" fuse_pid="" dsc_pid=""
cleanup() {
  for m in "$work/tree-mnt" "$work/mnt-ceiling" "$work/mnt"; do mountpoint -q "$m" && umount -l "$m"; done
  losetup -j "$work/mnt/disk.img" -O NAME -n 2>/dev/null | xargs -r -n1 losetup -d
  losetup -j "$work/mnt-ceiling/disk.img" -O NAME -n 2>/dev/null | xargs -r -n1 losetup -d
  for p in $fuse_pid $ceiling_pid; do kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  [[ -n $dsc_pid ]] && kill -TERM "$dsc_pid" 2>/dev/null && wait "$dsc_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() {  # seconds, command...: until the command succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@" 2>/dev/null; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# A 300 MB tree of mixed file sizes, the same for both systems.
make_tree() {
  mkdir -p "$work/tree"
  python3 - "$work/tree" <<'PY'
import os, random, sys
random.seed(7)
root, total, i = sys.argv[1], 0, 0
while total < 300 * 2**20:
    d = os.path.join(root, f"d{i // 100}")
    os.makedirs(d, exist_ok=True)
    n = random.choice([4096, 16384, 65536, 1 << 20, 8 << 20])
    with open(os.path.join(d, f"f{i}"), "wb") as f:
        f.write(os.urandom(n))
    total += n; i += 1
PY
}

copy_tree_seconds() {  # disk.img -> seconds for losetup + mkfs.ext4 + mount + cp + sync + umount
  local img=$1 start dev
  start=$(date +%s.%N)
  dev=$(losetup -f --show "$img") || return 1
  mkfs.ext4 -q -F "$dev" && mkdir -p "$work/tree-mnt" && mount "$dev" "$work/tree-mnt" &&
    cp -r "$work/tree" "$work/tree-mnt/" && sync && umount "$work/tree-mnt"
  local rc=$?
  losetup -d "$dev"
  ((rc == 0)) || return 1
  python3 -c "print(round($(date +%s.%N) - $start, 2))"
}

echo "bench: building the FUSE ceiling and a 300 MB tree"
gcc -O2 "$bench_dir/fuse-onefile.c" -o "$out/fuse-onefile" $(pkg-config --cflags --libs fuse3) || exit 1
make_tree

# --- the ceiling: one FUSE file over a local file
mkdir -p "$work/mnt-ceiling"
truncate -s 1G "$work/backing.img"
"$out/fuse-onefile" "$work/backing.img" "$work/mnt-ceiling" &
ceiling_pid=$!
wait_for 10 test -e "$work/mnt-ceiling/disk.img" || { echo "bench: the ceiling did not mount" >&2; exit 1; }
"$bench_dir/fio-suite.sh" "$work/mnt-ceiling/disk.img" ceiling "$secs" | tee "$work/ceiling.txt"
ceiling_tree=$(copy_tree_seconds "$work/mnt-ceiling/disk.img")
echo "ceiling tree-copy seconds=$ceiling_tree"
umount "$work/mnt-ceiling"; wait "$ceiling_pid"; ceiling_pid=""

# --- crucible: three downstairs on loopback, 1 GiB
"$bin/crucible-dsc" create --dir "$work/var" --count 3 --size 1G > /dev/null || exit 1
base=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1] // 10 * 10 % 50000 + 10000)')
"$bin/crucible-dsc" start --dir "$work/var" --port-base "$base" > "$work/dsc.log" 2>&1 &
dsc_pid=$!
cat > "$work/crucible.yaml" <<YAML
volume:
  targets: ["127.0.0.1:$base", "127.0.0.1:$((base + 10))", "127.0.0.1:$((base + 20))"]
log:
  level: warn
YAML
mkdir -p "$work/mnt"
"$bin/crucible-fuse" -c "$work/crucible.yaml" "$work/mnt" -f > "$work/fuse.out" 2> "$work/fuse.log" &
fuse_pid=$!
wait_for 60 grep -q "is ready" "$work/fuse.out" || { echo "bench: crucible-fuse did not mount:" >&2; cat "$work/fuse.log" >&2; exit 1; }
"$bench_dir/fio-suite.sh" "$work/mnt/disk.img" crucible "$secs" | tee "$work/crucible.txt"
crucible_tree=$(copy_tree_seconds "$work/mnt/disk.img")
echo "crucible tree-copy seconds=$crucible_tree"

# --- ratios against DESIGN.md section 9
python3 - "$work/ceiling.txt" "$work/crucible.txt" "$ceiling_tree" "$crucible_tree" <<'PY' | tee "$out/results.txt"
import sys, re
def load(p):
    r = {}
    for line in open(p):
        f = line.split()
        if len(f) < 5: continue
        kv = dict(x.split("=") for x in f[2:])
        r[f[1]] = kv
    return r
c, x = load(sys.argv[1]), load(sys.argv[2])
targets = {"randwrite4k-qd32": ("iops", 0.5), "randread4k-qd32": ("iops", 0.5), "seqwrite1m-qd8": ("MiBps", 0.5),
           "seqread1m-qd8": ("MiBps", 0.6), "write4k-fsync-qd1": ("iops", 0.5)}
print(f"{'shape':<20} {'ceiling':>10} {'crucible':>10} {'ratio':>6} {'target':>7}  p99 us (crucible)")
for shape, (key, target) in targets.items():
    if shape not in c or shape not in x: print(f"{shape:<20} missing"); continue
    a, b = float(c[shape][key]), float(x[shape][key])
    ratio = b / a if a else 0
    print(f"{shape:<20} {a:>10.0f} {b:>10.0f} {ratio:>6.2f} {'>=' + str(target):>7}  {x[shape]['p99us']}  {'ok' if ratio >= target else 'BELOW'} ({key})")
ct, xt = float(sys.argv[3] or 0), float(sys.argv[4] or 0)
if ct and xt:
    print(f"{'tree copy 300MB':<20} {ct:>9.1f}s {xt:>9.1f}s {xt/ct:>6.2f} {'<=1.5':>7}  {'ok' if xt/ct <= 1.5 else 'ABOVE'} (wall time)")
PY
