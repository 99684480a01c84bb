// crucible-downstairs as a real program: the README walkthrough, import/export, verify,
// dump, refusals of bad flags, and extent repair between two running processes. Each
// test works in its own temp dir; children and dirs are cleaned up even on failure, and
// every wait has a hard timeout.
#include <fmt/ranges.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <regex>
#include <set>

#include "common/hash.h"
#include "proto/limits.h"
#include "support/cluster.h"
#include "support/process.h"

namespace cru::test {
namespace {

using namespace cru::proto;
namespace fs = std::filesystem;

constexpr Millis kCommandTimeout{60000};
constexpr Millis kStartTimeout{15000};
constexpr Millis kIoTimeout{15000};

std::string downstairs() { return bin("crucible-downstairs"); }

CommandResult ds(std::vector<std::string> args, const std::string& cwd = "") {
  args.insert(args.begin(), downstairs());
  return run_command(std::move(args), kCommandTimeout, ProcessOptions{{}, cwd});
}

// `count` distinct free ports.
std::vector<uint16_t> free_ports(size_t count) {
  std::set<uint16_t> ports;
  while (ports.size() < count) ports.insert(free_port());
  return {ports.begin(), ports.end()};
}

// A pseudo-random file of `bytes` bytes; returns its contents.
std::vector<char> write_random_file(const std::string& path, size_t bytes, uint64_t seed) {
  std::vector<char> data(bytes);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < bytes; i += 8) {
    uint64_t v = rng();
    std::memcpy(data.data() + i, &v, std::min<size_t>(8, bytes - i));
  }
  std::ofstream(path, std::ios::binary)
      .write(data.data(), static_cast<std::streamsize>(data.size()));
  return data;
}

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A running `crucible-downstairs run`; its port from the "listening on" line.
struct Running {
  std::unique_ptr<Process> process;
  uint16_t port = 0;
};

Result<Running> start(std::vector<std::string> args, const std::string& cwd = "") {
  args.insert(args.begin(), {downstairs(), "run"});
  auto p = Process::start(std::move(args), ProcessOptions{{}, cwd});
  if (!p) return tl::unexpected(p.error());
  auto line = (*p)->wait_for_line(std::regex("listening on .*:[0-9]+"), kStartTimeout);
  if (!line) return tl::unexpected(line.error());
  std::smatch m;
  std::regex_search(*line, m, std::regex(":([0-9]+)\\s*$"));
  return Running{std::move(*p), static_cast<uint16_t>(std::stoi(m[1]))};
}

// SIGTERM, then the exit status (a clean stop exits 0).
ExitStatus stop(Running& r) {
  r.process->kill(SIGTERM);
  return r.process->wait(kStartTimeout);
}

Result<Peer> upstairs(uint16_t port, uint64_t gen, RegionDefinition* def = nullptr) {
  auto p = Peer::connect(port, kIoTimeout);
  if (!p) return p;
  auto d = p->negotiate(Uuid::random(), Uuid::random(), Generation{gen}, kIoTimeout);
  if (!d) return tl::unexpected(d.error());
  if (def) *def = *d;
  return p;
}

// One write and read back through a negotiated peer.
void expect_io_works(Peer& p, uint64_t job, uint32_t block_size) {
  ByteBuffer data(block_size);
  for (size_t i = 0; i < data.size(); ++i) data.data()[i] = static_cast<std::byte>(i * 7 + job);
  Write w;
  w.job_id = JobId{job};
  w.start = BlockIndex{1};
  w.block_size = block_size;
  w.contexts = {{integrity_hash(data.span()), std::nullopt}};
  w.data = Bytes(std::move(data));
  ASSERT_TRUE(p.send(w));
  auto ack = p.recv_as<Ack>(kIoTimeout);
  ASSERT_TRUE(ack) << ack.error().to_string();
  ASSERT_TRUE(ack->status.is_ok()) << ack->status.message;
  ASSERT_TRUE(p.send(Read{JobId{job + 1}, {JobId{job}}, BlockIndex{1}, 1}));
  auto r = p.recv_as<ReadResponse>(kIoTimeout);
  ASSERT_TRUE(r) << r.error().to_string();
  ASSERT_TRUE(r->status.is_ok()) << r->status.message;
  EXPECT_EQ(r->data, w.data);
}

template <typename T>
Result<T> job(Peer& p, const Message& m) {
  if (auto s = p.send(m); !s) return tl::unexpected(s.error());
  return p.recv_as<T>(kIoTimeout);
}

// ---- the README walkthrough ----------------------------------------------------------------

TEST(DownstairsE2e, CreateWithAPortThenRunServesOnThatPort) {
  TempDir tmp;
  uint16_t port = free_ports(1)[0];
  std::string uuid = Uuid::random().to_string();
  auto created =
      ds({"create", "-u", uuid, "-p", std::to_string(port), "-d", "var/3801"}, tmp.path());
  ASSERT_EQ(created.exit_code(), 0) << created.describe();
  EXPECT_NE(created.out.find(uuid), std::string::npos) << created.out;
  EXPECT_TRUE(fs::exists(tmp.file("var/3801/region.json")));

  auto r = start({"-d", "var/3801"}, tmp.path());
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(r->port, port);
  RegionDefinition def;
  auto p = upstairs(port, 1, &def);
  ASSERT_TRUE(p) << p.error().to_string() << "\n" << r->process->output();
  EXPECT_EQ(def.uuid.to_string(), uuid);
  EXPECT_EQ(def.block_size, 4096u);
  EXPECT_EQ(def.total_bytes(), 1ull << 30) << "the default region is 1 GiB";
  expect_io_works(*p, 1000, def.block_size);
  auto status = stop(*r);
  EXPECT_TRUE(status.exited() && status.code == 0) << status.describe() << "\n"
                                                   << r->process->output();
}

TEST(DownstairsE2e, ThreeRegionsServeSideBySide) {
  TempDir tmp;
  auto ports = free_ports(3);
  std::vector<Running> running;
  for (size_t i = 0; i < 3; ++i) {
    std::string dir = "var/" + std::to_string(3801 + i);
    auto c = ds({"create", "-u", Uuid::random().to_string(), "-p", std::to_string(ports[i]), "-d",
                 dir, "--extent-size", "64", "--extent-count", "4"},
                tmp.path());
    ASSERT_EQ(c.exit_code(), 0) << c.describe();
    auto r = start({"-d", dir}, tmp.path());
    ASSERT_TRUE(r) << r.error().to_string();
    EXPECT_EQ(r->port, ports[i]);
    running.push_back(std::move(*r));
  }
  for (size_t i = 0; i < 3; ++i) {
    SCOPED_TRACE(fmt::format("downstairs {}", i));
    auto p = upstairs(ports[i], 1);
    ASSERT_TRUE(p) << p.error().to_string();
    expect_io_works(*p, 1000, 4096);
  }
  for (auto& r : running) {
    auto status = stop(r);
    EXPECT_TRUE(status.exited() && status.code == 0) << status.describe();
  }
}

// ---- import, export, verify, dump ----------------------------------------------------------

void import_export_round_trip(size_t bytes, const std::vector<std::string>& geometry) {
  TempDir tmp;
  std::string input = tmp.file("input.raw");
  auto data = write_random_file(input, bytes, bytes);
  std::vector<std::string> args = {"create", "-u", Uuid::random().to_string(), "-d", tmp.file("r"),
                                   "-i",     input};
  args.insert(args.end(), geometry.begin(), geometry.end());
  auto c = ds(args);
  ASSERT_EQ(c.exit_code(), 0) << c.describe();
  const uint64_t bs = 4096;
  const uint64_t blocks = (bytes + bs - 1) / bs;
  EXPECT_NE(c.out.find(fmt::format("{} blocks copied", blocks)), std::string::npos) << c.out;

  auto e = ds({"export", "-d", tmp.file("r"), "-e", tmp.file("out.raw"), "--count",
               std::to_string(blocks)});
  ASSERT_EQ(e.exit_code(), 0) << e.describe();
  auto out = read_file(tmp.file("out.raw"));
  ASSERT_EQ(out.size(), blocks * bs);
  EXPECT_TRUE(std::equal(data.begin(), data.end(), out.begin()))
      << "the file comes back byte for byte";
  EXPECT_TRUE(std::all_of(out.begin() + static_cast<ptrdiff_t>(bytes), out.end(), [](char x) {
    return x == 0;
  })) << "the tail of the last block is zero padding";

  auto v = ds({"verify", "-d", tmp.file("r")});
  EXPECT_EQ(v.exit_code(), 0) << v.describe();
  EXPECT_NE(v.out.find("all match"), std::string::npos) << v.out;
}

TEST(DownstairsE2e, ImportOfAFileNotAMultipleOfTheBlockSizeExportsItBack) {
  import_export_round_trip(10 * 4096 + 123, {"--block-size", "4096", "--extent-size", "4"});
}

TEST(DownstairsE2e, ImportOfTensOfMegabytesExportsItBack) {
  import_export_round_trip(24 * 1024 * 1024 + 1000,
                           {"--block-size", "4096", "--extent-size", "1024"});
}

TEST(DownstairsE2e, ExportWithSkipStartsAtThatBlockInAnyExtent) {
  TempDir tmp;
  std::string input = tmp.file("input.raw");
  auto data = write_random_file(input, 12 * 4096, 5);
  auto c = ds({"create", "-u", Uuid::random().to_string(), "-d", tmp.file("r"), "-i", input,
               "--block-size", "4096", "--extent-size", "4"});
  ASSERT_EQ(c.exit_code(), 0) << c.describe();
  auto e =
      ds({"export", "-d", tmp.file("r"), "-e", tmp.file("out.raw"), "--skip", "5", "--count", "6"});
  ASSERT_EQ(e.exit_code(), 0) << e.describe();
  auto out = read_file(tmp.file("out.raw"));
  ASSERT_EQ(out.size(), 6u * 4096);
  EXPECT_TRUE(std::equal(out.begin(), out.end(), data.begin() + 5 * 4096))
      << "blocks 5..10, across extents 1 and 2";
  auto past =
      ds({"export", "-d", tmp.file("r"), "-e", tmp.file("x.raw"), "--skip", "10", "--count", "3"});
  EXPECT_TRUE(past.status.exited() && past.status.code != 0) << past.describe();
  EXPECT_NE(past.err.find("--count"), std::string::npos) << past.err;
}

struct TwoRegions {
  TempDir tmp;
  std::vector<char> data;
  std::string a = tmp.file("a"), b = tmp.file("b");
};

// Region a holds an imported file (flushed, flush number 1); region b is fresh.
void make_two_regions(TwoRegions& t) {
  std::string input = t.tmp.file("input.raw");
  t.data = write_random_file(input, 6 * 4096, 9);
  std::vector<std::string> geometry = {"--block-size",   "4096", "--extent-size", "4",
                                       "--extent-count", "3"};
  auto args = [&](const std::string& dir) {
    std::vector<std::string> v = {"create", "-u", Uuid::random().to_string(), "-d", dir};
    v.insert(v.end(), geometry.begin(), geometry.end());
    return v;
  };
  auto a = args(t.a);
  a.insert(a.end(), {"-i", input});
  auto ca = ds(a);
  ASSERT_EQ(ca.exit_code(), 0) << ca.describe();
  auto cb = ds(args(t.b));
  ASSERT_EQ(cb.exit_code(), 0) << cb.describe();
}

TEST(DownstairsE2e, DumpOfTwoFreshRegionsFindsNoDifference) {
  TempDir tmp;
  for (const char* d : {"x", "y"}) {
    auto c = ds({"create", "-u", Uuid::random().to_string(), "-d", tmp.file(d), "--extent-size",
                 "8", "--extent-count", "2"});
    ASSERT_EQ(c.exit_code(), 0) << c.describe();
  }
  auto d = ds({"dump", "-d", tmp.file("x"), "-d", tmp.file("y")});
  EXPECT_EQ(d.exit_code(), 0) << d.describe();
  EXPECT_NE(d.out.find("all extents match"), std::string::npos) << d.out;
}

TEST(DownstairsE2e, DumpOfRegionsWithDifferentFlushNumbersFailsNamingTheExtent) {
  TwoRegions t;
  make_two_regions(t);
  auto d = ds({"dump", "-d", t.a, "-d", t.b});
  EXPECT_NE(d.exit_code(), 0) << d.describe();
  EXPECT_EQ(d.status.signal, 0) << d.describe();
  // Blocks 0..5 were imported: extents 0 and 1 differ, extent 2 does not.
  std::regex differs0(R"(^\s*0 \|.*differs)", std::regex::multiline);
  std::regex differs2(R"(^\s*2 \|.*differs)", std::regex::multiline);
  EXPECT_TRUE(std::regex_search(d.out, differs0)) << d.out;
  EXPECT_FALSE(std::regex_search(d.out, differs2)) << d.out;
  EXPECT_NE(d.out.find("2 extents differ"), std::string::npos) << d.out;
  auto only2 = ds({"dump", "-d", t.a, "-d", t.b, "-e", "2"});
  EXPECT_EQ(only2.exit_code(), 0) << only2.describe();
}

TEST(DownstairsE2e, DumpOfABlockPrintsEachRegionsContexts) {
  TwoRegions t;
  make_two_regions(t);
  auto d = ds({"dump", "-d", t.a, "-d", t.b, "--block", "1"});
  EXPECT_NE(d.exit_code(), 0) << "the block's data differs: " << d.describe();
  EXPECT_NE(d.out.find("region 0: data xxh64"), std::string::npos) << d.out;
  EXPECT_NE(d.out.find("region 1: data xxh64"), std::string::npos) << d.out;
  auto block1 = std::span(t.data).subspan(4096, 4096);
  uint64_t h = integrity_hash(std::as_bytes(block1));
  EXPECT_NE(d.out.find(fmt::format("hash {:016x}", h)), std::string::npos)
      << "region 0's context:\n"
      << d.out;
  EXPECT_NE(d.out.find("slot 0: empty"), std::string::npos) << "region 1's never-written block:\n"
                                                            << d.out;
  auto same = ds({"dump", "-d", t.a, "-d", t.a, "--block", "1"});
  EXPECT_EQ(same.exit_code(), 0) << same.describe();
}

TEST(DownstairsE2e, VerifyFindsACorruptedBlock) {
  TwoRegions t;
  make_two_regions(t);
  ASSERT_EQ(ds({"verify", "-d", t.a}).exit_code(), 0);
  {
    std::fstream f(t.a + "/00/000/000", std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(4096 + 10);
    char c = static_cast<char>(f.get());
    f.seekp(4096 + 10);
    f.put(static_cast<char>(c ^ 0x5a));
  }
  auto v = ds({"verify", "-d", t.a});
  EXPECT_EQ(v.exit_code(), 1) << v.describe();
  EXPECT_NE(v.out.find("block 1 "), std::string::npos) << v.out;
}

// ---- refusals -------------------------------------------------------------------------------

TEST(DownstairsE2e, CreateRefusesBadFlagsNamingThem) {
  TempDir tmp;
  std::string uuid = Uuid::random().to_string();
  auto ok = ds({"create", "-u", uuid, "-d", tmp.file("exists"), "--extent-size", "8",
                "--extent-count", "1"});
  ASSERT_EQ(ok.exit_code(), 0) << ok.describe();
  struct Case {
    std::vector<std::string> args;
    std::vector<std::string> named;  // each must appear in stderr
  };
  std::vector<Case> cases = {
      {{"-u", "not-a-uuid", "-d", tmp.file("a")}, {"-u/--uuid", "not-a-uuid"}},
      {{"-u", uuid, "-d", tmp.file("exists")}, {tmp.file("exists"), "already"}},
      {{"-u", uuid, "-d", tmp.file("b"), "--block-size", "1000"}, {"--block-size", "1000"}},
      {{"-u", uuid, "-d", tmp.file("c"), "--block-size", "65536"}, {"--block-size", "65536"}},
      {{"-u", uuid, "-d", tmp.file("d"), "--size", "1G", "--extent-count", "4"},
       {"--size", "--extent-count"}},
      {{"-u", uuid, "-d", tmp.file("e"), "--block-size", "4096", "--extent-size", "300000"},
       {"--extent-size", "1 GiB"}},
      {{"-u", uuid, "-d", tmp.file("f"), "--size", "lots"}, {"--size", "lots"}},
  };
  for (auto& c : cases) {
    SCOPED_TRACE(fmt::format("create {}", fmt::join(c.args, " ")));
    c.args.insert(c.args.begin(), "create");
    auto r = ds(c.args);
    EXPECT_TRUE(r.status.exited() && r.status.code != 0) << r.describe();
    for (const auto& n : c.named)
      EXPECT_NE(r.err.find(n), std::string::npos) << "expected '" << n << "' in " << r.err;
  }
  EXPECT_FALSE(fs::exists(tmp.file("b/region.json")));
  EXPECT_FALSE(fs::exists(tmp.file("e/region.json")));
}

// A small tmpfs mounted for one test, unmounted (lazily, whatever is left) at scope exit.
class SmallFs {
 public:
  SmallFs(const std::string& dir, const std::string& size) : dir_(dir) {
    fs::create_directories(dir);
    auto r = run_command({tool("mount"), "-t", "tmpfs", "-o", "size=" + size, "tmpfs", dir},
                         kCommandTimeout);
    mounted_ = r.exit_code() == 0;
    EXPECT_TRUE(mounted_) << r.describe();
  }
  ~SmallFs() {
    if (mounted_) run_command({tool("umount"), "-l", dir_}, kCommandTimeout);
  }
  SmallFs(const SmallFs&) = delete;
  SmallFs& operator=(const SmallFs&) = delete;
  bool mounted() const { return mounted_; }

 private:
  std::string dir_;
  bool mounted_ = false;
};

TEST(DownstairsE2e, CreateOnATooSmallDiskFailsNamingSparseAndTakesNoSpace) {
  TempDir tmp;
  SmallFs small(tmp.file("small"), "24m");
  ASSERT_TRUE(small.mounted());
  const std::string uuid = Uuid::random().to_string();
  // Four extents of 8 MiB (and their slots) do not fit in 24 MiB.
  auto r = ds({"create", "-u", uuid, "-d", tmp.file("small/r"), "--extent-size", "2048",
               "--extent-count", "4"});
  EXPECT_TRUE(r.status.exited() && r.status.code != 0) << r.describe();
  for (const char* named : {"no space left", "--sparse"})
    EXPECT_NE(r.err.find(named), std::string::npos) << "expected '" << named << "' in " << r.err;
  EXPECT_FALSE(fs::exists(tmp.file("small/r/region.json")));
  uintmax_t left = 0;
  for (const auto& e : fs::recursive_directory_iterator(tmp.file("small")))
    if (e.is_regular_file()) left += e.file_size();
  EXPECT_EQ(left, 0u) << "the failed create left files behind";
  // Sparse, the same region is created (the space is taken only as blocks are written).
  auto sparse = ds({"create", "-u", uuid, "-d", tmp.file("small/r"), "--extent-size", "2048",
                    "--extent-count", "4", "--sparse"});
  EXPECT_EQ(sparse.exit_code(), 0) << sparse.describe();
  EXPECT_NE(sparse.out.find("sparse"), std::string::npos) << sparse.out;
}

TEST(DownstairsE2e, RunRefusesAMissingPortAndBadInjectSpecs) {
  TempDir tmp;
  auto c = ds({"create", "-u", Uuid::random().to_string(), "-d", tmp.file("r"), "--extent-size",
               "8", "--extent-count", "1"});
  ASSERT_EQ(c.exit_code(), 0) << c.describe();
  auto no_port = ds({"run", "-d", tmp.file("r")});
  EXPECT_TRUE(no_port.status.exited() && no_port.status.code != 0) << no_port.describe();
  EXPECT_NE(no_port.err.find("-p"), std::string::npos) << no_port.err;
  for (std::string spec : {"bogus", "read=2", "write=0.5,fly=0.1", "flush=x"}) {
    SCOPED_TRACE(spec);
    auto r = ds({"run", "-d", tmp.file("r"), "-p", "0", "--inject-errors", spec});
    EXPECT_TRUE(r.status.exited() && r.status.code != 0) << r.describe();
    EXPECT_NE(r.err.find("--inject-errors"), std::string::npos) << r.err;
  }
  auto missing = ds({"run", "-d", tmp.file("nothing-here"), "-p", "0"});
  EXPECT_TRUE(missing.status.exited() && missing.status.code != 0) << missing.describe();
  EXPECT_NE(missing.err.find("nothing-here"), std::string::npos) << missing.err;
}

TEST(DownstairsE2e, RunRefusesBadMemoryAndConnectionLimitsNamingThem) {
  TempDir tmp;
  auto c = ds({"create", "-u", Uuid::random().to_string(), "-d", tmp.file("r"), "--extent-size",
               "8", "--extent-count", "1"});
  ASSERT_EQ(c.exit_code(), 0) << c.describe();
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--memory-budget", "1X"}, "--memory-budget: '1X' is not a size"},
      {{"--peer-memory-budget", "10M"}, "below one largest frame"},
      {{"--memory-budget", "300M"}, "at least twice --peer-memory-budget"},
      {{"--max-connections", "0"}, "--max-connections"},
  };
  for (const auto& [flags, reason] : cases) {
    SCOPED_TRACE(flags.front() + " " + flags.back());
    std::vector<std::string> args = {"run", "-d", tmp.file("r"), "-p", "0"};
    args.insert(args.end(), flags.begin(), flags.end());
    auto r = ds(args);
    EXPECT_TRUE(r.status.exited() && r.status.code != 0) << r.describe();
    EXPECT_NE(r.err.find(reason), std::string::npos) << r.err;
  }
}

// ---- repair between two running downstairs --------------------------------------------------

struct RepairSetup {
  TempDir tmp;
  std::string a = tmp.file("a"), b = tmp.file("b");
  std::vector<char> data;  // imported into a (and, for the interrupted case, into b)
  static constexpr uint64_t kBlocks = 512;  // per extent: a 2 MiB extent, three repair chunks
};

void create_pair(RepairSetup& s, bool import_into_b) {
  std::string input = s.tmp.file("input.raw");
  s.data = write_random_file(input, RepairSetup::kBlocks * 4096 + 5000, 77);
  for (const auto& dir : {s.a, s.b}) {
    std::vector<std::string> args = {"create",
                                     "-u",
                                     Uuid::random().to_string(),
                                     "-d",
                                     dir,
                                     "--block-size",
                                     "4096",
                                     "--extent-size",
                                     std::to_string(RepairSetup::kBlocks),
                                     "--extent-count",
                                     "2"};
    if (dir == s.a || import_into_b) args.insert(args.end(), {"-i", input});
    auto c = ds(args);
    ASSERT_EQ(c.exit_code(), 0) << c.describe();
  }
}

TEST(DownstairsE2e, LiveRepairCopiesAnExtentBetweenTwoRunningDownstairs) {
  RepairSetup s;
  create_pair(s, false);
  auto ra = start({"-d", s.a, "-p", "0", "-a", "127.0.0.1"});
  ASSERT_TRUE(ra) << ra.error().to_string();
  auto rb = start({"-d", s.b, "-p", "0", "-a", "127.0.0.1"});
  ASSERT_TRUE(rb) << rb.error().to_string();

  auto pa = upstairs(ra->port, 1);
  ASSERT_TRUE(pa) << pa.error().to_string();
  auto pb = upstairs(rb->port, 1);
  ASSERT_TRUE(pb) << pb.error().to_string();
  auto closed_a = job<ExtentLiveCloseAck>(*pa, ExtentLiveClose{JobId{1000}, {}, ExtentId{0}});
  ASSERT_TRUE(closed_a && closed_a->status.is_ok())
      << (closed_a ? closed_a->status.message : closed_a.error().to_string());
  EXPECT_EQ(closed_a->version, (ExtentVersion{Generation{0}, FlushNumber{1}, false}))
      << "imported and flushed";
  auto closed_b = job<ExtentLiveCloseAck>(*pb, ExtentLiveClose{JobId{1000}, {}, ExtentId{0}});
  ASSERT_TRUE(closed_b && closed_b->status.is_ok());
  EXPECT_EQ(closed_b->version, (ExtentVersion{Generation{0}, FlushNumber{0}, false}));

  auto repaired = job<Ack>(*pb, ExtentLiveRepair{JobId{1001},
                                                 {JobId{1000}},
                                                 ExtentId{0},
                                                 ClientId{0},
                                                 fmt::format("127.0.0.1:{}", ra->port)});
  ASSERT_TRUE(repaired) << repaired.error().to_string() << "\n" << rb->process->output();
  EXPECT_TRUE(repaired->status.is_ok()) << repaired->status.message << "\n"
                                        << rb->process->output();
  auto reopen_b = job<Ack>(*pb, ExtentLiveReopen{JobId{1002}, {JobId{1001}}, ExtentId{0}});
  ASSERT_TRUE(reopen_b && reopen_b->status.is_ok());
  auto reopen_a = job<Ack>(*pa, ExtentLiveReopen{JobId{1001}, {JobId{1000}}, ExtentId{0}});
  ASSERT_TRUE(reopen_a && reopen_a->status.is_ok());
  // b now serves a's data for extent 0.
  auto r = job<ReadResponse>(*pb, Read{JobId{1003}, {JobId{1002}}, BlockIndex{0}, 2});
  ASSERT_TRUE(r && r->status.is_ok());
  EXPECT_TRUE(std::equal(s.data.begin(), s.data.begin() + 8192,
                         reinterpret_cast<const char*>(r->data.data())));

  for (auto* run : {&*ra, &*rb}) {
    auto status = stop(*run);
    EXPECT_TRUE(status.exited() && status.code == 0) << status.describe() << "\n"
                                                     << run->process->output();
  }
  for (const auto& dir : {s.a, s.b}) {
    auto v = ds({"verify", "-d", dir});
    EXPECT_EQ(v.exit_code(), 0) << v.describe();
  }
  auto same = ds({"dump", "-d", s.a, "-d", s.b, "-e", "0"});
  EXPECT_EQ(same.exit_code(), 0) << same.describe();
  EXPECT_NE(same.out.find("all extents match"), std::string::npos) << same.out;
  auto whole = ds({"dump", "-d", s.a, "-d", s.b});
  EXPECT_NE(whole.exit_code(), 0) << "extent 1 was not repaired: " << whole.describe();
  auto e = ds({"export", "-d", s.b, "-e", s.tmp.file("b.raw"), "--count",
               std::to_string(RepairSetup::kBlocks)});
  ASSERT_EQ(e.exit_code(), 0) << e.describe();
  auto out = read_file(s.tmp.file("b.raw"));
  EXPECT_TRUE(std::equal(out.begin(), out.end(), s.data.begin()));
}

// The test plays the repair source: it sends one chunk of the extent, then the target is
// killed with SIGKILL in the middle of the transfer. The next start must discard the
// half-received staging file and keep the old extent.
TEST(DownstairsE2e, ARepairKilledMidTransferRecoversOnTheNextOpen) {
  RepairSetup s;
  create_pair(s, true);
  auto rb = start({"-d", s.b, "-p", "0", "-a", "127.0.0.1"});
  ASSERT_TRUE(rb) << rb.error().to_string();
  RegionDefinition def;
  auto pb = upstairs(rb->port, 1, &def);
  ASSERT_TRUE(pb) << pb.error().to_string();
  auto closed = job<ExtentLiveCloseAck>(*pb, ExtentLiveClose{JobId{1000}, {}, ExtentId{0}});
  ASSERT_TRUE(closed && closed->status.is_ok());

  auto source = Listener::listen();
  ASSERT_TRUE(source) << source.error().to_string();
  ASSERT_TRUE(pb->send(ExtentLiveRepair{JobId{1001},
                                        {JobId{1000}},
                                        ExtentId{0},
                                        ClientId{0},
                                        fmt::format("127.0.0.1:{}", source->port())}));
  auto link = source->accept(kIoTimeout);
  ASSERT_TRUE(link) << link.error().to_string() << "\n" << rb->process->output();
  ASSERT_TRUE(link->recv_as<RepairHello>(kIoTimeout));
  ASSERT_TRUE(link->send(RegionInfo{def}));
  auto fetch = link->recv_as<ExtentFetch>(kIoTimeout);
  ASSERT_TRUE(fetch) << fetch.error().to_string();
  EXPECT_EQ(fetch->offset, 0u);
  ASSERT_TRUE(link->send(ExtentChunk{ExtentId{0}, 0, false, Bytes::zeros(kRepairChunkBytes)}));
  const std::string staging = s.b + "/00/000/000.repair";
  EXPECT_TRUE(fs::exists(staging)) << "the target stages before it connects to the source";
  rb->process->kill(SIGKILL);
  auto killed = rb->process->wait(kStartTimeout);
  EXPECT_EQ(killed.signal, SIGKILL) << killed.describe();
  EXPECT_TRUE(fs::exists(staging)) << "a killed process leaves its staging file";

  auto again = start({"-d", s.b, "-p", "0", "-a", "127.0.0.1"});
  ASSERT_TRUE(again) << again.error().to_string();
  EXPECT_FALSE(fs::exists(staging)) << again->process->output();
  auto removed = again->process->find_line("left by an interrupted repair", kStartTimeout);
  EXPECT_TRUE(removed) << removed.error().to_string();
  auto p = upstairs(again->port, 2);
  ASSERT_TRUE(p) << p.error().to_string();
  auto r = job<ReadResponse>(*p, Read{JobId{1000}, {}, BlockIndex{0}, 2});
  ASSERT_TRUE(r && r->status.is_ok());
  EXPECT_TRUE(std::equal(s.data.begin(), s.data.begin() + 8192,
                         reinterpret_cast<const char*>(r->data.data())))
      << "the old extent is intact";
  auto status = stop(*again);
  EXPECT_TRUE(status.exited() && status.code == 0) << status.describe();
  auto v = ds({"verify", "-d", s.b});
  EXPECT_EQ(v.exit_code(), 0) << v.describe();
}

}  // namespace
}  // namespace cru::test
