// Stateful libFuzzer target for the downstairs core (built by `make fuzz` with clang and
// ASan/UBSan). Each input is a script: a region (plain or encrypted, read-write or
// read-only) on the in-memory FaultFs, then a sequence of events decoded from the input:
// upstairs connections opening and closing, plausible negotiation steps and jobs (job ids
// counting up, ranges near the region, hashes that match) to reach deep states, messages
// with every field from the input, raw bytes through the frame decoder, replies from a
// repair source on the core's outgoing connections, disk faults and timer ticks. Every
// message the core sends is encoded as the server shell would. Any CRU_ASSERT, sanitizer
// report or encode() of a message that breaks a protocol limit is a finding.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <set>
#include <vector>

#include "common/log.h"
#include "downstairs/core.h"
#include "downstairs/region.h"
#include "fuzz/fuzz_messages.h"
#include "support/fault_fs.h"

namespace {

using namespace cru;
using namespace cru::proto;
using cru::downstairs::ConnectionId;
using cru::downstairs::Core;
using cru::downstairs::Output;
using namespace cru::fuzz;
using cru::test::FaultFs;

// Upstairs connections open at once: enough for takeovers and read-only sharing.
constexpr size_t kMaxConnections = 8;

class Driver {
 public:
  Driver(FuzzedDataProvider& in, FaultFs& fs, downstairs::Region& region,
         const downstairs::CoreOptions& o)
      : in_(in), mf_(in), fs_(fs), region_(region), core_(region, o), read_only_(o.read_only) {}

  void run() {
    for (int i = 0; i < kMaxEvents && in_.remaining_bytes() > 0; ++i) step();
  }

 private:
  void step() {
    switch (in_.ConsumeIntegralInRange<int>(0, 11)) {
      case 0:
        if (upstairs_.size() < kMaxConnections) upstairs_.insert(core_.new_connection());
        return;
      case 1:
        if (auto c = pick(upstairs_)) handle(core_.on_disconnect(*c, "fuzz: peer closed"));
        return;
      case 2:
        return negotiate_fully();
      case 3:
        if (auto c = pick(upstairs_)) handle(core_.on_message(*c, negotiation()));
        return;
      case 4:
      case 5:
      case 6:
        if (auto c = pick_for_jobs()) handle(core_.on_message(*c, job()));
        return;
      case 7:
        if (auto c = pick(upstairs_)) handle(core_.on_message(*c, mf_.any(kBlockSize)));
        return;
      case 8:
        if (auto c = pick(upstairs_))
          if (auto m = mf_.raw_frame()) handle(core_.on_message(*c, std::move(*m)));
        return;
      case 9:
        handle(core_.on_tick());
        return;
      case 10:
        repair_source();
        return;
      default:
        fs_.fail_next(static_cast<FaultFs::Op>(in_.ConsumeIntegralInRange<int>(0, 8)),
                      in_.ConsumeIntegralInRange<int>(1, 3), in_.ConsumeIntegralInRange<int>(0, 4));
        return;
    }
  }

  std::optional<ConnectionId> pick(const std::set<ConnectionId>& s) {
    if (s.empty()) return std::nullopt;
    auto it = s.begin();
    std::advance(it, in_.ConsumeIntegralInRange<size_t>(0, s.size() - 1));
    return *it;
  }

  // Jobs go mostly to the connection that negotiated last (the one likely running).
  std::optional<ConnectionId> pick_for_jobs() {
    if (last_ && upstairs_.contains(*last_) && in_.ConsumeIntegralInRange<int>(0, 3) != 0)
      return last_;
    return pick(upstairs_);
  }

  // A whole negotiation on a new connection, as a real upstairs does it, with a rising
  // generation (so it takes over): one event reaches the running state.
  void negotiate_fully() {
    if (upstairs_.size() >= kMaxConnections) return;
    ConnectionId c = core_.new_connection();
    upstairs_.insert(c);
    last_ = c;
    generation_ = generation_.next();
    Uuid id;
    id.bytes[0] = 7;
    handle(core_.on_message(
        c, HereIAm{kProtocolVersion, id, id, generation_, read_only_, region_.def().encrypted}));
    handle(core_.on_message(c, PromoteToActive{id, id, generation_}));
    handle(core_.on_message(c, RegionInfoPlease{}));
    if (in_.ConsumeIntegralInRange<int>(0, 3) == 0)
      handle(core_.on_message(c, LastFlush{recent_job()}));
    else
      handle(core_.on_message(c, ExtentVersionsPlease{}));
  }

