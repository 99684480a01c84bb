// crucible: a test client. Connects to three downstairs as one volume and runs a
// workload, checking everything it reads. Exits 0 on success, 1 with a reason otherwise.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>

#include "common/log.h"
#include "common/progress.h"
#include "common/service.h"
#include "common/tls_files.h"
#include "common/units.h"
#include "proto/tls.h"
#include "tools/crucible/write_log.h"
#include "trace/export.h"
#include "upstairs/volume.h"

namespace {

using namespace cru;
using namespace cru::upstairs;
using cru::tools::WriteLog;
using Ms = std::chrono::milliseconds;

struct Args {
  std::vector<std::string> targets;
  std::string gen = "auto";
  std::string key;  // refused: see main()
  std::string key_file;
  std::string tls_cert, tls_key, tls_ca;
  std::string trace_endpoint;  // empty: no tracing
  std::string trace_sample_ratio = "0.01";
  bool quiet = false;
  int activate_timeout_s = 30;
  uint64_t count = 0;
  uint64_t seed = 0;
  std::string log_file;
  bool verify_only = false;
  double seconds = 5;
  std::string io_size = "4K";
  int depth = 8;
  bool perf_read = false;
};

bool g_quiet = false;
template <typename... A>
void say(fmt::format_string<A...> f, A&&... a) {
  if (!g_quiet) std::printf("%s\n", fmt::format(f, std::forward<A>(a)...).c_str());
}

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "crucible: %s\n", what.c_str());
  std::fflush(stdout);
  std::_Exit(1);  // no destructors: a wedged volume must not keep us waiting
}

void check(const Status& s, const std::string& what) {
  if (!s) die(fmt::format("{}: {}", what, s.error().to_string()));
}

std::vector<std::byte> random_bytes(std::mt19937_64& rng, size_t n) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; i += 8) {
    uint64_t x = rng();
    std::memcpy(v.data() + i, &x, std::min<size_t>(8, n - i));
  }
  return v;
}

// ---- workloads ----------------------------------------------------------------------

void workload_one(Volume& v, std::mt19937_64& rng) {
  const uint32_t bs = v.block_size();
  uint64_t blocks = std::min<uint64_t>(1 + rng() % 16, v.total_blocks());
  uint64_t start = rng() % (v.total_blocks() - blocks + 1);
  auto data = random_bytes(rng, blocks * bs);
  check(v.write_sync(BlockIndex{start}, data), "write");
  say("wrote {} blocks at block {}", blocks, start);
  check(v.flush_sync(), "flush");
  say("flushed");
  auto back = v.read_sync(BlockIndex{start}, blocks);
  check(back ? Status{} : tl::unexpected(back.error()), "read");
  if (back->size() != data.size() || std::memcmp(back->data(), data.data(), data.size()) != 0)
    die(fmt::format("read back of blocks [{}, {}) differs from what was written", start,
                    start + blocks));
  say("read back {} blocks: verified", blocks);
}

// Random reads, writes and flushes, one at a time, reads checked against what this run
// wrote (blocks it never wrote are not checked).
void workload_rand(Volume& v, std::mt19937_64& rng, uint64_t count) {
  const uint32_t bs = v.block_size();
  const uint64_t total = v.total_blocks();
  std::unordered_map<uint64_t, std::vector<std::byte>> model;
  uint64_t reads = 0, writes = 0, flushes = 0;
  Progress progress("rand", count);
  for (uint64_t i = 0; i < count; ++i) {
    uint64_t n = std::min<uint64_t>(1 + rng() % 64, total);
    uint64_t start = rng() % (total - n + 1);
    int kind = static_cast<int>(rng() % 10);
    if (kind < 5) {
      auto data = random_bytes(rng, n * bs);
      check(v.write_sync(BlockIndex{start}, data),
            fmt::format("write of [{}, {})", start, start + n));
      for (uint64_t b = 0; b < n; ++b) {
        auto block = std::span(data).subspan(b * bs, bs);
        model[start + b].assign(block.begin(), block.end());
      }
      ++writes;
    } else if (kind < 9) {
      auto r = v.read_sync(BlockIndex{start}, n);
      if (!r) die(fmt::format("read of [{}, {}): {}", start, start + n, r.error().to_string()));
      for (uint64_t b = 0; b < n; ++b) {
        auto it = model.find(start + b);
        if (it != model.end() && std::memcmp(r->data() + b * bs, it->second.data(), bs) != 0)
          die(fmt::format("block {} does not hold what was written to it", start + b));
      }
      ++reads;
    } else {
      check(v.flush_sync(), "flush");
      ++flushes;
    }
    progress.update(i + 1);
  }
  progress.finish();
  check(v.flush_sync(), "final flush");
  say("rand: {} writes, {} reads (all verified), {} flushes", writes, reads, flushes + 1);
}

