#!/usr/bin/env python3
"""make bench: crucible-fuse side by side with the FUSE ceiling and a single-copy NBD disk.

Runs, in one run on this machine, the same fio shapes and the same ext4 tree copy on:
  ceiling   bench/fuse_ceiling.c: one FUSE file over a local file (what FUSE allows);
  nbdfuse   nbdkit's file plugin behind nbdfuse: ONE unreplicated copy, what a user
            might pick instead of a replicated disk;
  crucible  crucible-fuse over three local crucible-downstairs (three copies);
  crucible-tls  the same with mutual TLS on every connection (certificates from
            crucible-dsc create --tls): the "TLS / plain" column is the cost of TLS;
  crucible-1ms  crucible with each downstairs behind build/tests/delay_proxy adding 500 us
            (+-100 us) each way: a 1 ms round trip, as to replicas on other hosts. Only the
            queue-depth shapes (4K qd32, 1M qd8), in a table of their own against crucible;
  crucible-proxy  the same proxies with the delay off (not run by default): what the
            proxy hop itself costs, to read the 1 ms rows against;
  crucible-observed  crucible with every observability feature on: Prometheus metrics on
            crucible-fuse and each downstairs, scraped every second (Prometheus' default is
            15 s), and tracing to a local Jaeger-agent UDP sink at the default sampling.
            Its own table gives the cost against plain crucible (target: under 5%).
Each image is 1 GiB and is filled once (1 MiB writes) before the shapes run, so reads
read data. Then it measures crucible's peak memory (VmHWM) on a 1 GiB and a 64 GiB
(sparse) volume. Prints per shape IOPS, MiB/s, p50 and p99 completion latency, the ratios
to the ceiling and to nbdfuse against the targets of DESIGN.md section 9, and writes the
summary to build/bench/results.md. Needs root (FUSE mounts, loop devices).

Usage: bench/bench.py [--seconds N] [--shapes a,b]
                      [--systems ceiling,nbdfuse,crucible,crucible-tls,crucible-1ms,
                                 crucible-observed]
                      [--tree-mb N] [--no-rss] [--no-tree] [--rounds N]
For crucible's systems it also records the CPU time its four processes spent per IO, which,
unlike IOPS, barely depends on what else this machine runs. --rounds N (BENCH_ROUNDS) runs
the systems N times in turn and reports each figure's median.
"""
import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "build" / "bin"
OUT = ROOT / "build" / "bench"
IMAGE_BYTES = 1 << 30


@dataclass
class Shape:
    name: str
    rw: str
    bs: str
    iodepth: int
    what: str
    metric: str  # "iops" or "MiBps": what the ratio targets compare
    vs_ceiling: float = 0.0  # ratio target to the ceiling (0: none)
    vs_nbd: float = 0.0  # ratio target to nbdfuse (0: none)
    p99_vs_nbd: float = 0.0  # p99 at most this times nbdfuse's (0: none)
    extra: list = field(default_factory=list)


SHAPES = [
    Shape("randwrite4k-qd32", "randwrite", "4k", 32, "4K random write, iodepth 32", "iops", 0.30, 1.5),
    Shape("randread4k-qd32", "randread", "4k", 32, "4K random read, iodepth 32", "iops", 0.35, 1.5),
    Shape("seqwrite1m-qd8", "write", "1M", 8, "1M sequential write, iodepth 8", "MiBps", 0.20),
    Shape("seqread1m-qd8", "read", "1M", 8, "1M sequential read, iodepth 8", "MiBps", 0.35, 1.0),
    Shape("write4k-fsync-qd1", "randwrite", "4k", 1, "4K write + fsync, iodepth 1", "iops", 0.35, 1.0,
          extra=["--fsync=1"]),
    Shape("randread4k-qd1", "randread", "4k", 1, "4K random read, iodepth 1", "iops", p99_vs_nbd=1.5),
    Shape("randwrite4k-qd1", "randwrite", "4k", 1, "4K random write, iodepth 1", "iops", p99_vs_nbd=1.5),
]
# The shapes run at 1 ms RTT: pipelined IO, where the round trip should hide behind depth.
RTT_SHAPES = ("randwrite4k-qd32", "randread4k-qd32", "seqwrite1m-qd8", "seqread1m-qd8")
RTT_SYSTEMS = ("crucible-1ms", "crucible-proxy")
DELAY_PROXY = ROOT / "build" / "tests" / "delay_proxy"
TREE_TARGET = 1.4  # tree copy wall time at most this times the ceiling's
OBSERVED_TARGET = 0.95  # metrics and tracing on: at least this much of plain crucible
SCRAPE_INTERVAL_S = 1.0  # how often crucible-observed's metrics are scraped
TREE_MB_MAX = 850  # what ext4 on a 1 GiB image holds with room for its metadata


