#!/usr/bin/env bash
# make chaos: the end-to-end fault loop of issue 6. Three small regions under
# crucible-dsc (free ports), crucible-fuse mounting their volume, and fio writing and
# verifying disk.img (O_DIRECT, crc32c, periodic fsync) in rounds while one downstairs
# at a time is killed and restarted (--mode kill), SIGSTOPped and resumed (--mode stop), or
# cut off for a moment (--mode replay: the upstairs must replay, never fault).
# After each fault the next waits until `crucible-fuse status` shows the three replicas
# active again. At the end: a verify-only fio pass over the last round's data, a clean
# unmount (exit 0), the supervisor stopped, and the three regions compared (extent
# metadata with `crucible-downstairs dump`, every block's data, every block's hash).
#
#   scripts/chaos.sh [--seconds N] [--mode kill|stop|replay] [--tls] [--dir D] [--keep]
#
# --seconds   how long faults are injected (default $CHAOS_SECONDS or 600)
# --mode      kill: `crucible-dsc kill N`, 1-3 s later `crucible-dsc start N` (default);
#             stop: SIGSTOP the downstairs, SIGCONT 2-7 s later;
#             replay: its connection is reset (an nftables `reject with tcp reset` rule on
#             its port, both ways, in a table of this run's own) for 0.5-2 s, with the
#             workload rate-limited so the jobs held meanwhile stay within the replay
#             limits: every outage must end in a replay (the downstairs's replay counter
#             goes up, its fault counter does not), or the run fails
# --tls       mutual TLS everywhere: crucible-dsc create --tls makes a throw-away CA and
#             certificates, the downstairs (and their repairs) and the mount use them
# --dir D     work in D (created if absent; must not hold regions); default: a temp dir
# --keep      keep the work dir (regions, logs, config) for inspection
# Environment: CRUCIBLE_BIN (default build/bin), CHAOS_CONVERGE_SECONDS (default 180): how
# long the replicas may take to return to active after a fault before the run fails.
# Exit 0 only if every check passed. Mounts, processes and (unless --keep) files are
# cleaned up on every exit path.
set -uo pipefail
# Background jobs get their own process groups, so they can be stopped as a whole.
set -m

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${CRUCIBLE_BIN:-$root/build/bin}
seconds=${CHAOS_SECONDS:-600}
mode=kill
dir=""
keep=0
tls=0
converge_s=${CHAOS_CONVERGE_SECONDS:-180}

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --seconds) seconds=${2:-}; shift 2 ;;
    --mode) mode=${2:-}; shift 2 ;;
    --dir) dir=${2:-}; shift 2 ;;
    --keep) keep=1; shift ;;
    --tls) tls=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "chaos: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || { echo "chaos: --seconds '$seconds' is not a number > 0" >&2; exit 2; }
[[ $mode == kill || $mode == stop || $mode == replay ]] ||
  { echo "chaos: --mode '$mode': expected kill, stop or replay" >&2; exit 2; }
[[ $converge_s =~ ^[0-9]+$ ]] || { echo "chaos: CHAOS_CONVERGE_SECONDS '$converge_s' is not a number" >&2; exit 2; }
bin=$(cd "$bin" 2>/dev/null && pwd) || { echo "chaos: CRUCIBLE_BIN ${CRUCIBLE_BIN:-build/bin}: no such directory (make first)" >&2; exit 2; }
for p in crucible-dsc crucible-downstairs crucible-fuse; do
  [[ -x $bin/$p ]] || { echo "chaos: $bin/$p is missing (make first)" >&2; exit 2; }
done
for p in fio python3 mountpoint cmp; do
  command -v "$p" >/dev/null || { echo "chaos: $p is not installed (make deps)" >&2; exit 2; }
done
# Debian's python3 when present: a version-manager shim can take seconds per start, and
# the status is read every half second.
py=python3
[[ -x /usr/bin/python3 ]] && py=/usr/bin/python3
[[ -w /dev/fuse ]] || { echo "chaos: needs /dev/fuse (run as root)" >&2; exit 2; }
if [[ $mode == replay ]]; then
  command -v nft >/dev/null || { echo "chaos: --mode replay needs nft (make deps)" >&2; exit 2; }
fi