// Keeps `depth` IOs in flight; `submit(i, done)` starts IO number i.
template <typename Submit>
void run_pipelined(uint64_t total_ios, int depth, Submit submit) {
  std::mutex mu;
  std::condition_variable cv;
  uint64_t issued = 0, finished = 0;
  std::string error;
  std::function<void(Status)> on_done;
  on_done = [&](Status s) {
    std::lock_guard lock(mu);
    ++finished;
    if (!s && error.empty()) error = s.error().to_string();
    cv.notify_all();
  };
  // Every condition is re-checked under the lock right before waiting: completions that
  // arrive while a submission runs unlocked must not be missed (the last ones finishing
  // then would leave this waiting forever).
  std::unique_lock lock(mu);
  // NOLINTNEXTLINE(bugprone-infinite-loop): on_done advances `finished` from the io thread.
  while (finished < total_ios) {
    if (issued < total_ios && issued - finished < static_cast<uint64_t>(depth) && error.empty()) {
      uint64_t i = issued++;
      lock.unlock();
      submit(i, on_done);
      lock.lock();
      continue;
    }
    if (!error.empty() && issued == finished) break;
    cv.wait(lock);
  }
  if (!error.empty()) die(error);
}

void workload_fill(Volume& v, uint64_t seed) {
  const uint32_t bs = v.block_size();
  const uint64_t total = v.total_blocks();
  const uint64_t per = kMaxJobBytes / bs;
  const uint64_t ios = (total + per - 1) / per;
  WriteLog wlog(bs, total, seed);
  std::vector<std::vector<std::byte>> buffers(ios);
  Progress progress("fill", total * bs);
  std::atomic<uint64_t> done_bytes{0};
  run_pipelined(ios, 8, [&](uint64_t i, auto& done) {
    uint64_t start = i * per, n = std::min(per, total - start);
    buffers[i].resize(n * bs);
    wlog.write(start, n, buffers[i]);
    v.write(BlockIndex{start}, buffers[i], [&, i, n](Status s) {
      buffers[i].clear();
      buffers[i].shrink_to_fit();
      done_bytes += n * bs;
      done(s);
    });
    progress.update(done_bytes);
  });
  check(v.flush_sync(), "flush after fill");
  progress.finish();
  say("filled {} blocks ({})", total, format_size(total * bs));
  wlog.flushed();
  for (uint64_t start = 0; start < total; start += per) {
    uint64_t n = std::min(per, total - start);
    auto r = v.read_sync(BlockIndex{start}, n);
    if (!r) die(fmt::format("read back: {}", r.error().to_string()));
    check(wlog.check(start, r->span()), "verify after fill");
  }
  say("read back every block: verified");
}