def log(msg):
    print(f"bench: {msg}", flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def wait_for(what, pred, timeout_s):
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Cleanup:
    """Everything started is undone in reverse order, even when a step fails."""

    def __init__(self):
        self.steps = []

    def push(self, fn):
        self.steps.append(fn)

    def process(self, proc, name):
        def stop():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    log(f"{name} did not stop; killing it")
                    proc.kill()
                    proc.wait()
        self.push(stop)

    def mount(self, path):
        self.push(lambda: subprocess.run(["umount", path], stderr=subprocess.DEVNULL)
                  if os.path.ismount(path) else None)

    def run_all(self):
        while self.steps:
            try:
                self.steps.pop()()
            except Exception as e:  # keep undoing the rest
                log(f"cleanup: {e}")


def fio(image, shape, seconds):
    cmd = ["fio", f"--name={shape.name}", f"--filename={image}", f"--rw={shape.rw}",
           f"--bs={shape.bs}", f"--iodepth={shape.iodepth}", "--ioengine=libaio", "--direct=1",
           f"--size={IMAGE_BYTES}", f"--runtime={seconds}", "--time_based", "--group_reporting",
           "--randrepeat=0", "--output-format=json"] + shape.extra
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]
    op = "write" if job["write"]["io_bytes"] > 0 else "read"
    d = job[op]
    pct = d.get("clat_ns", {}).get("percentile", {})
    return {"iops": d["iops"], "MiBps": d["bw_bytes"] / 2**20, "ios": d["total_ios"],
            "p50us": pct.get("50.000000", 0) / 1000, "p99us": pct.get("99.000000", 0) / 1000}


def cpu_seconds(pids):
    """User + system CPU time so far of these processes (all their threads)."""
    total = 0
    for pid in pids:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def prefill(image):
    run(["fio", "--name=prefill", f"--filename={image}", "--rw=write", "--bs=1M", "--iodepth=8",
         "--ioengine=libaio", "--direct=1", f"--size={IMAGE_BYTES}", "--output-format=terse"],
        stdout=subprocess.DEVNULL)


def make_tree(path, total_mb):
    """A tree of mixed file sizes (the same for every system): small files stress metadata,
    large ones bandwidth."""
    rng = random.Random(7)
    total, i = 0, 0
    sizes = [4096, 16384, 65536, 1 << 20, 8 << 20]
    chunk = os.urandom(8 << 20)
    while total < total_mb << 20:
        d = path / f"d{i // 100}"
        d.mkdir(parents=True, exist_ok=True)
        n = rng.choice(sizes)
        off = rng.randrange(0, len(chunk) - n + 1)
        (d / f"f{i}").write_bytes(chunk[off:off + n])
        total += n
        i += 1


def tree_copy_seconds(image, tree, work):
    """losetup + mkfs.ext4 + mount + cp -r + sync + umount, wall time."""
    mnt = work / "tree-mnt"
    mnt.mkdir(exist_ok=True)
    start = time.monotonic()
    dev = run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True).stdout.strip()
    try:
        run(["mkfs.ext4", "-q", "-F", dev])
        run(["mount", dev, str(mnt)])
        try:
            run(["cp", "-r", str(tree), str(mnt)])
            run(["sync"])
        finally:
            run(["umount", str(mnt)])
    finally:
        run(["losetup", "-d", dev])
    return time.monotonic() - start