  // What a real upstairs sends while negotiating, with a few fields from the input.
  Message negotiation() {
    Generation gen{in_.ConsumeIntegralInRange<uint64_t>(0, 4)};
    Uuid id;
    id.bytes[0] = in_.ConsumeIntegralInRange<uint8_t>(0, 1);
    switch (in_.ConsumeIntegralInRange<int>(0, 6)) {
      case 0:
        return HereIAm{in_.ConsumeBool() ? kProtocolVersion : kProtocolVersion - 1,
                       id,
                       id,
                       gen,
                       in_.ConsumeIntegralInRange<int>(0, 7) == 0 ? !read_only_ : read_only_,
                       in_.ConsumeIntegralInRange<int>(0, 7) == 0 ? !region_.def().encrypted
                                                                  : region_.def().encrypted};
      case 1:
        return PromoteToActive{id, id, gen};
      case 2:
        return RegionInfoPlease{};
      case 3:
        return ExtentVersionsPlease{};
      case 4:
        return LastFlush{recent_job()};
      case 5:
        return RepairHello{};
      default:
        return ExtentFetch{ExtentId{in_.ConsumeIntegralInRange<uint32_t>(0, kExtentCount)},
                           in_.ConsumeIntegralInRange<uint64_t>(0, 3) * kRepairChunkBytes,
                           std::nullopt};
    }
  }

  JobId recent_job() {
    if (sent_.empty()) return JobId{in_.ConsumeIntegral<uint64_t>()};
    return sent_[sent_.size() - 1 - in_.ConsumeIntegralInRange<size_t>(0, sent_.size() - 1)];
  }

  // A job as the upstairs would send it, mostly: the next id, dependencies on recent ids,
  // blocks in or just past the region, data that matches its hashes.
  Message job() {
    JobId id = next_job_;
    next_job_ = next_job_.next();
    std::vector<JobId> deps;
    for (size_t n = in_.ConsumeIntegralInRange<size_t>(0, 3); n > 0 && !sent_.empty(); --n)
      deps.push_back(recent_job());
    sent_.push_back(id);
    const uint64_t total = kExtentBlocks * kExtentCount;
    BlockIndex start{in_.ConsumeIntegralInRange<uint64_t>(0, total)};
    uint32_t count = in_.ConsumeIntegralInRange<uint32_t>(1, 2 * kExtentBlocks);
    ExtentId extent{in_.ConsumeIntegralInRange<uint32_t>(0, kExtentCount)};
    switch (in_.ConsumeIntegralInRange<int>(0, 10)) {
      case 0:
      case 1: {
        Bytes data = mf_.data(count * kBlockSize);
        auto contexts =
            MessageFuzzer::contexts_for(data.span(), kBlockSize, region_.def().encrypted);
        if (in_.ConsumeBool()) return Write{{id, deps, start, kBlockSize, contexts, data}};
        return WriteUnwritten{{id, deps, start, kBlockSize, contexts, data}};
      }
      case 2:
      case 3:
        return Read{id, deps, start, count};
      case 4:
        return Discard{id, deps, start, count};
      case 5:
        return Flush{id,
                     deps,
                     FlushNumber{in_.ConsumeIntegralInRange<uint64_t>(0, 9)},
                     Generation{in_.ConsumeIntegralInRange<uint64_t>(0, 4)},
                     std::nullopt,
                     in_.ConsumeBool() ? std::optional(extent) : std::nullopt};
      case 6:
        return Barrier{id, deps};
      case 7:
        return ExtentLiveClose{id, deps, extent};
      case 8:
        return ExtentLiveFlushClose{id, deps, extent, FlushNumber{3}, Generation{1}};
      case 9:
        if (in_.ConsumeBool())
          return ExtentLiveRepair{id, deps, extent, ClientId{1}, "127.0.0.1:3811"};
        return ExtentLiveReopen{id, deps, extent};
      default:
        switch (in_.ConsumeIntegralInRange<int>(0, 3)) {
          case 0:
            return ExtentFlush{RepairId{id.value}, extent, ClientId{0}, FlushNumber{2},
                               Generation{1}};
          case 1:
            return ExtentClose{RepairId{id.value}, extent};
          case 2:
            return ExtentRepair{
                RepairId{id.value}, extent, ClientId{0}, "127.0.0.1:3812", {ClientId{1}}};
          default:
            return ExtentReopen{RepairId{id.value}, extent};
        }
    }
  }