// Large IOs (1 MiB and more) across extent boundaries.
void workload_big(Volume& v, std::mt19937_64& rng) {
  const uint32_t bs = v.block_size();
  const uint64_t total = v.total_blocks();
  uint64_t sizes[] = {kMiB / bs, 3 * kMiB / bs + 1, 8 * kMiB / bs, 17 * kMiB / bs + 3};
  int done = 0;
  for (uint64_t n : sizes) {
    n = std::min(n, total);
    uint64_t start = rng() % (total - n + 1);
    auto data = random_bytes(rng, n * bs);
    check(v.write_sync(BlockIndex{start}, data), "big write");
    check(v.flush_sync(), "flush");
    auto r = v.read_sync(BlockIndex{start}, n);
    if (!r) die(fmt::format("big read: {}", r.error().to_string()));
    if (std::memcmp(r->data(), data.data(), data.size()) != 0)
      die(fmt::format("big IO of {} blocks at {} read back different data", n, start));
    say("{} at block {}: written, flushed, read back, verified", format_size(n * bs), start);
    ++done;
  }
  say("big: {} IOs verified", done);
}

void workload_verify(Volume& v, const Args& a, std::mt19937_64& rng) {
  const uint32_t bs = v.block_size();
  const uint64_t total = v.total_blocks();
  std::optional<WriteLog> wlog;
  if (auto loaded = WriteLog::load(a.log_file)) {
    if (loaded->block_size() != bs || loaded->blocks() != total)
      die(fmt::format("{} was written for another volume ({} blocks of {})", a.log_file,
                      loaded->blocks(), loaded->block_size()));
    wlog = std::move(*loaded);
  } else if (a.verify_only) {
    die(loaded.error().to_string());
  } else {
    wlog.emplace(bs, total, rng());
  }
  if (!a.verify_only) {
    uint64_t count = a.count ? a.count : 1000;
    for (uint64_t i = 0; i < count; ++i) {
      uint64_t n = std::min<uint64_t>(1 + rng() % 32, total);
      uint64_t start = rng() % (total - n + 1);
      std::vector<std::byte> data(n * bs);
      wlog->write(start, n, data);
      check(v.write_sync(BlockIndex{start}, data), "write");
      if (rng() % 50 == 0) {
        check(v.flush_sync(), "flush");
        wlog->flushed();
      }
    }
    check(v.flush_sync(), "flush");
    wlog->flushed();
    check(wlog->save(a.log_file), "saving the write log");
    say("verify: {} random writes recorded in {}", count, a.log_file);
  }
  const uint64_t per = kMaxJobBytes / bs;
  for (uint64_t start = 0; start < total; start += per) {
    uint64_t n = std::min(per, total - start);
    auto r = v.read_sync(BlockIndex{start}, n);
    if (!r) die(fmt::format("read: {}", r.error().to_string()));
    check(wlog->check(start, r->span()), "verify");
  }
  say("verify: {} written blocks checked, all match", wlog->written_blocks());
}