def suite(label, image, args, tree, work, shapes=None, pids=()):
    """pids: the system's own processes, whose CPU time per IO is recorded (cpu_us_per_io): unlike
    IOPS it does not depend on what else the machine runs."""
    log(f"{label}: filling the image")
    prefill(image)
    results = {}
    for shape in args.shapes if shapes is None else shapes:
        cpu_before = cpu_seconds(pids)
        r = fio(image, shape, args.seconds)
        if pids and r["ios"]:
            r["cpu_us_per_io"] = (cpu_seconds(pids) - cpu_before) * 1e6 / r["ios"]
        results[shape.name] = r
        cpu = f"  CPU {r['cpu_us_per_io']:.1f} us/IO" if "cpu_us_per_io" in r else ""
        log(f"{label:9} {shape.name:18} {r['iops']:9.0f} IOPS {r['MiBps']:8.1f} MiB/s "
            f"p50 {r['p50us']:7.0f} us  p99 {r['p99us']:7.0f} us{cpu}")
    if tree:
        secs = tree_copy_seconds(image, tree, work)
        results["tree"] = {"seconds": secs}
        log(f"{label:9} tree copy + sync   {secs:.1f} s")
    return results


def median_results(runs):
    """Per shape and figure, the median over rounds (the middle one's, or the lower of the
    two middle ones: a figure that was measured)."""
    out = {}
    for shape in runs[0]:
        out[shape] = {k: sorted(r[shape][k] for r in runs)[(len(runs) - 1) // 2]
                      for k in runs[0][shape]}
    return out


def mount_ceiling(work, cleanup):
    exe = OUT / "fuse_ceiling"
    run(["gcc", "-O2", "-Wall", str(ROOT / "bench" / "fuse_ceiling.c"), "-o", str(exe)]
        + subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], check=True,
                         capture_output=True, text=True).stdout.split())
    backing = work / "ceiling.img"
    with open(backing, "wb") as f:
        f.truncate(IMAGE_BYTES)
    mnt = work / "mnt-ceiling"
    mnt.mkdir()
    proc = subprocess.Popen([str(exe), str(backing), str(mnt), "-f"])
    cleanup.process(proc, "fuse_ceiling")
    cleanup.mount(str(mnt))
    wait_for("the ceiling's mount", lambda: (mnt / "disk.img").exists(), 10)
    return mnt / "disk.img"


def mount_nbdfuse(work, cleanup):
    backing = work / "nbd.img"
    with open(backing, "wb") as f:
        f.truncate(IMAGE_BYTES)
    mnt = work / "mnt-nbd"
    mnt.mkdir()
    proc = subprocess.Popen(["nbdfuse", str(mnt / "disk.img"), "--command", "nbdkit", "-s",
                             "file", str(backing)])
    cleanup.process(proc, "nbdfuse")
    cleanup.mount(str(mnt))
    wait_for("nbdfuse's mount", lambda: (mnt / "disk.img").exists(), 10)
    return mnt / "disk.img"


def free_port():
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


class UdpSink:
    """A Jaeger agent stand-in: receives span packets on loopback and counts them."""

    def __init__(self, cleanup):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.packets = 0
        self.stop = threading.Event()
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()
        cleanup.push(self.close)

    def loop(self):
        while not self.stop.is_set():
            try:
                self.sock.recv(65536)
                self.packets += 1
            except socket.timeout:
                pass

    def close(self):
        self.stop.set()
        self.thread.join()
        self.sock.close()
        log(f"trace sink received {self.packets} packets")


class Scraper:
    """Fetches every metrics endpoint every SCRAPE_INTERVAL_S while the shapes run."""

    def __init__(self, cleanup, urls):
        self.urls, self.scrapes, self.errors = urls, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()
        cleanup.push(self.close)

    def loop(self):
        while not self.stop.wait(SCRAPE_INTERVAL_S):
            for url in self.urls:
                try:
                    with urllib.request.urlopen(url, timeout=5) as r:
                        r.read()
                    self.scrapes += 1
                except OSError:
                    self.errors += 1

    def close(self):
        self.stop.set()
        self.thread.join()
        log(f"metrics: {self.scrapes} scrapes, {self.errors} failed")
        if self.errors:
            raise RuntimeError(f"{self.errors} metrics scrapes failed")