# ---- geometry and workload ------------------------------------------------------------------
# 64 extents of 1 MiB: big enough for many extents to differ after a fault, small enough
# that a full live repair takes seconds.
block_size=4096
extent_blocks=256
extent_count=64
size_bytes=$((block_size * extent_blocks * extent_count))
# Small admission limits so a stopped replica is faulted after seconds of fio, not minutes.
jobs_limit=400
bytes_limit=16MiB
fio_rate=()
round_bytes=$size_bytes  # what one fio round writes and verifies
if [[ $mode == replay ]]; then
  # The defaults: an Offline replica is faulted beyond 1000 held jobs or 50 MiB. At 3 MiB/s
  # of writes (about 100 a second) an outage of 2 s plus the reconnect backoff it grows
  # (refused attempts at 0.1, 0.3, 0.7, 1.5 s, the next at 3.1 s) holds some 500 jobs and
  # 15 MiB: replayable however the outage falls. Reads are not limited: each goes to one
  # replica, never one that is offline, so none is held for it. (A limit in IO/s would not
  # do: with --bsrange fio paces it as if every IO were of the largest size.)
  jobs_limit=1500
  bytes_limit=75MiB
  fio_rate=(--rate=,3m)
  # Finished jobs are kept for replay until a flush completes on all three; past 64 MiB of
  # them a barrier retires them instead, and until the next flush does, an outage cannot be
  # replayed (the upstairs faults it, as designed). Reads count too, and a round's verify
  # pass reads without flushing: 16 MiB rounds keep the previous round's reads, this one's
  # and an outage's writes (3 MiB/s) well under 64 MiB.
  round_bytes=$((16 << 20))
fi
# replay mode: this run's own nftables table (deleted on every exit path).
nft_table=cruchaos$$
nft_made=0

created_dir=0
if [[ -n $dir ]]; then
  [[ -e $dir ]] || created_dir=1
  mkdir -p "$dir" || exit 2
  work=$(cd "$dir" && pwd)
  [[ ! -e $work/regions ]] || { echo "chaos: $work/regions exists; pick an empty --dir" >&2; exit 2; }
else
  work=$(mktemp -d /tmp/cru-chaos.XXXXXX) || exit 2
  created_dir=1
fi
regions=$work/regions
mnt=$work/mnt
config=$work/crucible.yaml
stop_file=$work/workload.stop
seed_file=$work/workload.seed

dsc_pid="" fuse_pid="" load_pid="" stopped_pid=""
failed=0
fail() {
  echo "chaos: FAIL: $*" >&2
  failed=1
}

# Waits up to $2 seconds for pid $1 (our child) to exit; its exit code, or 255 on timeout.
wait_exit() {
  local pid=$1 deadline=$((SECONDS + $2))
  while kill -0 "$pid" 2>/dev/null && [[ $SECONDS -lt $deadline ]]; do sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && return 255
  wait "$pid"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -n $stopped_pid ]] && kill -CONT "$stopped_pid" 2>/dev/null
  ((nft_made)) && nft delete table inet "$nft_table" 2>/dev/null
  if [[ -n $load_pid ]] && kill -0 "$load_pid" 2>/dev/null; then
    touch "$stop_file"
    kill -TERM -- "-$load_pid" 2>/dev/null
    wait_exit "$load_pid" 30 >/dev/null || kill -KILL -- "-$load_pid" 2>/dev/null
  fi
  if [[ -n $fuse_pid ]] && kill -0 "$fuse_pid" 2>/dev/null; then
    kill -TERM "$fuse_pid" 2>/dev/null
    if ! wait_exit "$fuse_pid" 90 >/dev/null && kill -0 "$fuse_pid" 2>/dev/null; then
      kill -KILL "$fuse_pid" 2>/dev/null
      wait "$fuse_pid" 2>/dev/null
    fi
  fi
  if mountpoint -q "$mnt" 2>/dev/null; then
    echo "chaos: removing a stale mount on $mnt" >&2
    umount -l "$mnt" 2>/dev/null || fusermount3 -uz "$mnt" 2>/dev/null
  fi
  if [[ -n $dsc_pid ]] && kill -0 "$dsc_pid" 2>/dev/null; then
    kill -TERM "$dsc_pid" 2>/dev/null
    if ! wait_exit "$dsc_pid" 30 >/dev/null && kill -0 "$dsc_pid" 2>/dev/null; then
      kill -KILL -- "-$dsc_pid" 2>/dev/null
      wait "$dsc_pid" 2>/dev/null
    fi
  fi
  if [[ $keep -eq 1 ]]; then
    echo "chaos: kept $work (regions, logs, config)"
  elif [[ $created_dir -eq 1 ]]; then
    rm -rf "$work"
  else
    # Only what this script made: D may hold other files.
    rm -rf "$regions" "$mnt" "$config" "$stop_file" "$seed_file" "$seed_file.next" "$work"/mnt.sock \
      "$work"/status.json "$work"/{chaos,create,dsc,fuse,workload}.log "$work"/fio.*.out "$work"/dump.out \
      "$work"/verify.[012].out
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'fail "interrupted"; exit 130' INT TERM