void workload_perf(Volume& v, const Args& a, std::mt19937_64& rng) {
  const uint32_t bs = v.block_size();
  auto size = parse_size(a.io_size);
  if (!size || *size == 0 || *size % bs != 0 || *size > 64 * kMiB)
    die(fmt::format("--io-size {}: must be a multiple of the {}-byte block up to 64 MiB", a.io_size,
                    bs));
  const uint64_t n = *size / bs;
  const uint64_t slots = v.total_blocks() / n;
  auto payload = random_bytes(rng, *size);
  std::mutex mu;
  std::vector<double> latencies_us;
  auto start_time = std::chrono::steady_clock::now();
  auto deadline = start_time + std::chrono::duration<double>(a.seconds);
  uint64_t ios = 0;
  std::condition_variable cv;
  int in_flight = 0;
  std::string error;
  std::unique_lock lock(mu);
  while (std::chrono::steady_clock::now() < deadline && error.empty()) {
    while (in_flight < a.depth) {
      ++in_flight;
      uint64_t start = (rng() % slots) * n;
      auto t0 = std::chrono::steady_clock::now();
      auto finish = [&, t0](bool ok, const std::string& why) {
        std::lock_guard g(mu);
        --in_flight;
        ++ios;
        latencies_us.push_back(
            std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
                .count());
        if (!ok && error.empty()) error = why;
        cv.notify_all();
      };
      lock.unlock();
      if (a.perf_read)
        v.read(BlockIndex{start}, n, [finish](Result<Bytes> r) {
          finish(r.has_value(), r ? "" : r.error().to_string());
        });
      else
        v.write(BlockIndex{start}, payload,
                [finish](Status s) { finish(s.has_value(), s ? "" : s.error().to_string()); });
      lock.lock();
    }
    // A predicate, so completions that came while submitting unlocked are not missed.
    cv.wait_until(lock, deadline, [&] { return in_flight < a.depth || !error.empty(); });
  }
  cv.wait(lock, [&] { return in_flight == 0; });
  double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time).count();
  lock.unlock();
  if (!error.empty()) die(error);
  auto t_flush = std::chrono::steady_clock::now();
  check(v.flush_sync(), "flush");
  double flush_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t_flush).count();
  std::sort(latencies_us.begin(), latencies_us.end());
  auto pct = [&](double p) {
    return latencies_us.empty() ? 0
                                : latencies_us[static_cast<size_t>(
                                      p * static_cast<double>(latencies_us.size() - 1))];
  };
  std::printf(
      "perf %s %s depth %d: %.0f IOPS, %.1f MiB/s, p50 %.0f us, p99 %.0f us (final flush %.1f "
      "ms)\n",
      a.perf_read ? "read" : "write", format_size(*size).c_str(), a.depth,
      static_cast<double>(ios) / secs,
      static_cast<double>(ios) * static_cast<double>(*size) / secs / static_cast<double>(kMiB),
      pct(0.5), pct(0.99), flush_ms);
}

}  // namespace

