// Stateful libFuzzer target for the upstairs core (built by `make fuzz` with clang and
// ASan/UBSan). Each input is a script: one upstairs core (plain or encrypted, read-write
// or read-only, with small admission and barrier limits) and three fake downstairs, then a
// sequence of events decoded from the input: guest operations (activate, read, write,
// discard, flush, deactivate, replace), connections completing and dropping, fake
// downstairs answering what they were sent the way a real one would (negotiation, acks,
// reads with matching data), or wrongly (fields from the input, raw bytes through the
// decoder, replies on stale connections), and ticks with time moving forward. Every
// message the core sends is encoded as the volume shell would. Any CRU_ASSERT, sanitizer
// report or encode() of a message that breaks a protocol limit is a finding.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <vector>

#include "common/log.h"
#include "fuzz/fuzz_messages.h"
#include "upstairs/upstairs.h"

namespace {

using namespace cru;
using namespace cru::proto;
using namespace cru::upstairs;
using namespace cru::fuzz;

// What one fake downstairs remembers of what it was sent, newest kept.
constexpr size_t kMaxInbox = 256;

struct FakeDownstairs {
  ConnId conn;  // 0: none
  bool connected = false;
  std::deque<Message> inbox;  // sent by the core, not yet answered
};

class Driver {
 public:
  Driver(FuzzedDataProvider& in, const Config& config)
      : in_(in), mf_(in), config_(config), core_(config) {
    def_ = {kBlockSize, kExtentBlocks, kExtentCount, Uuid{}, config.encrypted};
  }

  void run() {
    for (int i = 0; i < kMaxEvents && in_.remaining_bytes() > 0; ++i) step();
  }

 private:
  void step() {
    switch (in_.ConsumeIntegralInRange<int>(0, 15)) {
      case 0:
      case 1:
        return apply(GuestSubmit{GuestId{next_guest_++}, guest_op()});
      case 2:
        return connect();
      case 13:
        return activate_happily();
      case 3:
      case 4:
      case 5:
      case 6:
      case 7:
        return answer();
      case 8:
        return deliver(pick(), mf_.any(kBlockSize));
      case 9: {
        ClientId c = pick();
        if (ds_[c].conn != ConnId{}) {
          ConnId conn = ds_[c].conn;
          ds_[c] = {};
          return apply(ClientDisconnected{c, conn, "fuzz: connection lost"});
        }
        return;
      }
      case 10:
        if (auto m = mf_.raw_frame()) deliver(pick(), std::move(*m));
        return;
      case 11: {
        // A late message from a connection that is already gone.
        ClientId c = pick();
        return apply(ClientMessage{c, ConnId{in_.ConsumeIntegralInRange<uint64_t>(0, 3)},
                                   mf_.any(kBlockSize)});
      }
      default:
        now_ += std::chrono::milliseconds(in_.ConsumeIntegralInRange<int>(0, 1) == 0
                                              ? in_.ConsumeIntegralInRange<int>(0, 600)
                                              : in_.ConsumeIntegralInRange<int>(0, 60000));
        return apply(Tick{});
    }
  }

  ClientId pick() { return ClientId{in_.ConsumeIntegralInRange<uint8_t>(0, kClientCount - 1)}; }

  GuestOp guest_op() {
    const uint64_t total = kExtentBlocks * kExtentCount;
    BlockIndex start{in_.ConsumeIntegralInRange<uint64_t>(0, total)};
    uint32_t count = in_.ConsumeIntegralInRange<int>(0, 15) == 0
                         ? in_.ConsumeIntegral<uint32_t>()
                         : in_.ConsumeIntegralInRange<uint32_t>(0, 2 * kExtentBlocks);
    switch (in_.ConsumeIntegralInRange<int>(0, 9)) {
      case 0:
        return ActivateOp{in_.ConsumeBool() ? std::nullopt
                                            : std::optional(Generation{
                                                  in_.ConsumeIntegralInRange<uint64_t>(0, 5)})};
      case 1:
      case 2: {
        uint32_t n = std::min<uint32_t>(count, 2 * kExtentBlocks);
        Bytes data = mf_.data(static_cast<size_t>(n) * kBlockSize);
        auto contexts = MessageFuzzer::contexts_for(data.span(), kBlockSize, config_.encrypted);
        return WriteOp{start, std::move(contexts), std::move(data), in_.ConsumeBool()};
      }
      case 3:
      case 4:
        return ReadOp{start, count};
      case 5:
        return DiscardOp{start, count};
      case 6:
      case 7:
        return FlushOp{};
      case 8:
        return DeactivateOp{};
      default:
        return ReplaceOp{config_.targets[pick().value],
                         in_.ConsumeBool() ? "127.0.0.1:3809" : in_.ConsumeRandomLengthString(16)};
    }
  }