  // The core's outgoing connections to a repair source: connect them, and answer as a
  // source would (its region, chunks of an extent file, the end) or with anything.
  void repair_source() {
    auto c = pick(fetches_);
    if (!c) return;
    switch (in_.ConsumeIntegralInRange<int>(0, 5)) {
      case 0:
        return handle(core_.on_connected(*c));
      case 1:
        return handle(core_.on_message(*c, RegionInfo{region_.def()}));
      case 2: {
        uint64_t offset = in_.ConsumeIntegralInRange<uint64_t>(0, 2) * kRepairChunkBytes;
        return handle(core_.on_message(
            *c,
            ExtentChunk{ExtentId{in_.ConsumeIntegralInRange<uint32_t>(0, kExtentCount)}, offset,
                        in_.ConsumeBool(), mf_.data(in_.ConsumeIntegralInRange<size_t>(0, 4096))}));
      }
      case 3:
        return handle(core_.on_message(
            *c, ExtentFetchDone{ExtentId{in_.ConsumeIntegralInRange<uint32_t>(0, kExtentCount)},
                                WireStatus{}, region_.extent_file_bytes(),
                                in_.ConsumeIntegral<uint64_t>()}));
      case 4:
        return handle(core_.on_disconnect(*c, "fuzz: source gone"));
      default:
        return handle(core_.on_message(*c, mf_.any(kBlockSize)));
    }
  }

  void handle(const Output& out) {
    for (const auto& s : out.sends) cru::fuzz::encode_as_the_shell_would(s.message);
    for (const auto& c : out.closes) {
      upstairs_.erase(c.conn);
      fetches_.erase(c.conn);
    }
    for (const auto& c : out.connects) fetches_.insert(c.conn);
  }

  FuzzedDataProvider& in_;
  MessageFuzzer mf_;
  FaultFs& fs_;
  downstairs::Region& region_;
  Core core_;
  bool read_only_;
  std::set<ConnectionId> upstairs_;
  std::set<ConnectionId> fetches_;
  std::optional<ConnectionId> last_;
  Generation generation_;
  JobId next_job_{kFirstJobId};
  std::vector<JobId> sent_;
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  cru::log::set_level("off");  // the core logs every refusal; only crashes matter here
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  FaultFs fs(512, in.ConsumeIntegral<uint8_t>());
  downstairs::RegionOptions o;
  o.def = {kBlockSize, kExtentBlocks, kExtentCount, Uuid{}, in.ConsumeBool()};
  const bool read_only = in.ConsumeBool();
  auto created = downstairs::Region::create(fs, "/r", o);
  if (!created) std::abort();  // the in-memory disk does not fail unless told to
  std::unique_ptr<downstairs::Region> region = std::move(*created);
  if (read_only) {
    region.reset();
    auto opened = downstairs::Region::open(fs, "/r", true);
    if (!opened) std::abort();
    region = std::move(*opened);
  }
  downstairs::CoreOptions co;
  co.read_only = read_only;
  co.repair_addr = "127.0.0.1:3810";
  co.faults.lossy = in.ConsumeIntegralInRange<int>(0, 3) == 0;
  co.faults.seed = in.ConsumeIntegral<uint8_t>();
  Driver(in, fs, *region, co).run();
  return 0;
}