int main(int argc, char** argv) {
  cru::log::init("crucible");
  CLI::App app{"crucible: test client for three crucible-downstairs as one replicated volume"};
  app.set_version_flag("--version", cru::version_line("crucible"));
  Args a;
  std::string log_level = "warn";
  app.add_option("-t,--target", a.targets, "downstairs host:port (give exactly three)")->required();
  app.add_option("-g,--gen", a.gen,
                 "activation generation: a number or 'auto' (1 + the highest seen)")
      ->capture_default_str();
  app.add_option("--key-file", a.key_file,
                 "file of mode 0600 holding the base64 256-bit encryption key (encrypted regions)");
  // Still recognised, only to refuse it without echoing the key (as an unknown flag would).
  app.add_option("--key", a.key)->group("");
  app.add_option("--tls-cert", a.tls_cert,
                 "mutual TLS: this client's certificate (PEM; with --tls-key, --tls-ca)");
  app.add_option("--tls-key", a.tls_key, "mutual TLS: the certificate's private key (PEM)");
  app.add_option("--tls-ca", a.tls_ca,
                 "mutual TLS: the CA that signed the downstairs' certificates (PEM)");
  app.add_flag("-q,--quiet", a.quiet, "print only errors (and perf results)");
  app.add_option("--activate-timeout", a.activate_timeout_s, "seconds to wait for activation")
      ->capture_default_str();
  app.add_option("--seed", a.seed, "random seed (default: random, printed)");
  app.add_option("--trace-endpoint", a.trace_endpoint,
                 "send spans to a Jaeger agent (HOST:PORT, UDP) or an OTLP/HTTP receiver "
                 "(http://HOST:PORT)");
  app.add_option("--trace-sample-ratio", a.trace_sample_ratio,
                 "share of guest operations traced, 0 to 1 (errors always)")
      ->capture_default_str();
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")
      ->capture_default_str();
  app.require_subcommand(0, 1);
  // Subcommands (created below, inheriting this) pass options they do not know to the
  // main command, so `crucible -t ... rand --count 5 --quiet` works as well.
  app.fallthrough();
  app.add_subcommand("one", "write, flush and read back one random IO (the default)");
  auto* rand = app.add_subcommand("rand", "random reads, writes and flushes, verified");
  rand->add_option("-c,--count", a.count, "operations")->default_val(1000);
  app.add_subcommand("fill", "write every block, then read everything back and verify");
  app.add_subcommand("big", "IOs of 1 MiB and more across extents");
  auto* ver = app.add_subcommand(
      "verify", "random writes recorded in a write log, then everything read back and checked");
  ver->add_option("--log", a.log_file, "write log file")->required();
  ver->add_option("-c,--count", a.count, "writes (default 1000)");
  ver->add_flag("--verify-only", a.verify_only, "only read back and check against the log");
  auto* perf = app.add_subcommand("perf", "measure IOPS, throughput and latency");
  perf->add_option("--seconds", a.seconds, "duration")->capture_default_str();
  perf->add_option("--io-size", a.io_size, "bytes per IO, e.g. 4K or 1M")->capture_default_str();
  perf->add_option("--depth", a.depth, "IOs in flight")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  perf->add_flag("--read", a.perf_read, "read instead of write");
  bool perf_write = false;
  perf->add_flag("--write", perf_write, "write (the default)");
  CLI11_PARSE(app, argc, argv);
  if (!cru::log::valid_level(log_level)) die("--log-level: unknown level " + log_level);
  cru::log::set_level(log_level);
  g_quiet = a.quiet;
  if (a.targets.size() != 3)
    die(fmt::format("-t/--target: give exactly three downstairs, got {}", a.targets.size()));
  std::optional<Generation> gen;
  if (a.gen != "auto") {
    try {
      size_t used = 0;
      unsigned long long g = std::stoull(a.gen, &used);
      if (used != a.gen.size() || g == 0) throw std::invalid_argument("x");
      gen = Generation{g};
    } catch (const std::exception&) {
      die(fmt::format("--gen '{}': expected 'auto' or a positive number", a.gen));
    }
  }
  VolumeOptions options;
  std::copy(a.targets.begin(), a.targets.end(), options.targets.begin());
  if (!a.key.empty())
    die("--key: a key on the command line is visible to every user (ps); put it in a file of "
        "mode 0600 and pass --key-file");
  if (!a.key_file.empty()) {
    auto key = load_key_file(a.key_file);
    if (!key) die("--key-file: " + key.error().message);
    options.key = *key;
  }
  auto tls_files = tls_files_from_flags(a.tls_cert, a.tls_key, a.tls_ca);
  if (!tls_files) die(tls_files.error().message);
  if (*tls_files) {
    auto tls = proto::TlsContext::load(**tls_files);
    if (!tls) die(tls.error().message);
    options.tls = std::move(*tls);
  }
  if (!a.trace_endpoint.empty()) {
    auto ratio = trace::parse_sample_ratio(a.trace_sample_ratio, "--trace-sample-ratio");
    if (!ratio) die(ratio.error().message);
    auto t = trace::make_tracer("crucible-upstairs", a.trace_endpoint, *ratio, "--trace-endpoint");
    if (!t) die(t.error().message);
    options.tracer = std::move(*t);
  }
  uint64_t seed = a.seed ? a.seed : std::random_device{}();
  std::mt19937_64 rng(seed);
  Volume v(options);
  check(v.activate(gen, Ms(a.activate_timeout_s * 1000)), "activation");
  auto snap = v.snapshot();
  say("active: generation {}, {} blocks of {} bytes ({}), seed {}", snap.generation,
      v.total_blocks(), v.block_size(), format_size(v.size_bytes()), seed);
  std::string cmd =
      app.get_subcommands().empty() ? "one" : app.get_subcommands().front()->get_name();
  if (cmd == "one")
    workload_one(v, rng);
  else if (cmd == "rand")
    workload_rand(v, rng, a.count);
  else if (cmd == "fill")
    workload_fill(v, seed);
  else if (cmd == "big")
    workload_big(v, rng);
  else if (cmd == "verify")
    workload_verify(v, a, rng);
  else if (cmd == "perf")
    workload_perf(v, a, rng);
  check(v.deactivate(Ms(60000)), "deactivation");
  say("done");
  std::fflush(stdout);
  return 0;
}