  void connect() {
    ClientId c = pick();
    if (ds_[c].conn == ConnId{} || ds_[c].connected) return;
    ds_[c].connected = true;
    apply(ClientConnected{c, ds_[c].conn});
  }

  // Activation with three downstairs that answer every negotiation step correctly and at
  // once: one event reaches the active state (if nothing else is in the way).
  void activate_happily() {
    apply(GuestSubmit{GuestId{next_guest_++}, ActivateOp{std::nullopt}});
    for (bool progress = true; progress;) {
      progress = false;
      for (ClientId c : kAllClients) {
        FakeDownstairs& d = ds_[c];
        if (d.conn != ConnId{} && !d.connected) {
          d.connected = true;
          apply(ClientConnected{c, d.conn});
          progress = true;
        }
        if (d.inbox.empty() || !d.connected) continue;
        const Message& m = d.inbox.front();
        if (!std::holds_alternative<HereIAm>(m) && !std::holds_alternative<PromoteToActive>(m) &&
            !std::holds_alternative<RegionInfoPlease>(m) &&
            !std::holds_alternative<ExtentVersionsPlease>(m))
          continue;
        Message req = std::move(d.inbox.front());
        d.inbox.pop_front();
        if (auto reply = reply_to(req, /*faithful=*/true)) deliver(c, std::move(*reply));
        progress = true;
      }
    }
  }

  // A fake downstairs answers one thing it was sent, as a real one would.
  void answer() {
    ClientId c = pick();
    FakeDownstairs& d = ds_[c];
    if (d.inbox.empty() || !d.connected) return;
    // Mostly the oldest (downstairs answer in order), sometimes any.
    size_t i = in_.ConsumeIntegralInRange<int>(0, 3) == 0
                   ? in_.ConsumeIntegralInRange<size_t>(0, d.inbox.size() - 1)
                   : 0;
    Message req = std::move(d.inbox[i]);
    d.inbox.erase(d.inbox.begin() + static_cast<std::ptrdiff_t>(i));
    if (auto reply = reply_to(req, in_.ConsumeBool())) deliver(c, std::move(*reply));
  }

  // faithful: what a healthy downstairs answers; otherwise sometimes an error.
  WireStatus status(bool faithful) {
    if (faithful || in_.ConsumeIntegralInRange<int>(0, 15) != 0) return WireStatus::ok();
    return WireStatus{
        static_cast<ErrorCode>(in_.ConsumeIntegralInRange<uint16_t>(1, kErrorCodeMax)),
        "fuzz: refused"};
  }

