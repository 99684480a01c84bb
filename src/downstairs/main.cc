// crucible-downstairs: create, serve, export, compare and verify one replica's region.
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <asio/io_context.hpp>
#include <asio/signal_set.hpp>
#include <cstdio>
#include <iostream>

#include "common/address.h"
#include "common/log.h"
#include "common/memory.h"
#include "common/service.h"
#include "common/tls_files.h"
#include "common/units.h"
#include "downstairs/admin.h"
#include "downstairs/core.h"
#include "downstairs/region.h"
#include "downstairs/server.h"
#include "downstairs/snapshot.h"
#include "metrics/downstairs_metrics.h"
#include "metrics/metrics.h"
#include "metrics/trace_metrics.h"
#include "proto/tls.h"
#include "trace/export.h"

namespace {

using namespace cru;
using namespace cru::downstairs;

int fail_with(const Error& e) {
  std::fprintf(stderr, "crucible-downstairs: %s\n", e.to_string().c_str());
  return 1;
}

// Every extent is an open file and every connection a socket; make sure the process may
// hold them all. Descriptors beyond those: repair transfers, logs and the like.
constexpr rlim_t kSpareFileDescriptors = 256;
Status raise_file_limit(uint32_t extents, size_t connections) {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return {};
  rlim_t want = static_cast<rlim_t>(extents) + connections + kSpareFileDescriptors;
  if (lim.rlim_cur >= want) return {};
  lim.rlim_cur = std::min(want, lim.rlim_max);
  setrlimit(RLIMIT_NOFILE, &lim);
  if (lim.rlim_cur < want)
    return fail(
        ErrorCode::kInvalidArgument,
        fmt::format(
            "the region has {} extents and --max-connections is {}, but this process may open "
            "only {} files (raise ulimit -n or lower --max-connections)",
            extents, connections, lim.rlim_max));
  return {};
}

// "read=0.1,write=0.2,flush=0.05" -> probabilities.
Result<FaultInjection> parse_inject(const std::string& spec) {
  FaultInjection f;
  size_t pos = 0;
  while (pos < spec.size()) {
    size_t comma = spec.find(',', pos);
    std::string item =
        spec.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    pos = comma == std::string::npos ? spec.size() : comma + 1;
    size_t eq = item.find('=');
    auto bad = [&] {
      return fail(
          ErrorCode::kInvalidArgument,
          fmt::format("--inject-errors: '{}' is not read=P, write=P or flush=P with P in [0, 1]",
                      item));
    };
    if (eq == std::string::npos) return bad();
    std::string key = item.substr(0, eq);
    double p = 0;
    try {
      size_t used = 0;
      p = std::stod(item.substr(eq + 1), &used);
      if (used != item.size() - eq - 1) return bad();
    } catch (const std::exception&) {
      return bad();
    }
    if (!(p >= 0 && p <= 1)) return bad();
    if (key == "read")
      f.read_error = p;
    else if (key == "write")
      f.write_error = p;
    else if (key == "flush")
      f.flush_error = p;
    else
      return bad();
  }
  return f;
}

struct CreateArgs {
  std::string uuid, dir, import, size;
  uint16_t port = 0;
  uint32_t block_size = kDefaultBlockSize;
  uint64_t extent_size = 0;
  uint32_t extent_count = 0;
  bool encrypted = false;
  bool sparse = false;
};

int cmd_create(const CreateArgs& a) {
  auto uuid = Uuid::parse(a.uuid);
  if (!uuid)
    return fail_with(Error{ErrorCode::kInvalidArgument, "-u/--uuid: " + uuid.error().message});
  RegionOptions o;
  o.def.uuid = *uuid;
  o.def.block_size = a.block_size;
  o.def.encrypted = a.encrypted;
  o.default_port = a.port;
  o.space = a.sparse ? Space::kRelease : Space::kKeep;
  if (!proto::valid_block_size(a.block_size)) return fail_with(validate_geometry(o.def).error());
  o.def.extent_size =
      a.extent_size ? a.extent_size : std::max<uint64_t>(1, kDefaultExtentBytes / a.block_size);
  if (!a.size.empty()) {
    if (a.extent_count)
      return fail_with(
          Error{ErrorCode::kInvalidArgument, "give --size or --extent-count, not both"});
    auto bytes = parse_size(a.size);
    if (!bytes)
      return fail_with(Error{ErrorCode::kInvalidArgument, "--size: " + bytes.error().message});
    uint64_t count = (*bytes + o.def.extent_bytes() - 1) / o.def.extent_bytes();
    if (count == 0 || count > UINT32_MAX)
      return fail_with(Error{ErrorCode::kInvalidArgument,
                             fmt::format("--size {} gives {} extents", a.size, count)});
    o.def.extent_count = static_cast<uint32_t>(count);
  } else {
    o.def.extent_count =
        a.extent_count ? a.extent_count : (a.import.empty() ? kDefaultExtentCount : 1);
  }
  if (auto s = validate_geometry(o.def); !s) return fail_with(s.error());
  if (!a.import.empty() && a.encrypted)
    return fail_with(Error{ErrorCode::kUnsupported,
                           "-i cannot import into an --encrypted region (no key here)"});
  auto region = Region::create(posix_fs(), a.dir, o);
  if (!region) return fail_with(region.error());
  if (!a.import.empty()) {
    auto stats = import_file(**region, a.import);
    if (!stats) return fail_with(stats.error());
    std::printf(
        "imported %s (%s): %u extents created, %llu blocks copied (%llu all-zero blocks left "
        "sparse)\n",
        a.import.c_str(), format_size(stats->file_bytes).c_str(), (*region)->def().extent_count,
        static_cast<unsigned long long>(stats->blocks_copied) + stats->zero_blocks,
        static_cast<unsigned long long>(stats->zero_blocks));
  }
  const auto& d = (*region)->def();
  std::printf("created region %s in %s: %u extents x %llu blocks x %u bytes = %s, %s%s%s\n",
              d.uuid.to_string().c_str(), a.dir.c_str(), d.extent_count,
              static_cast<unsigned long long>(d.extent_size), d.block_size,
              format_size(d.total_bytes()).c_str(), a.sparse ? "sparse" : "allocated",
              d.encrypted ? ", encrypted" : "",
              a.port ? fmt::format(", port {}", a.port).c_str() : "");
  return 0;
}

struct RunArgs {
  std::string dir, address = "0.0.0.0", inject;
  std::string snapshot;  // serve DIR/snapshots/NAME read-only
  std::string tls_cert, tls_key, tls_ca;
  int port = -1;
  bool read_only = false, lossy = false;
  size_t max_connections = kMaxConnections;
  std::string memory_budget, peer_memory_budget;
  std::string metrics;         // IP:PORT for Prometheus; empty: off
  std::string trace_endpoint;  // HOST:PORT or http://HOST:PORT; empty: off
};

// --max-connections, --memory-budget and --peer-memory-budget, checked together.
Result<ServerOptions> server_options(const RunArgs& a) {
  ServerOptions o;
  o.max_connections = a.max_connections;
  auto size_flag = [](const char* flag, const std::string& text, uint64_t& out) -> Status {
    if (text.empty()) return {};
    auto bytes = parse_size(text);
    if (!bytes)
      return fail(ErrorCode::kInvalidArgument, fmt::format("{}: {}", flag, bytes.error().message));
    out = *bytes;
    return {};
  };
  CRU_TRY(size_flag("--memory-budget", a.memory_budget, o.memory.total_bytes));
  CRU_TRY(size_flag("--peer-memory-budget", a.peer_memory_budget, o.memory.peer_bytes));
  CRU_TRY(validate_server_options(o));
  return o;
}

uint32_t count_damaged(const Region& region) {
  uint32_t n = 0;
  for (uint32_t e = 0; e < region.def().extent_count; ++e) n += region.damage(ExtentId{e}) ? 1 : 0;
  return n;
}

int cmd_run(RunArgs a) {
  // Flags first: a typo is reported as such, whatever the state of the region.
  if (!a.trace_endpoint.empty())
    if (auto e = trace::parse_endpoint(a.trace_endpoint, "--trace-endpoint"); !e)
      return fail_with(e.error());
  if (!a.snapshot.empty()) {
    if (auto s = validate_snapshot_name(a.snapshot); !s)
      return fail_with(Error{ErrorCode::kInvalidArgument, "--snapshot: " + s.error().message});
    // The region's default port belongs to the live region beside it.
    if (a.port < 0)
      return fail_with(Error{ErrorCode::kInvalidArgument,
                             "--snapshot needs -p PORT (the region's default port is the live "
                             "region's)"});
    const std::string dir = snapshot_dir(a.dir, a.snapshot);
    auto there = posix_fs().exists(dir);
    if (!there) return fail_with(there.error());
    if (!*there)
      return fail_with(
          Error{ErrorCode::kNotFound, fmt::format("--snapshot: no snapshot named '{}' in {} (see "
                                                  "'crucible-downstairs snapshot list -d {}')",
                                                  a.snapshot, a.dir, a.dir)});
    if (!a.read_only) log::info("--snapshot {}: serving it read-only", a.snapshot);
    a.read_only = true;  // a snapshot is immutable
    a.dir = dir;
  }
  auto options = Region::read_options(posix_fs(), a.dir);
  if (!options) return fail_with(options.error());
  int port = a.port >= 0 ? a.port : options->default_port;
  if (a.port < 0 && options->default_port == 0)
    return fail_with(
        Error{ErrorCode::kInvalidArgument,
              fmt::format("no port: give -p PORT (the region in {} has no default port)", a.dir)});
  auto server_opts = server_options(a);
  if (!server_opts) return fail_with(server_opts.error());
  if (auto s = raise_file_limit(options->def.extent_count, server_opts->max_connections); !s)
    return fail_with(s.error());
  CoreOptions core_options;
  core_options.read_only = a.read_only;
  if (!a.inject.empty()) {
    auto f = parse_inject(a.inject);
    if (!f) return fail_with(f.error());
    core_options.faults = *f;
  }
  core_options.faults.lossy = a.lossy;
  core_options.faults.seed = std::random_device{}();
  if (!a.metrics.empty()) {
    if (auto m = parse_listen_address(a.metrics); !m)
      return fail_with(
          Error{ErrorCode::kInvalidArgument, fmt::format("--metrics: {}", m.error().message)});
    core_options.clock = [] { return std::chrono::steady_clock::now(); };
  }
  if (!a.trace_endpoint.empty()) {
    // No ratio of its own: the downstairs traces the jobs the upstairs sampled (they carry
    // a trace context), and every failed job and repair.
    auto t = trace::make_tracer("crucible-downstairs", a.trace_endpoint, 0, "--trace-endpoint");
    if (!t) return fail_with(t.error());
    core_options.tracer = std::move(*t);
    core_options.clock = [] { return std::chrono::steady_clock::now(); };
  }
  asio::error_code ec;
  auto addr = asio::ip::make_address(a.address, ec);
  if (ec)
    return fail_with(Error{ErrorCode::kInvalidArgument,
                           fmt::format("-a/--address '{}': {}", a.address, ec.message())});
  auto tls_files = tls_files_from_flags(a.tls_cert, a.tls_key, a.tls_ca);
  if (!tls_files) return fail_with(tls_files.error());
  if (*tls_files) {
    auto tls = proto::TlsContext::load(**tls_files);
    if (!tls) return fail_with(tls.error());
    server_opts->tls = std::move(*tls);
  }
  auto region = Region::open(posix_fs(), a.dir, a.read_only);
  if (!region) return fail_with(region.error());
  if (uint32_t n = count_damaged(**region); n > 0)
    log::warn("{} of {} extents are damaged: the upstairs repairs them from the other replicas", n,
              (*region)->def().extent_count);

  asio::io_context io;
  std::unique_ptr<Server> server;
  Core core(**region, core_options);
  try {
    server = std::make_unique<Server>(
        io, core, asio::ip::tcp::endpoint(addr, static_cast<uint16_t>(port)), *server_opts);
  } catch (const std::system_error& e) {
    return fail_with(Error{ErrorCode::kIo,
                           fmt::format("cannot listen on {}:{}: {}", a.address, port, e.what())});
  }
  // host:port, an IPv6 address in brackets: the upstairs refuses anything else.
  core.set_repair_addr(addr.is_v6() ? fmt::format("[{}]:{}", a.address, server->port())
                                    : fmt::format("{}:{}", a.address, server->port()));
  const auto& d = (*region)->def();
  log::info("serving region {} ({} extents x {} blocks x {} bytes{}{}) from {}", d.uuid,
            d.extent_count, d.extent_size, d.block_size, d.encrypted ? ", encrypted" : "",
            a.read_only ? ", read-only" : "", a.dir);
  if (*tls_files)
    log::info(
        "mutual TLS: certificate {}, CA {}; peers without a certificate from this CA are "
        "refused",
        (*tls_files)->cert, (*tls_files)->ca);
  if (core_options.faults.read_error + core_options.faults.write_error +
              core_options.faults.flush_error >
          0 ||
      a.lossy)
    log::warn("fault injection on: read={} write={} flush={} lossy={}",
              core_options.faults.read_error, core_options.faults.write_error,
              core_options.faults.flush_error, a.lossy);
  // Bound before the port line, so a failure here is not mistaken for a start. Declared
  // after the core it reads, so it stops first.
  std::unique_ptr<metrics::Endpoint> metrics_endpoint;
  if (!a.metrics.empty()) {
    std::vector<std::shared_ptr<prometheus::Collectable>> collectors = {
        std::make_shared<metrics::DownstairsCollector>(core.stats())};
    if (core_options.tracer)
      collectors.push_back(std::make_shared<metrics::TraceCollector>(core_options.tracer));
    auto e = metrics::Endpoint::start(a.metrics, "--metrics", std::move(collectors));
    if (!e) return fail_with(e.error());
    metrics_endpoint = std::move(*e);
  }
  // Scripts and tests read these lines to learn the ports (port 0 picks a free one).
  std::printf("listening on %s:%u\n", a.address.c_str(), server->port());
  if (metrics_endpoint)
    std::printf("metrics on http://%s:%u/metrics\n",
                a.metrics.substr(0, a.metrics.rfind(':')).c_str(), metrics_endpoint->port());
  std::fflush(stdout);
  server->start();
  notify_ready(fmt::format("serving {} on port {}", a.dir, server->port()));
  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const asio::error_code& e, int sig) {
    if (e) return;
    log::info("signal {}: stopping", sig);
    notify_stopping("stopping: settling the extents");
    server->stop();
    io.stop();
    if (Status s = (*region)->settle(); !s)
      log::warn("settling the extents at exit: {}", s.error().message);
  });
  io.run();
  return 0;
}