# Prints the tail of the logs that explain a failure, then exits 1.
die() {
  fail "$*"
  for f in chaos.log fuse.log dsc.log workload.log; do
    [[ -s $work/$f ]] || continue
    echo "---- last lines of $f" >&2
    tail -n 25 "$work/$f" >&2
  done
  exit 1
}

status_json() { "$bin/crucible-fuse" status --json -c "$config" 2>/dev/null; }

# Exit 0 if the volume and all three downstairs are active; prints their states.
all_active() {
  status_json | "$py" -c '
import json, sys
try:
    s = json.load(sys.stdin)
except ValueError:
    print("no status"); sys.exit(1)
states = [d["state"] for d in s["downstairs"]]
print(s["state"] + ": " + ", ".join(states))
sys.exit(0 if s["state"] == "active" and all(x == "active" for x in states) else 1)'
}

# Waits (bounded by $converge_s) until all three are active again.
wait_all_active() {
  local deadline=$((SECONDS + converge_s)) seen
  while :; do
    seen=$(all_active) && return 0
    [[ $SECONDS -ge $deadline ]] && { echo "$seen"; return 1; }
    kill -0 "$fuse_pid" 2>/dev/null || { echo "crucible-fuse exited"; return 1; }
    sleep 0.5
  done
}

dsc() { "$bin/crucible-dsc" "$@" --dir "$regions"; }

# Timestamped events in WORK/chaos.log, for reading a failure against fuse.log.
event() { echo "$(date +%H:%M:%S.%3N) $*" >>"$work/chaos.log"; }

# ---- start ----------------------------------------------------------------------------------
# await_line LOG TEXT PID NAME WHAT: until LOG has TEXT; fails if PID (NAME) exits or 60 s pass.
await_line() {
  local deadline=$((SECONDS + 60))
  until grep -q "$2" "$1"; do
    kill -0 "$3" 2>/dev/null || die "$4 exited before $5"
    [[ $SECONDS -lt $deadline ]] || die "waited 60 s for $5"
    sleep 0.2
  done
}
echo "chaos: $mode mode for ${seconds} s in $work (binaries: $bin)$( ((tls)) && echo ", mutual TLS")"
tls_create=() tls_yaml=""
if ((tls)); then
  tls_create=(--tls)
  tls_yaml="  tls: { cert: $regions/tls/upstairs.pem, key: $regions/tls/upstairs-key.pem, ca: $regions/tls/ca.pem }"
fi
dsc create "${tls_create[@]}" --count 3 --block-size "$block_size" --extent-size "$extent_blocks" \
  --extent-count "$extent_count" >"$work/create.log" 2>&1 || { cat "$work/create.log" >&2; die "crucible-dsc create failed"; }