class Cluster:
    """Three crucible-downstairs on loopback and crucible-fuse over them."""

    def __init__(self, work, size, cleanup, name="crucible", tls=False, delay_us=None,
                 observe=False, sparse=False):
        """delay_us: None, straight to the downstairs; else through a delay proxy each,
        adding that much each way (0: the proxy with its delay off). observe: metrics on
        every process, scraped every SCRAPE_INTERVAL_S, and tracing to a UDP sink. sparse:
        regions allocated on write (create --sparse) rather than whole at create."""
        self.work, self.cleanup, self.name = work / name, cleanup, name
        self.work.mkdir()
        self.downstairs = []
        targets = []
        observe_args, observe_yaml, metrics_ports = [], "", []
        if observe:
            sink = UdpSink(cleanup)
            metrics_ports = [free_port() for _ in range(4)]
            observe_yaml = (f'metrics:\n  listen: "127.0.0.1:{metrics_ports[3]}"\n'
                            f'trace:\n  endpoint: "127.0.0.1:{sink.port}"\n')
            observe_args = [["--metrics", f"127.0.0.1:{metrics_ports[i]}", "--trace-endpoint",
                             f"127.0.0.1:{sink.port}"] for i in range(3)]
        tls_args, tls_yaml = [[], [], []], ""
        if tls:
            # crucible-dsc makes the regions and a throw-away CA with a certificate each.
            run([str(BIN / "crucible-dsc"), "create", "--dir", str(self.work / "dsc"), "--count", "3",
                 "--size", size, "--tls"] + (["--sparse"] if sparse else []),
                stdout=subprocess.DEVNULL)
            certs = self.work / "dsc" / "tls"
            tls_args = [["--tls-cert", str(certs / f"downstairs-{i}.pem"), "--tls-key",
                         str(certs / f"downstairs-{i}-key.pem"), "--tls-ca", str(certs / "ca.pem")]
                        for i in range(3)]
            tls_yaml = (f'  tls: {{cert: "{certs / "upstairs.pem"}", key: "{certs / "upstairs-key.pem"}", '
                        f'ca: "{certs / "ca.pem"}"}}\n')
        for i in range(3):
            if tls:
                d = self.work / "dsc" / str(i)
            else:
                d = self.work / f"region{i}"
                run([str(BIN / "crucible-downstairs"), "create", "-u", str(uuid.uuid4()), "-d", str(d),
                     "--size", size] + (["--sparse"] if sparse else []), stdout=subprocess.DEVNULL)
            logf = open(self.work / f"downstairs{i}.log", "w")
            proc = subprocess.Popen([str(BIN / "crucible-downstairs"), "--log-level", "warn", "run", "-d",
                                     str(d), "-p", "0", "-a", "127.0.0.1"] + tls_args[i]
                                    + (observe_args[i] if observe else []),
                                    stdout=subprocess.PIPE,
                                    stderr=logf, text=True)
            cleanup.process(proc, f"downstairs {i}")
            line = proc.stdout.readline()
            if not line.startswith("listening on "):
                raise RuntimeError(f"downstairs {i} did not start: {line!r}")
            target = line.split()[-1]
            if delay_us is not None:
                target = self.proxy(i, target, delay_us)
            targets.append(target)
            self.downstairs.append(proc)
        config = self.work / "crucible.yaml"
        config.write_text("volume:\n  targets: [" + ", ".join(f'"{t}"' for t in targets) + "]\n"
                          + tls_yaml + observe_yaml + "log:\n  level: warn\n")
        self.mnt = self.work / "mnt"
        self.mnt.mkdir()
        out = open(self.work / "fuse.out", "w")
        self.fuse = subprocess.Popen([str(BIN / "crucible-fuse"), "-c", str(config), str(self.mnt), "-f"],
                                     stdout=out, stderr=open(self.work / "fuse.log", "w"))
        cleanup.process(self.fuse, "crucible-fuse")
        cleanup.mount(str(self.mnt))
        wait_for("crucible-fuse to mount",
                 lambda: "is ready" in (self.work / "fuse.out").read_text() or self.fuse.poll() is not None,
                 120)
        if self.fuse.poll() is not None:
            raise RuntimeError("crucible-fuse did not mount:\n" + (self.work / "fuse.log").read_text())
        if metrics_ports:
            Scraper(cleanup, [f"http://127.0.0.1:{p}/metrics" for p in metrics_ports])

    def proxy(self, i, target, delay_us):
        """Starts a delay proxy in front of `target`; returns the address it listens on."""
        if not DELAY_PROXY.exists():
            raise RuntimeError(f"{DELAY_PROXY} is missing (make {DELAY_PROXY.relative_to(ROOT)})")
        args = [str(DELAY_PROXY), "--listen", "127.0.0.1:0", "--target", target, "--seed", str(i + 1)]
        args += ["--off"] if delay_us == 0 else ["--delay-us", str(delay_us),
                                                  "--jitter-us", str(min(100, delay_us))]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(self.work / f"proxy{i}.log", "w"),
                                text=True)
        self.cleanup.process(proc, f"delay proxy {i}")
        for line in proc.stdout:
            if line.startswith("listening on "):
                return line.split()[-1]
        raise RuntimeError(f"delay proxy {i} did not start: see {self.work / f'proxy{i}.log'}")

    @property
    def image(self):
        return self.mnt / "disk.img"

    @property
    def pids(self):
        return [self.fuse.pid] + [p.pid for p in self.downstairs]

    def peak_rss_mib(self):
        """VmHWM of crucible-fuse and of each downstairs, in MiB."""
        def hwm(pid):
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
            return 0.0
        return {"crucible-fuse": hwm(self.fuse.pid),
                "downstairs": [hwm(p.pid) for p in self.downstairs]}