int cmd_export(const std::string& dir, const std::string& out, uint64_t skip,
               std::optional<uint64_t> count) {
  auto region = Region::open(posix_fs(), dir, true);
  if (!region) return fail_with(region.error());
  auto n = export_file(**region, out, skip, count);
  if (!n) return fail_with(n.error());
  std::printf("exported %llu blocks (%s) to %s\n", static_cast<unsigned long long>(*n),
              format_size(*n * (*region)->def().block_size).c_str(), out.c_str());
  return 0;
}

int cmd_dump(const std::vector<std::string>& dirs, const DumpOptions& o) {
  std::vector<std::unique_ptr<Region>> owned;
  std::vector<Region*> regions;
  for (const auto& d : dirs) {
    auto r = Region::open(posix_fs(), d, true);
    if (!r) return fail_with(r.error());
    regions.push_back(r->get());
    owned.push_back(std::move(*r));
  }
  auto report = dump(regions, dirs, o);
  if (!report) return fail_with(report.error());
  std::fputs(report->text.c_str(), stdout);
  return report->differ ? 1 : 0;
}

int cmd_snapshot_list(const std::string& dir) {
  auto region = Region::read_options(posix_fs(), dir);  // a region directory, or say so
  if (!region) return fail_with(region.error());
  auto list = list_snapshots(posix_fs(), dir);
  if (!list) return fail_with(list.error());
  if (list->empty()) std::printf("no snapshots in %s\n", dir.c_str());
  for (const auto& s : *list) {
    if (!s.problem.empty()) {
      std::printf("%s\tunreadable: %s\n", s.name.c_str(), s.problem.c_str());
      continue;
    }
    std::printf("%s\tflush %llu\tgeneration %llu\t%s\n", s.name.c_str(),
                static_cast<unsigned long long>(s.flush.value),
                static_cast<unsigned long long>(s.generation.value),
                s.method == SnapshotMethod::kReflink
                    ? "reflink"
                    : fmt::format("copy ({})", format_size(s.bytes_copied)).c_str());
  }
  return 0;
}