  std::optional<Message> reply_to(const Message& req, bool faithful) {
    if (auto* h = std::get_if<HereIAm>(&req))
      return YesItsMe{h->version, "127.0.0.1:3810",
                      Generation{faithful ? 0 : in_.ConsumeIntegralInRange<uint64_t>(0, 3)}};
    if (auto* p = std::get_if<PromoteToActive>(&req))
      return YouAreNowActive{p->upstairs_id, p->session_id, p->generation};
    if (std::holds_alternative<RegionInfoPlease>(req)) {
      RegionDefinition d = def_;
      if (!faithful && in_.ConsumeIntegralInRange<int>(0, 7) == 0) mf_.fill(d);  // broken
      return RegionInfo{d};
    }
    if (std::holds_alternative<ExtentVersionsPlease>(req)) {
      // Faithful: one entry per extent, which may differ between the three (reconciliation).
      std::vector<ExtentVersion> v(!faithful && in_.ConsumeIntegralInRange<int>(0, 7) == 0
                                       ? in_.ConsumeIntegralInRange<size_t>(0, 2 * kExtentCount)
                                       : kExtentCount);
      for (auto& e : v)
        e = {Generation{in_.ConsumeIntegralInRange<uint64_t>(0, 2)},
             FlushNumber{in_.ConsumeIntegralInRange<uint64_t>(0, 3)}, in_.ConsumeBool()};
      return ExtentVersions{std::move(v)};
    }
    if (auto* r = std::get_if<Read>(&req)) {
      WireStatus st = status(faithful);
      if (!st.is_ok()) return ReadResponse{r->job_id, st, 0, {}, {}};
      // Never-written blocks: no contexts, zeros. Sometimes a byte is flipped.
      ByteBuffer data = ByteBuffer::zeros(static_cast<size_t>(r->block_count) * kBlockSize);
      if (!faithful && data.size() > 0 && in_.ConsumeIntegralInRange<int>(0, 15) == 0)
        data.data()[0] = std::byte{1};
      return ReadResponse{r->job_id, st, kBlockSize,
                          std::vector<std::optional<BlockContext>>(r->block_count),
                          Bytes(std::move(data))};
    }
    if (auto* lc = std::get_if<ExtentLiveClose>(&req))
      return ExtentLiveCloseAck{lc->job_id, status(faithful), ExtentVersion{}};
    if (auto* lfc = std::get_if<ExtentLiveFlushClose>(&req))
      return ExtentLiveCloseAck{lfc->job_id, status(faithful),
                                ExtentVersion{lfc->generation, lfc->flush_number, false}};
    if (std::holds_alternative<Ruok>(req)) return Imok{};
    return std::visit(
        [&](const auto& v) -> std::optional<Message> {
          if constexpr (requires { v.repair_id; }) return RepairAck{v.repair_id, status(faithful)};
          if constexpr (requires { v.deps; }) return Ack{v.job_id, status(faithful)};
          return std::nullopt;
        },
        req);
  }

  void deliver(ClientId c, Message m) {
    if (ds_[c].conn == ConnId{} || !ds_[c].connected) return;
    apply(ClientMessage{c, ds_[c].conn, std::move(m)});
  }

  void apply(Event e) {
    for (auto& a : core_.apply(std::move(e), now_)) {
      if (auto* s = std::get_if<SendTo>(&a)) {
        cru::fuzz::encode_as_the_shell_would(s->message);
        FakeDownstairs& d = ds_[s->client];
        if (s->conn != d.conn) continue;
        d.inbox.push_back(std::move(s->message));
        if (d.inbox.size() > kMaxInbox) d.inbox.pop_front();
      } else if (auto* ct = std::get_if<ConnectTo>(&a)) {
        ds_[ct->client] = FakeDownstairs{ct->conn, false, {}};
      } else if (auto* dc = std::get_if<Disconnect>(&a)) {
        if (ds_[dc->client].conn == dc->conn) ds_[dc->client] = {};
      }
    }
    // The shell asks for the next deadline after every event.
    static_cast<void>(core_.next_deadline());
  }

  FuzzedDataProvider& in_;
  MessageFuzzer mf_;
  Config config_;
  Upstairs core_;
  RegionDefinition def_;
  ClientData<FakeDownstairs> ds_;
  TimePoint now_{std::chrono::seconds(1000)};
  uint64_t next_guest_ = 1;
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  cru::log::set_level("off");  // the core logs every fault; only crashes matter here
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  Config config;
  config.targets = {"127.0.0.1:3801", "127.0.0.1:3802", "127.0.0.1:3803"};
  config.read_only = in.ConsumeIntegralInRange<int>(0, 3) == 0;
  config.encrypted = in.ConsumeBool();
  // Small limits, so admission waits, faults for lag and barriers are reached quickly.
  config.limits.jobs_in_flight_max = in.ConsumeIntegralInRange<uint64_t>(1, 64);
  config.limits.fault_jobs = in.ConsumeIntegralInRange<uint64_t>(1, 48);
  config.limits.barrier_jobs = in.ConsumeIntegralInRange<uint64_t>(1, 32);
  Driver(in, config).run();
  return 0;
}