def rss_run(work, seconds, size, cleanup):
    """Random 4K writes then reads over the whole volume; returns peak memory. Sparse
    regions: three allocated 64 GiB regions would not fit every machine's disk."""
    c = Cluster(work, size, cleanup, name=f"rss-{size}", sparse=True)
    total = os.stat(c.image).st_size
    for rw in ("randwrite", "randread"):
        run(["fio", f"--name=rss-{rw}", f"--filename={c.image}", f"--rw={rw}", "--bs=4k",
             "--iodepth=32", "--ioengine=libaio", "--direct=1", f"--size={total}",
             f"--runtime={seconds}", "--time_based", "--output-format=terse"],
            stdout=subprocess.DEVNULL)
    return c.peak_rss_mib()


def fmt_rate(r, metric):
    return f"{r['iops']:.0f} IOPS" if metric == "iops" else f"{r['MiBps']:.0f} MiB/s"


def verdict(ok):
    return "ok" if ok else "BELOW"


def report(args, results, rss):
    lines = ["| shape | ceiling | nbdfuse (1 copy) | crucible (3 copies) | vs ceiling | vs nbdfuse |"
             " p50 / p99 us (crucible) | p99 vs nbdfuse | crucible + TLS | TLS / plain |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    c, n, x, t = (results.get(k, {}) for k in ("ceiling", "nbdfuse", "crucible", "crucible-tls"))
    for s in args.shapes:
        if s.name not in x:
            continue
        xr = x[s.name]
        cols = [s.name]
        for sys_results in (c, n, x):
            cols.append(fmt_rate(sys_results[s.name], s.metric) if s.name in sys_results else "-")
        for base, target in ((c, s.vs_ceiling), (n, s.vs_nbd)):
            if s.name not in base or base[s.name][s.metric] == 0:
                cols.append("-")
                continue
            ratio = xr[s.metric] / base[s.name][s.metric]
            cols.append(f"{ratio:.2f}x" + (f" (>= {target}x {verdict(ratio >= target)})" if target else ""))
        cols.append(f"{xr['p50us']:.0f} / {xr['p99us']:.0f}")
        if s.name in n and n[s.name]["p99us"] > 0:
            p = xr["p99us"] / n[s.name]["p99us"]
            cols.append(f"{p:.2f}x" + (f" (<= {s.p99_vs_nbd}x {verdict(p <= s.p99_vs_nbd)})"
                                       if s.p99_vs_nbd else ""))
        else:
            cols.append("-")
        # The cost of mutual TLS: the same shape over TLS, and its ratio to plain TCP.
        if s.name in t:
            tr = t[s.name]
            cols.append(fmt_rate(tr, s.metric) + f", p99 {tr['p99us']:.0f} us")
            cols.append(f"{tr[s.metric] / xr[s.metric]:.2f}x" if xr[s.metric] else "-")
        else:
            cols += ["-", "-"]
        lines.append("| " + " | ".join(cols) + " |")
    if "tree" in x:
        ct = c.get("tree", {}).get("seconds")
        nt = n.get("tree", {}).get("seconds")
        xt = x["tree"]["seconds"]
        ratio = f"{xt / ct:.2f}x time (<= {TREE_TARGET}x {verdict(xt / ct <= TREE_TARGET)})" if ct else "-"
        secs = lambda t: f"{t:.1f} s" if t else "-"
        tt = t.get("tree", {}).get("seconds")
        lines.append(f"| tree copy {args.tree_mb} MB + sync | {secs(ct)} | {secs(nt)} | {secs(xt)} | "
                     f"{ratio} | {f'{xt / nt:.2f}x time' if nt else '-'} | | | {secs(tt)} | "
                     f"{f'{tt / xt:.2f}x time' if tt else '-'} |")
    if rss:
        lines.append("")
        lines.append("| volume | crucible-fuse peak RSS | downstairs peak RSS (each) |")
        lines.append("|---|---|---|")
        for size, r in rss.items():
            ds = ", ".join(f"{m:.0f}" for m in r["downstairs"])
            lines.append(f"| {size} | {r['crucible-fuse']:.0f} MiB | {ds} MiB |")
    rtt = rtt_report(args, results)
    if rtt:
        lines += [""] + rtt
    observed = observed_report(args, results)
    if observed:
        lines += [""] + observed
    text = "\n".join(lines)
    print("\n" + text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.md").write_text(text + "\n")
    (OUT / "results.json").write_text(json.dumps({"results": results, "rss": rss}, indent=1))
    print(f"\nbench: written to {OUT / 'results.md'} and results.json")


def rtt_report(args, results):
    """The 1 ms RTT rows: crucible over loopback, behind the proxies with the delay off
    (if run), and at 1 ms."""
    x, p, d = (results.get(k, {}) for k in ("crucible", "crucible-proxy", "crucible-1ms"))
    if not d:
        return []
    lines = ["| shape | crucible (loopback) | via proxy, no delay | crucible at 1 ms RTT | 1 ms / loopback |"
             " p50 / p99 us at 1 ms |",
             "|---|---|---|---|---|---|"]
    for s in args.shapes:
        if s.name not in d:
            continue
        dr = d[s.name]
        cols = [s.name] + [fmt_rate(r[s.name], s.metric) if s.name in r else "-" for r in (x, p, d)]
        base = x.get(s.name, {}).get(s.metric, 0)
        cols.append(f"{dr[s.metric] / base:.2f}x" if base else "-")
        cols.append(f"{dr['p50us']:.0f} / {dr['p99us']:.0f}")
        lines.append("| " + " | ".join(cols) + " |")
    return lines


def observed_report(args, results):
    """What metrics (scraped every second) and tracing cost: crucible-observed against
    plain crucible, per shape."""
    x, o = results.get("crucible", {}), results.get("crucible-observed", {})
    if not x or not o:
        return []
    lines = ["| shape | crucible | with metrics + tracing | observed / plain | p99 us plain / observed |"
             " CPU us per IO plain / observed (all four processes) |",
             "|---|---|---|---|---|---|"]
    for s in args.shapes:
        if s.name not in x or s.name not in o or not x[s.name][s.metric]:
            continue
        ratio = o[s.name][s.metric] / x[s.name][s.metric]
        xc, oc = x[s.name].get("cpu_us_per_io"), o[s.name].get("cpu_us_per_io")
        cpu = f"{xc:.1f} / {oc:.1f} ({oc / xc:.2f}x)" if xc and oc else "-"
        lines.append(f"| {s.name} | {fmt_rate(x[s.name], s.metric)} | {fmt_rate(o[s.name], s.metric)} | "
                     f"{ratio:.2f}x (>= {OBSERVED_TARGET}x {verdict(ratio >= OBSERVED_TARGET)}) | "
                     f"{x[s.name]['p99us']:.0f} / {o[s.name]['p99us']:.0f} | {cpu} |")
    if "tree" in x and "tree" in o:
        xt, ot = x["tree"]["seconds"], o["tree"]["seconds"]
        lines.append(f"| tree copy {args.tree_mb} MB + sync | {xt:.1f} s | {ot:.1f} s | "
                     f"{ot / xt:.2f}x time (<= {1 / OBSERVED_TARGET:.2f}x "
                     f"{verdict(ot / xt <= 1 / OBSERVED_TARGET)}) | |")
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_SECONDS", 6)))
    p.add_argument("--shapes", default="", help="comma-separated shape names (default: all)")
    p.add_argument("--systems",
                   default="ceiling,nbdfuse,crucible,crucible-tls,crucible-1ms,crucible-observed")
    p.add_argument("--tree-mb", type=int, default=int(os.environ.get("BENCH_TREE_MB", 600)))
    p.add_argument("--no-tree", action="store_true")
    p.add_argument("--no-rss", action="store_true")
    p.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 1)),
                   help="run the systems this many times in turn; each figure is the median")
    args = p.parse_args()
    names = [s for s in args.shapes.split(",") if s]
    unknown = set(names) - {s.name for s in SHAPES}
    if unknown:
        sys.exit(f"bench: unknown shape(s) {', '.join(sorted(unknown))}; "
                 f"known: {', '.join(s.name for s in SHAPES)}")
    args.shapes = [s for s in SHAPES if not names or s.name in names]
    if not 1 <= args.tree_mb <= TREE_MB_MAX:
        sys.exit(f"bench: --tree-mb {args.tree_mb}: the tree must fit the 1 GiB image's ext4 "
                 f"(1 to {TREE_MB_MAX} MB)")
    systems = args.systems.split(",")
    if args.rounds < 1:
        sys.exit(f"bench: --rounds {args.rounds}: at least 1")
    if os.geteuid() != 0:
        sys.exit("bench: needs root (FUSE mounts and loop devices)")
    run([str(ROOT / "scripts" / "deps.sh"), "bench"])
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cru-bench."))
    cleanup = Cleanup()
    cleanup.push(lambda: shutil.rmtree(work, ignore_errors=True))
    results, rss = {}, {}
    try:
        tree = None
        if not args.no_tree:
            log(f"making a {args.tree_mb} MB tree of mixed file sizes")
            tree = work / "tree"
            make_tree(tree, args.tree_mb)
        # Each gives the image and the processes serving it (crucible's, for CPU per IO), in
        # a directory of its own per round.
        mounts = {"ceiling": lambda w: (mount_ceiling(w, cleanup), []),
                  "nbdfuse": lambda w: (mount_nbdfuse(w, cleanup), []),
                  "crucible": lambda w: Cluster(w, "1G", cleanup),
                  "crucible-tls": lambda w: Cluster(w, "1G", cleanup, name="crucible-tls", tls=True),
                  "crucible-1ms": lambda w: Cluster(w, "1G", cleanup, name="crucible-1ms",
                                                    delay_us=500),
                  "crucible-proxy": lambda w: Cluster(w, "1G", cleanup, name="crucible-proxy",
                                                      delay_us=0),
                  "crucible-observed": lambda w: Cluster(w, "1G", cleanup, name="crucible-observed",
                                                         observe=True)}
        unknown = [name for name in systems if name not in mounts]
        if unknown:
            sys.exit(f"bench: unknown system {unknown[0]}; known: {', '.join(mounts)}")
        rounds = {name: [] for name in systems}
        for r in range(args.rounds):
            round_work = work / f"round{r}"
            round_work.mkdir()
            for name in systems:
                mark = len(cleanup.steps)
                mounted = mounts[name](round_work)
                image, pids = (mounted.image, mounted.pids) if isinstance(mounted, Cluster) else mounted
                shapes = [s for s in args.shapes if s.name in RTT_SHAPES] if name in RTT_SYSTEMS else None
                rounds[name].append(suite(name, image, args, None if name in RTT_SYSTEMS else tree,
                                          round_work, shapes, pids))
                while len(cleanup.steps) > mark:  # unmount and stop this system before the next
                    cleanup.steps.pop()()
        results = {name: median_results(runs) for name, runs in rounds.items()}
        if "crucible" in systems and not args.no_rss:
            for size in ("1G", "64G"):
                mark = len(cleanup.steps)
                log(f"peak memory on a {size} volume")
                rss[size] = rss_run(work, args.seconds, size, cleanup)
                while len(cleanup.steps) > mark:
                    cleanup.steps.pop()()
    finally:
        cleanup.run_all()
    report(args, results, rss)


if __name__ == "__main__":
    main()