int cmd_snapshot_delete(const std::string& dir, const std::string& name) {
  auto region = Region::read_options(posix_fs(), dir);
  if (!region) return fail_with(region.error());
  if (auto s = delete_snapshot(posix_fs(), dir, name); !s) return fail_with(s.error());
  std::printf("deleted snapshot %s of %s\n", name.c_str(), dir.c_str());
  return 0;
}

int cmd_verify(const std::string& dir) {
  auto region = Region::open(posix_fs(), dir, true);
  if (!region) return fail_with(region.error());
  auto report = verify(**region);
  if (!report) return fail_with(report.error());
  std::fputs(report->text.c_str(), stdout);
  return report->mismatches == 0 && report->damaged_extents == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  cru::log::init("downstairs");
  cru::keep_io_buffers_in_heap();
  CLI::App app{
      "crucible-downstairs: one replica of a Crucible volume (a region of extent files) served "
      "over TCP"};
  app.set_version_flag("--version", cru::version_line("crucible-downstairs"));
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));

  CreateArgs ca;
  auto* create = app.add_subcommand("create", "create a region (optionally importing a file)");
  create->add_option("-u,--uuid", ca.uuid, "region UUID (e.g. $(uuidgen))")->required();
  create->add_option("-d,--data,--dir", ca.dir, "region directory")->required();
  create->add_option("-p,--port", ca.port, "default port for 'run'");
  create->add_option("--block-size", ca.block_size, "bytes per block: 512..32768, a power of two")
      ->capture_default_str();
  create->add_option("--extent-size", ca.extent_size, "blocks per extent (default: 64 MiB worth)");
  create->add_option("--extent-count", ca.extent_count,
                     "number of extents (default: 16, i.e. 1 GiB)");
  create->add_option("--size", ca.size, "volume size, e.g. 10G (picks the extent count)");
  create->add_flag("--encrypted", ca.encrypted, "the upstairs encrypts every block");
  create->add_flag("--sparse", ca.sparse,
                   "allocate disk space on first write, give it back on discard (default: "
                   "allocate the whole region now, so a full disk shows here, not mid-write)");
  create->add_option("-i,--import-path", ca.import, "import this file (grows the region to fit)");

  RunArgs ra;
  auto* run = app.add_subcommand("run", "serve a region");
  run->add_option("-d,--data,--dir", ra.dir, "region directory")->required();
  run->add_option("-p,--port", ra.port, "TCP port (0: any free port; default: the region's)")
      ->check(CLI::Range(0, 65535));
  run->add_option("-a,--address", ra.address, "address to listen on")->capture_default_str();
  run->add_flag("--read-only", ra.read_only, "open the region read-only and refuse writes");
  run->add_option("--snapshot", ra.snapshot,
                  "serve snapshot NAME of the region (DIR/snapshots/NAME) read-only; needs -p");
  run->add_option("--max-connections", ra.max_connections,
                  "connections at once; at the limit a new one replaces the oldest that has not "
                  "negotiated, or is closed")
      ->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{1} << 20));
  run->add_option("--memory-budget", ra.memory_budget,
                  "memory held for all peers together, e.g. 1G (default: 1 GiB; at least twice "
                  "--peer-memory-budget)");
  run->add_option("--peer-memory-budget", ra.peer_memory_budget,
                  "memory held for one peer (jobs, outbox, frame being read), e.g. 256M "
                  "(default: 256 MiB; at least 72 MiB, one largest frame)");
  run->add_flag("--lossy", ra.lossy,
                "test only: delay a quarter of jobs so they complete out of order");
  run->add_option("--tls-cert", ra.tls_cert,
                  "mutual TLS: this downstairs's certificate (PEM; with --tls-key, --tls-ca)");
  run->add_option("--tls-key", ra.tls_key, "mutual TLS: the certificate's private key (PEM)");
  run->add_option("--tls-ca", ra.tls_ca,
                  "mutual TLS: the CA that signed every peer's certificate (PEM)");
  run->add_option("--metrics", ra.metrics,
                  "serve Prometheus metrics at http://ADDR/metrics (IP:PORT; port 0: any free)");
  run->add_option("--trace-endpoint", ra.trace_endpoint,
                  "send spans of traced jobs, failed jobs and repairs to a Jaeger agent "
                  "(HOST:PORT, UDP) or an OTLP/HTTP receiver (http://HOST:PORT)");
  run->add_option("--inject-errors", ra.inject,
                  "test only: read=P,write=P,flush=P error probabilities");

  std::string ex_dir, ex_out;
  uint64_t ex_skip = 0;
  std::optional<uint64_t> ex_count;
  auto* exp = app.add_subcommand("export", "write blocks of a region to a flat file");
  exp->add_option("-d,--data,--dir", ex_dir, "region directory")->required();
  exp->add_option("-e,--export-path", ex_out, "output file")->required();
  exp->add_option("--count", ex_count, "blocks to export (default: all)");
  exp->add_option("-s,--skip", ex_skip, "blocks to skip first");

  std::vector<std::string> dump_dirs;
  DumpOptions dump_options;
  auto* dmp = app.add_subcommand(
      "dump", "compare extent metadata of one or more regions; non-zero exit if they differ");
  dmp->add_option("-d,--data,--dir", dump_dirs, "region directory (repeat for each replica)")
      ->required();
  dmp->add_option("-e,--extent", dump_options.extent, "only this extent");
  dmp->add_option("-b,--block", dump_options.block, "show this block's contexts in each region");
  dmp->add_flag("-o,--only-diffs", dump_options.only_diffs, "show only extents that differ");

  std::string verify_dir;
  auto* ver = app.add_subcommand("verify", "check every block against its stored context");
  ver->add_option("-d,--data,--dir", verify_dir, "region directory")->required();

  std::string snap_dir, snap_name;
  auto* snap = app.add_subcommand(
      "snapshot",
      "list or delete snapshots of a region (taken by `crucible-fuse snapshot NAME`; served "
      "with `run --snapshot NAME`)");
  snap->require_subcommand(1);
  auto* snap_list = snap->add_subcommand("list", "list the region's snapshots");
  snap_list->add_option("-d,--data,--dir", snap_dir, "region directory")->required();
  auto* snap_delete = snap->add_subcommand("delete", "delete one snapshot");
  snap_delete->add_option("-d,--data,--dir", snap_dir, "region directory")->required();
  snap_delete->add_option("name", snap_name, "snapshot name")->required();

  CLI11_PARSE(app, argc, argv);
  cru::log::set_level(log_level);
  if (create->parsed()) return cmd_create(ca);
  if (run->parsed()) return cmd_run(ra);
  if (exp->parsed()) return cmd_export(ex_dir, ex_out, ex_skip, ex_count);
  if (dmp->parsed()) return cmd_dump(dump_dirs, dump_options);
  if (ver->parsed()) return cmd_verify(verify_dir);
  if (snap_list->parsed()) return cmd_snapshot_list(snap_dir);
  if (snap_delete->parsed()) return cmd_snapshot_delete(snap_dir, snap_name);
  return 2;
}