"$bin/crucible-dsc" start --dir "$regions" --port-base 0 >"$work/dsc.log" 2>&1 &
dsc_pid=$!
await_line "$work/dsc.log" "supervising 3 downstairs" "$dsc_pid" "crucible-dsc start" "all three downstairs listen"
mapfile -t targets < <(dsc status | sed -n 's/^downstairs [0-9]*: \([0-9.]*:[0-9]*\) running .*/\1/p')
[[ ${#targets[@]} -eq 3 ]] || die "could not read three addresses from crucible-dsc status"

mkdir -p "$mnt"
cat >"$config" <<EOF
# written by scripts/chaos.sh
volume:
  targets: ["${targets[0]}", "${targets[1]}", "${targets[2]}"]
  generation: auto
  flush_timeout_ms: 500
  limits: { jobs_in_flight: $jobs_limit, bytes_in_flight: $bytes_limit }
$tls_yaml
mount:
  path: $mnt
log:
  level: info
EOF
"$bin/crucible-fuse" -c "$config" -f >"$work/fuse.log" 2>&1 &
fuse_pid=$!
await_line "$work/fuse.log" "disk.img is ready" "$fuse_pid" "crucible-fuse" "the mount"
echo "chaos: mounted $mnt/disk.img ($((size_bytes >> 20)) MiB) on ${targets[*]}"

# ---- workload -------------------------------------------------------------------------------
# One round writes the whole file (replay mode: its first 16 MiB) in random order (4-64
# KiB, 16 in flight, fsync every 32 writes) and then reads every block back checking its
# crc32c. Rounds differ by seed; the last one's seed is kept for the final verify-only pass.
fio_job=(--name=chaos "--filename=$mnt/disk.img" "--size=$round_bytes" --rw=randwrite
  --bsrange=4k-64k --direct=1 --ioengine=libaio --iodepth=16 --fsync=32
  --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 --group_reporting
  "${fio_rate[@]}")
workload() {
  local round=0
  while [[ ! -e $stop_file ]]; do
    round=$((round + 1))
    echo "$round" >"$seed_file.next"
    if ! fio "${fio_job[@]}" "--randseed=$round" --output-format=terse >"$work/fio.$round.out" 2>&1; then
      echo "workload: fio round $round FAILED:"
      cat "$work/fio.$round.out"
      return 1
    fi
    mv "$seed_file.next" "$seed_file"
    echo "workload: round $round ok"
    rm -f "$work/fio.$round.out"
  done
}
workload >"$work/workload.log" 2>&1 &
load_pid=$!

# ---- faults ---------------------------------------------------------------------------------
# replay mode: "REPLAYS FAULTS" of downstairs $1 from the status.
ds_counters() {
  status_json | "$py" -c '
import json, sys
d = json.load(sys.stdin)["downstairs"][int(sys.argv[1])]
print(d["replays"], d["faults"])' "$1"
}
# replay mode: resets every packet to or from port $1 (both ways, so neither end keeps the
# connection) until cut_off_end. The resets themselves pass: a rule that rejected them
# would swallow them, and the connection would only stall.
cut_off() {
  nft add table inet "$nft_table" && nft_made=1 &&
    nft add chain inet "$nft_table" out '{ type filter hook output priority 0; }' &&
    nft add rule inet "$nft_table" out tcp dport "$1" tcp flags '& rst == 0' reject with tcp reset &&
    nft add rule inet "$nft_table" out tcp sport "$1" tcp flags '& rst == 0' reject with tcp reset
}
cut_off_end() { nft delete table inet "$nft_table" && nft_made=0; }
# replay mode: waits up to 15 s until downstairs $1 is no longer active; prints its state.
wait_ds_down() {
  local deadline=$((SECONDS + 15)) state
  while :; do
    state=$(status_json | "$py" -c 'import json, sys; print(json.load(sys.stdin)["downstairs"][int(sys.argv[1])]["state"])' "$1")
    [[ -n $state && $state != active ]] && { echo "$state"; return 0; }
    [[ $SECONDS -ge $deadline ]] && { echo "${state:-no status}"; return 1; }
    sleep 0.2
  done
}
faults=0
replayed=0
start_s=$SECONDS
end_s=$((SECONDS + seconds))
while [[ $SECONDS -lt $end_s ]]; do
  kill -0 "$load_pid" 2>/dev/null || break  # the workload failed: stop and report
  n=$((RANDOM % 3))
  event "fault $((faults + 1)): $mode downstairs $n"
  if [[ $mode == kill ]]; then
    dsc kill "$n" >/dev/null || die "crucible-dsc kill $n failed"
    sleep $((1 + RANDOM % 3))
    event "start downstairs $n"
    dsc start "$n" >/dev/null || die "crucible-dsc start $n failed"
  elif [[ $mode == replay ]]; then
    read -r replays_before faults_before < <(ds_counters "$n") || die "no status before fault $((faults + 1))"
    port=${targets[$n]##*:}
    cut_off "$port" || die "nft: could not cut off port $port"
    # The reset needs a packet: IO or, at the latest, the next ping (every 5 s).
    seen=$(wait_ds_down "$n") || die "downstairs $n was still active 15 s after its port was cut off: $seen"
    event "downstairs $n is $seen"
    outage=(0.5 1 1.5 2)
    sleep "${outage[RANDOM % 4]}"
    event "connection of downstairs $n restored"
    cut_off_end || die "nft: could not delete table $nft_table"
  else
    pid=$(dsc status | sed -n "s/^downstairs $n: .* running pid \([0-9]*\) .*/\1/p")
    [[ -n $pid ]] || die "downstairs $n is not running"
    stopped_pid=$pid
    kill -STOP "$pid" || die "SIGSTOP $pid failed"
    sleep $((2 + RANDOM % 6))
    event "SIGCONT downstairs $n (pid $pid)"
    kill -CONT "$pid" || die "SIGCONT $pid failed"
    stopped_pid=""
  fi
  faults=$((faults + 1))
  event "waiting for all active"
  seen=$(wait_all_active) || die "after fault $faults (downstairs $n) the replicas did not all return to active within $converge_s s: $seen"
  event "all active"
  if [[ $mode == replay ]]; then
    read -r replays_after faults_after < <(ds_counters "$n") || die "no status after fault $((faults))"
    [[ $faults_after -eq $faults_before ]] ||
      die "outage $faults of downstairs $n (within the replay limits) made the upstairs fault it"
    [[ $replays_after -gt $replays_before ]] ||
      die "outage $faults of downstairs $n: no replay (replays $replays_before -> $replays_after)"
    replayed=$((replayed + 1))
    event "downstairs $n replayed (replays $replays_before -> $replays_after)"
  fi
  sleep 1  # a quiet spell between faults
done
fault_s=$((SECONDS - start_s))

touch "$stop_file"
wait_exit "$load_pid" 600
load_rc=$?
load_pid=""
rounds=$(cat "$seed_file" 2>/dev/null || echo 0)
[[ $load_rc -eq 0 ]] || die "the fio workload failed (exit $load_rc): $(grep -m1 -i 'err\|fail' "$work/workload.log")"
[[ $rounds -gt 0 ]] || die "no fio round completed"

seen=$(wait_all_active) || die "after the last fault the replicas did not all return to active: $seen"
if ! fio "${fio_job[@]}" "--randseed=$rounds" --verify_only >"$work/fio.verify.out" 2>&1; then
  cat "$work/fio.verify.out" >&2
  die "the final fio verify of round $rounds failed"
fi
status_json >"$work/status.json" || die "crucible-fuse status failed"

# ---- shut down and compare ------------------------------------------------------------------
kill -TERM "$fuse_pid"
wait_exit "$fuse_pid" 90
fuse_rc=$?
fuse_pid=""
[[ $fuse_rc -eq 0 ]] || die "crucible-fuse exited with $fuse_rc after SIGTERM"
mountpoint -q "$mnt" && die "$mnt is still mounted after crucible-fuse exited"
kill -TERM "$dsc_pid"
wait_exit "$dsc_pid" 60
dsc_rc=$?
dsc_pid=""
[[ $dsc_rc -eq 0 ]] || die "crucible-dsc exited with $dsc_rc after SIGTERM"

if ! "$bin/crucible-downstairs" dump -d "$regions/0" -d "$regions/1" -d "$regions/2" --only-diffs >"$work/dump.out" 2>&1; then
  cat "$work/dump.out" >&2
  die "crucible-downstairs dump: the regions differ"
fi
# dump compares extent metadata; the data must agree as well, block for block.
data_bytes=$((block_size * extent_blocks))
diff_extents=0
while IFS= read -r rel; do
  for r in 1 2; do
    if ! cmp -s -n "$data_bytes" "$regions/0/$rel" "$regions/$r/$rel"; then
      echo "chaos: extent file $rel: data of region $r differs from region 0" >&2
      diff_extents=$((diff_extents + 1))
    fi
  done
done < <(cd "$regions/0" && find . -type f -path './[0-9A-F][0-9A-F]/*' ! -name '*.*' | sort)
[[ $diff_extents -eq 0 ]] || die "$diff_extents extent files hold different data"
for r in 0 1 2; do
  "$bin/crucible-downstairs" verify -d "$regions/$r" >"$work/verify.$r.out" 2>&1 ||
    { cat "$work/verify.$r.out" >&2; die "crucible-downstairs verify of region $r failed"; }
done

# ---- report ---------------------------------------------------------------------------------
if [[ $mode == replay ]]; then
  [[ $replayed -gt 0 && $replayed -eq $faults ]] || die "$replayed of $faults outages were replayed"
fi
"$py" - "$work/status.json" "$mode" "$fault_s" "$faults" "$rounds" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
mode, secs, faults, rounds = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
ds = s["downstairs"]
tot = lambda k: sum(d[k] for d in ds)
c, r = s["counters"], s["live_repair"]
print(f"chaos: PASS ({mode} mode, {secs} s of faults)")
print(f"  faults injected: {faults}; fio rounds: {rounds}, every one verified, final verify-only pass ok")
if mode == "replay":
    print(f"  outages replayed: {faults} of {faults} (after each: its replay counter up, its fault counter unchanged)")
print(f"  upstairs saw: {tot('faults')} faults, {tot('replays')} replays, {tot('connects')} connects, "
      f"{tot('self_heals')} self-heals; live repairs: {r['completed']} completed, {r['aborted']} aborted")
for i, d in enumerate(ds):
    print(f"    downstairs {i} {d['target']}: {d['connects']} connects, {d['faults']} faults, "
          f"{d['replays']} replays, {d['live_repairs']} live repairs")
print(f"  io: {c['writes']} writes ({c['write_bytes'] >> 20} MiB), {c['reads']} reads "
      f"({c['read_bytes'] >> 20} MiB), {c['flushes']} flushes")
print("  replicas: dump shows no difference, data identical, every block matches its hash")
EOF
exit 0
