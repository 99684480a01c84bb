#include "sim/sim.h"

#include <fmt/format.h>

#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>

#include "common/assert.h"
#include "downstairs/core.h"
#include "downstairs/extent.h"
#include "downstairs/region.h"
#include "proto/codec.h"
#include "proto/integrity.h"
#include "sim/model.h"
#include "support/fault_fs.h"
#include "upstairs/block_crypto.h"
#include "upstairs/upstairs.h"

namespace cru::sim {

const char* fault_name(FaultKind kind) {
  switch (kind) {
    case FaultKind::kDisconnect:
      return "disconnect";
    case FaultKind::kPartition:
      return "partition";
    case FaultKind::kDelay:
      return "delay";
    case FaultKind::kStall:
      return "stall";
    case FaultKind::kCrash:
      return "crash";
    case FaultKind::kStorageErrors:
      return "storage-errors";
    case FaultKind::kBitFlip:
      return "bit-flip";
    case FaultKind::kUpstairsCrash:
      return "upstairs-crash";
    case FaultKind::kLoseForGood:
      return "lose-for-good";
    case FaultKind::kPartitionTwo:
      return "partition-two";
    case FaultKind::kCrashTwo:
      return "crash-two";
    case FaultKind::kReplace:
      return "replace";
    case FaultKind::kTakeover:
      return "takeover";
  }
  return "?";
}

namespace {

using namespace std::chrono_literals;
using upstairs::ConnId;
using upstairs::Duration;
using upstairs::GuestId;
using upstairs::TimePoint;
using DsConn = downstairs::ConnectionId;

// ---- named limits ------------------------------------------------------------------------

// What a power cut keeps or drops of an unsynced write, piece by piece: a disk sector.
constexpr size_t kAtomicWriteBytes = 512;
// At most this many downstairs impaired (or out of service in the upstairs' view, e.g.
// under repair) when an overlapping fault comes: the third keeps every acknowledged write.
constexpr int kImpairedMax = 2;
// The data port of the first downstairs at a slot; a replacement listens 10 above.
constexpr int kFirstPort = 3810;
// Guest calls outstanding at once: enough for writes, reads and flushes to overlap in the
// upstairs and on the wire, few enough that a read usually meets a recent write.
constexpr size_t kGuestInFlightMax = 8;
// IOs of 1..8 blocks: small against extents of 16..64 blocks, so some cross an extent edge.
constexpr uint64_t kIoBlocksMax = 8;
// A run whose virtual clock passes this is hung (the longest fault plus repairs take a few
// minutes of virtual time).
constexpr Duration kVirtualTimeLimit = 30min;
// Deliveries in one run: a livelock guard far above what a run needs (~10^5).
constexpr uint64_t kDeliveryLimit = 5'000'000;
// A taken-over upstairs keeps running this long, past its reconnect backoff, so it tries
// to write (and is refused) before its host goes away.
constexpr Duration kTakenOverLife = 5s;
// How often the harness looks at the upstairs' status while it waits for health (and,
// with overlapping faults, for a repair to hit).
constexpr Duration kPollInterval = 50ms;

// ---- the fake network --------------------------------------------------------------------

struct Packet {
  std::optional<proto::Message> message;  // nullopt: the sender closed the connection
  std::string close_reason;
  TimePoint at;  // not delivered before
};

// Side a of a connection, the one that opens it: the upstairs, or a downstairs fetching
// an extent from a repair source.
struct Opener {
  bool from_upstairs = true;
  int up = 0;       // which upstairs (instances are numbered from 1)
  ClientId client;  // upstairs side
  ConnId up_conn;
  int a_ds = -1;  // downstairs side
  uint64_t a_inc = 0;
  DsConn a_conn;
};

// One TCP connection; side b is the downstairs that accepted it.
struct Link : Opener {
  int b_ds = -1;
  uint64_t b_inc = 0;
  DsConn b_conn;
  std::deque<Packet> to_a, to_b;
  bool a_open = true, b_open = true;
};

struct PendingConnect : Opener {
  int target = -1;
  int port = 0;  // the port dialled: a replaced downstairs' old one answers no more
  TimePoint at;
};

struct Downstairs {
  std::string dir;
  std::unique_ptr<test::FaultFs> fs;
  std::unique_ptr<downstairs::Region> region;
  std::unique_ptr<downstairs::Core> core;
  uint64_t incarnation = 0;
  int port = kFirstPort;  // data port; the repair port is the next one
  int replacements = 0;
  bool up = true;
  bool gone = false;         // lost for good
  uint64_t lost_at_seq = 0;  // the next guest op when it was lost
  TimePoint restart_at{}, stalled_until{}, partitioned_until{};
  std::optional<TimePoint> fault_end;  // a delay or storage errors end then
  double storage_p = 0;                // the failure probability of its disk calls
  Duration extra_delay{0};
  std::set<uint64_t> flipped;  // blocks whose stored data we corrupted
  // Lossy mode (the core defers some ready jobs, so they complete out of order): when the
  // deferred ones run.
  bool lossy = false;
  std::optional<TimePoint> tick_at;
};

enum class OpKind { kActivate, kRead, kWrite, kWriteUnwritten, kDiscard, kFlush, kReplace };

struct GuestCall {
  OpKind kind;
  uint64_t seq = 0;
  uint64_t start = 0, count = 0;
  uint64_t epoch = 0;         // disturbances seen when it was submitted
  uint64_t double_epoch = 0;  // times two replicas were impaired, when it was submitted
  bool final_read = false;
};

// One upstairs (a second one exists for a while after a takeover).
struct UpInstance {
  std::unique_ptr<upstairs::Upstairs> core;
  ClientData<ConnId> conn{ConnId{}};
  std::map<GuestId, GuestCall> calls;  // only the current instance's are checked
};

enum class Phase { kActivating, kRunning, kDraining, kFinalFlush, kRetiring, kFinalRead, kDone };

class Sim {
 public:
  explicit Sim(const SimOptions& o)
      : options_(o),
        rng_(o.seed),
        bs_(o.block_size),
        crypto_(o.block_size, o.encrypted ? std::optional(test_key()) : std::nullopt) {}

  SimResult run() {
    setup();
    while (result_.ok && phase_ != Phase::kDone) {
      if (now_ - start_ > kVirtualTimeLimit) {
        fail_run(fmt::format(
            "hung: still in phase {} after {} s of virtual time; {}", static_cast<int>(phase_),
            std::chrono::duration_cast<std::chrono::seconds>(now_ - start_).count(),
            status_text()));
        break;
      }
      if (result_.deliveries > kDeliveryLimit) {
        fail_run("livelock: more than " + std::to_string(kDeliveryLimit) + " deliveries; " +
                 status_text());
        break;
      }
      step();
    }
    result_.virtual_time = std::chrono::duration_cast<std::chrono::milliseconds>(now_ - start_);
    return result_;
  }

 private:
  static upstairs::Key test_key() {
    upstairs::Key k;
    for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<uint8_t>(0x5a ^ i);
    return k;
  }

  // ---- randomness ------------------------------------------------------------------------
  uint64_t pick(uint64_t lo, uint64_t hi) { return lo + rng_() % (hi - lo + 1); }
  bool chance(unsigned percent) { return rng_() % 100 < percent; }
  Duration pick_ms(uint64_t lo, uint64_t hi) {
    return std::chrono::microseconds(pick(lo * 1000, hi * 1000));
  }
  Uuid random_uuid() {
    Uuid u;
    for (auto& b : u.bytes) b = static_cast<uint8_t>(rng_());
    return u;
  }

  void fail_run(std::string why) {
    if (!result_.ok) return;
    result_.ok = false;
    result_.failure = fmt::format(
        "t={} ms: {}", std::chrono::duration_cast<std::chrono::milliseconds>(now_ - start_).count(),
        why);
  }

  // ---- setup ---------------------------------------------------------------------------------
  void setup() {
    start_ = now_ = TimePoint{} + 1h;  // away from zero, which the core uses for "never"
    extent_size_ = std::array<uint64_t, 3>{16, 32, 64}[pick(0, 2)];
    extent_count_ = static_cast<uint32_t>(pick(2, 4));
    total_blocks_ = extent_size_ * extent_count_;
    model_.emplace(total_blocks_);
    written_at_.assign(total_blocks_, 0);
    for (int d = 0; d < kClientCount; ++d) {
      ds_[d].lossy = chance(30);
      create_region(d);
      start_downstairs(d);
    }
    plan_faults();
    new_upstairs();
  }

  // A new, empty region for downstairs d, durable as after a reboot.
  void create_region(int d) {
    Downstairs& ds = ds_[d];
    ds.dir = fmt::format("region{}.{}", d, ds.replacements);
    ds.fs = std::make_unique<test::FaultFs>(kAtomicWriteBytes, rng_());
    ds.region.reset();
    ds.flipped.clear();
    downstairs::RegionOptions ro;
    ro.def = {bs_, extent_size_, extent_count_, random_uuid(), options_.encrypted};
    auto r = downstairs::Region::create(*ds.fs, ds.dir, ro);
    CRU_ASSERT(r.has_value(), "creating a simulated region");
    r->reset();
    ds.fs->crash_keep_all();
  }

  void plan_faults() {
    for (int i = 0; i < options_.fault_count && !options_.kinds.empty(); ++i) {
      FaultKind k = options_.kinds[pick(0, options_.kinds.size() - 1)];
      plan_.push_back(k);
      if (k == FaultKind::kLoseForGood) break;  // nothing after: two must carry on alone
    }
    next_fault_at_ = now_ + pick_ms(0, 300);
  }

  void start_downstairs(int d) {
    Downstairs& ds = ds_[d];
    if (!ds.region) {
      auto r = downstairs::Region::open(*ds.fs, ds.dir, false);
      if (!r)
        return fail_run(fmt::format("downstairs {} cannot reopen its region after a crash: {}", d,
                                    r.error().to_string()));
      ds.region = std::move(*r);
    }
    downstairs::CoreOptions co;
    // host:port like a real one: both the upstairs and the downstairs refuse anything else.
    co.repair_addr = fmt::format("ds{}:{}", d, ds.port + 1);
    co.faults.lossy = ds.lossy;
    co.faults.seed = rng_();
    ds.tick_at.reset();
    ds.core = std::make_unique<downstairs::Core>(*ds.region, co);
    ++ds.incarnation;
    ds.up = true;
  }

  std::string address(int d) const { return fmt::format("ds{}:{}", d, ds_[d].port); }

  UpInstance& cur() { return ups_.at(cur_); }
  upstairs::Upstairs& up() { return *ups_.at(cur_).core; }
  const upstairs::Upstairs& up() const { return *ups_.at(cur_).core; }

  void new_upstairs() {
    upstairs::Config c;
    for (int d = 0; d < kClientCount; ++d) c.targets[d] = address(d);
    c.upstairs_id = random_uuid();
    c.session_id = random_uuid();
    c.encrypted = options_.encrypted;
    cur_ = next_up_++;
    ups_[cur_].core = std::make_unique<upstairs::Upstairs>(c);
    phase_ = Phase::kActivating;
    submit(upstairs::ActivateOp{}, GuestCall{OpKind::kActivate});
  }

  // The counters of an upstairs that is going away.
  void collect(const upstairs::Upstairs& u) {
    upstairs::Snapshot s = u.snapshot();
    result_.reconciles += s.reconcile_extents_done;
    for (ClientId c : kAllClients) {
      result_.replays += s.clients[c].replays;
      result_.live_repairs += s.clients[c].live_repairs;
      result_.self_heals += s.clients[c].self_heals;
    }
  }

  // ---- the main loop -------------------------------------------------------------------------
  void step() {
    for (auto& [u, inst] : ups_)
      if (now_ >= inst.core->next_deadline()) {
        apply_up(u, upstairs::Tick{});
        if (!result_.ok) return;
        break;  // the map may have changed; the others' turn comes on the next step
      }
    restart_due();
    faults_due();
    guest_due();
    if (!result_.ok || phase_ == Phase::kDone) return;

    // Everything that can happen now; one is picked at random.
    candidates_.clear();
    for (int d = 0; d < kClientCount; ++d) {
      if (ds_[d].tick_at && now_ >= *ds_[d].tick_at && can_run(d)) {
        ds_[d].tick_at.reset();
        apply_ds(d, ds_[d].core->on_tick());
      }
    }
    for (auto& [id, l] : links_) {
      if (!l.to_b.empty() && l.to_b.front().at <= now_ && can_run(l.b_ds))
        candidates_.push_back({id, true});
      if (!l.to_a.empty() && l.to_a.front().at <= now_ && (l.from_upstairs || can_run(l.a_ds)))
        candidates_.push_back({id, false});
    }
    size_t links = candidates_.size();
    for (size_t i = 0; i < connects_.size(); ++i)
      if (connects_[i].at <= now_) candidates_.push_back({i, false});
    if (candidates_.empty()) return advance_clock();
    size_t k = pick(0, candidates_.size() - 1);
    if (k < links) {
      deliver(candidates_[k].first, candidates_[k].second);
    } else {
      PendingConnect pc = connects_[candidates_[k].first];
      connects_.erase(connects_.begin() + static_cast<long>(candidates_[k].first));
      resolve_connect(pc);
    }
    ++result_.deliveries;
    // Time passes while messages move, so timers and the workload interleave with them.
    if (chance(25)) now_ += std::chrono::microseconds(pick(0, 200));
  }

  bool can_run(int d) const { return ds_[d].up && now_ >= ds_[d].stalled_until; }

  // Nothing can move now: jump to the next thing that will.
  void advance_clock() {
    TimePoint next = TimePoint::max();
    auto consider = [&](TimePoint t) {
      if (t > now_) next = std::min(next, t);
    };
    for (auto& [u, inst] : ups_) next = std::min(next, inst.core->next_deadline());
    for (auto& [id, l] : links_) {
      if (!l.to_b.empty()) consider(std::max(l.to_b.front().at, ds_[l.b_ds].stalled_until));
      if (!l.to_a.empty())
        consider(l.from_upstairs ? l.to_a.front().at
                                 : std::max(l.to_a.front().at, ds_[l.a_ds].stalled_until));
    }
    for (auto& pc : connects_) consider(pc.at);
    for (auto& ds : ds_) {
      if (!ds.up && !ds.gone) consider(ds.restart_at);
      if (ds.up && ds.tick_at) consider(std::max(*ds.tick_at, ds.stalled_until));
      if (ds.fault_end) consider(*ds.fault_end);
      if (ds.partitioned_until > now_) consider(ds.partitioned_until);
      if (ds.stalled_until > now_) consider(ds.stalled_until);
    }
    if (wants_guest_op()) consider(next_op_at_);
    if (phase_ == Phase::kRunning && next_fault_ < plan_.size()) consider(next_fault_at_);
    if (poll_at_) consider(*poll_at_);
    if (double_open_) consider(now_ + kPollInterval);
    if (next == TimePoint::max())
      return fail_run("deadlock: nothing left to happen; " + status_text());
    now_ = std::max(next, now_ + 1us);
  }

  // ---- delivery ------------------------------------------------------------------------------
  template <typename... Args>
  void trace(fmt::format_string<Args...> f, Args&&... args) {
    if (!options_.trace) return;
    fmt::print(stderr, "{:>10.3f} ms  {}\n",
               std::chrono::duration<double, std::milli>(now_ - start_).count(),
               fmt::format(f, std::forward<Args>(args)...));
  }

  void deliver(uint64_t link_id, bool to_b) {
    Link& l = links_.at(link_id);
    Packet p = std::move(to_b ? l.to_b.front() : l.to_a.front());
    (to_b ? l.to_b : l.to_a).pop_front();
    if (options_.trace) {
      std::string a = l.from_upstairs ? fmt::format("up{}[{}]", l.up, l.client)
                                      : fmt::format("ds{}.fetch", l.a_ds);
      std::string b = fmt::format("ds{}", l.b_ds);
      trace("{} -> {}: {}", to_b ? a : b, to_b ? b : a,
            p.message ? proto::describe(*p.message) : "close: " + p.close_reason);
    }
    if (to_b) {
      int d = l.b_ds;
      DsConn conn = l.b_conn;
      if (!p.message) {
        l.b_open = false;  // the other side closed first, or learns of a cut from its own packet
        sweep(link_id);
        return apply_ds(d, ds_[d].core->on_disconnect(conn, p.close_reason));
      }
      return apply_ds(d, ds_[d].core->on_message(conn, std::move(*p.message)));
    }
    if (l.from_upstairs) {
      int u = l.up;
      ClientId c = l.client;
      ConnId conn = l.up_conn;
      if (!p.message) {
        l.a_open = false;
        sweep(link_id);
        if (!ups_.contains(u)) return;
        if (ups_.at(u).conn[c] == conn) ups_.at(u).conn[c] = ConnId{};
        ++epoch_;
        return apply_up(u, upstairs::ClientDisconnected{c, conn, p.close_reason});
      }
      if (!ups_.contains(u)) return;
      return apply_up(u, upstairs::ClientMessage{c, conn, std::move(*p.message)});
    }
    int d = l.a_ds;
    DsConn conn = l.a_conn;
    if (!p.message) {
      l.a_open = false;
      l.to_b.clear();
      sweep(link_id);
      return apply_ds(d, ds_[d].core->on_disconnect(conn, p.close_reason));
    }
    apply_ds(d, ds_[d].core->on_message(conn, std::move(*p.message)));
  }

  void sweep(uint64_t link_id) {
    auto it = links_.find(link_id);
    if (it != links_.end() && !it->second.a_open && !it->second.b_open) links_.erase(it);
  }

  // Queues a message on a link, keeping each direction FIFO.
  void send(Link& l, bool to_b, proto::Message m) {
    if (!(to_b ? l.b_open : l.a_open) || !(to_b ? l.a_open : l.b_open))
      return;  // a closed side sends nothing
    if (options_.codec) {
      auto frame = proto::encode_flat(m);
      auto back = proto::decode_frame(frame);
      if (!back)
        return fail_run(fmt::format("codec: {} does not decode: {}", proto::describe(m),
                                    back.error().to_string()));
      if (!(*back == m))
        return fail_run(fmt::format("codec: {} changes on a round trip", proto::describe(m)));
      m = std::move(*back);
    }
    Duration latency = std::chrono::microseconds(pick(20, 300)) + ds_[l.b_ds].extra_delay;
    if (!l.from_upstairs) latency += ds_[l.a_ds].extra_delay;
    auto& q = to_b ? l.to_b : l.to_a;
    TimePoint at = now_ + latency;
    if (!q.empty()) at = std::max(at, q.back().at);
    q.push_back(Packet{std::move(m), {}, at});
  }

  // One side closes: it receives nothing more; the other side sees the close after what
  // was already sent to it.
  void close_side(uint64_t link_id, bool side_a, const std::string& reason) {
    Link& l = links_.at(link_id);
    if (side_a) {
      if (!l.a_open) return;
      l.a_open = false;
      l.to_a.clear();
      if (l.b_open)
        l.to_b.push_back(Packet{std::nullopt, reason, l.to_b.empty() ? now_ : l.to_b.back().at});
    } else {
      if (!l.b_open) return;
      l.b_open = false;
      l.to_b.clear();
      if (l.a_open)
        l.to_a.push_back(Packet{std::nullopt, reason, l.to_a.empty() ? now_ : l.to_a.back().at});
    }
    sweep(link_id);
  }

  // The network breaks: both sides see it now, whatever was in flight is lost.
  void cut(uint64_t link_id, const std::string& reason) {
    Link& l = links_.at(link_id);
    l.to_a.clear();
    l.to_b.clear();
    if (l.a_open) l.to_a.push_back(Packet{std::nullopt, reason, now_});
    if (l.b_open) l.to_b.push_back(Packet{std::nullopt, reason, now_});
  }

  std::optional<uint64_t> upstairs_link(int u, ClientId c, ConnId conn) const {
    // Only open ones: connection ids of different upstairs may be equal.
    for (auto& [id, l] : links_)
      if (l.from_upstairs && l.a_open && l.up == u && l.client == c && l.up_conn == conn) return id;
    return std::nullopt;
  }

  // The link and side of a downstairs connection.
  std::optional<std::pair<uint64_t, bool>> ds_link(int d, DsConn conn) const {
    uint64_t inc = ds_[d].incarnation;
    for (auto& [id, l] : links_) {
      if (!l.from_upstairs && l.a_ds == d && l.a_inc == inc && l.a_conn == conn)
        return std::pair{id, true};
      if (l.b_ds == d && l.b_inc == inc && l.b_conn == conn) return std::pair{id, false};
    }
    return std::nullopt;
  }

  void resolve_connect(const PendingConnect& pc) {
    Downstairs& target = ds_[pc.target];
    bool reachable = target.up && !target.gone &&
                     (pc.port == target.port || pc.port == target.port + 1) &&
                     !(pc.from_upstairs && now_ < target.partitioned_until);
    if (pc.from_upstairs) {
      if (!ups_.contains(pc.up) || ups_.at(pc.up).conn[pc.client] != pc.up_conn)
        return;  // the shell gave up on it
      if (!reachable) {
        ups_.at(pc.up).conn[pc.client] = ConnId{};
        ++epoch_;
        return apply_up(pc.up,
                        upstairs::ClientDisconnected{pc.client, pc.up_conn, "connection refused"});
      }
    } else if (!ds_[pc.a_ds].up || ds_[pc.a_ds].incarnation != pc.a_inc) {
      return;  // the fetching downstairs crashed meanwhile
    } else if (!reachable) {
      return apply_ds(pc.a_ds, ds_[pc.a_ds].core->on_disconnect(pc.a_conn, "connection refused"));
    }
    Link l;
    static_cast<Opener&>(l) = pc;
    l.b_ds = pc.target;
    l.b_inc = target.incarnation;
    l.b_conn = target.core->new_connection();
    links_.emplace(next_link_++, std::move(l));
    if (pc.from_upstairs) return apply_up(pc.up, upstairs::ClientConnected{pc.client, pc.up_conn});
    apply_ds(pc.a_ds, ds_[pc.a_ds].core->on_connected(pc.a_conn));
  }

  // "dsN:port" -> (N, port).
  static std::optional<std::pair<int, int>> parse_address(const std::string& address) {
    if (address.size() < 5 || address.compare(0, 2, "ds") != 0 || address[3] != ':')
      return std::nullopt;
    int d = address[2] - '0';
    if (d < 0 || d >= kClientCount) return std::nullopt;
    int port = std::atoi(address.c_str() + 4);
    if (port <= 0) return std::nullopt;
    return std::pair{d, port};
  }

  // ---- the cores' outputs ----------------------------------------------------------------------
  void apply_up(int u, upstairs::Event e) {
    auto actions = ups_.at(u).core->apply(std::move(e), now_);
    for (auto& a : actions) {
      if (!result_.ok || !ups_.contains(u)) return;
      UpInstance& inst = ups_.at(u);
      if (auto* s = std::get_if<upstairs::SendTo>(&a)) {
        if (auto id = upstairs_link(u, s->client, s->conn))
          send(links_.at(*id), true, std::move(s->message));
      } else if (auto* ct = std::get_if<upstairs::ConnectTo>(&a)) {
        drop_upstairs_conn(u, ct->client, "replaced by a new connection");
        auto where = parse_address(ct->address);
        if (!where) return fail_run("the upstairs connects to an unknown address " + ct->address);
        inst.conn[ct->client] = ct->conn;
        PendingConnect pc;
        pc.from_upstairs = true;
        pc.up = u;
        pc.client = ct->client;
        pc.up_conn = ct->conn;
        pc.target = where->first;
        pc.port = where->second;
        pc.at = now_ + std::chrono::microseconds(pick(50, 1000));
        connects_.push_back(pc);
      } else if (auto* dc = std::get_if<upstairs::Disconnect>(&a)) {
        if (inst.conn[dc->client] == dc->conn) drop_upstairs_conn(u, dc->client, dc->reason);
        ++epoch_;
      } else if (auto* g = std::get_if<upstairs::GuestDone>(&a)) {
        if (u == cur_) {
          guest_done(*g);
        } else {
          inst.calls.erase(g->id);  // an upstairs taken over: nobody waits for it any more
        }
      }
    }
  }

  // The shell closes its connection (or its connect attempt) for a client.
  void drop_upstairs_conn(int u, ClientId c, const std::string& reason) {
    ConnId conn = ups_.at(u).conn[c];
    if (conn == ConnId{}) return;
    ups_.at(u).conn[c] = ConnId{};
    std::erase_if(connects_, [&](const PendingConnect& pc) {
      return pc.from_upstairs && pc.up == u && pc.client == c && pc.up_conn == conn;
    });
    if (auto id = upstairs_link(u, c, conn)) close_side(*id, true, reason);
  }

  void apply_ds(int d, downstairs::Output out) {
    if (out.tick_soon && !ds_[d].tick_at)
      ds_[d].tick_at = now_ + std::chrono::microseconds(pick(100, 5000));
    for (auto& s : out.sends) {
      auto where = ds_link(d, s.conn);
      if (!where) continue;  // closed meanwhile
      send(links_.at(where->first), /*to_b=*/where->second,
           std::move(s.message));  // from side a to b, or back
    }
    for (auto& cl : out.closes)
      if (auto where = ds_link(d, cl.conn)) close_side(where->first, where->second, cl.reason);
    for (auto& co : out.connects) {
      auto where = parse_address(co.address);
      if (!where)
        return fail_run(
            fmt::format("downstairs {} fetches from an unknown address {}", d, co.address));
      PendingConnect pc;
      pc.from_upstairs = false;
      pc.a_ds = d;
      pc.a_inc = ds_[d].incarnation;
      pc.a_conn = co.conn;
      pc.target = where->first;
      pc.port = where->second;
      pc.at = now_ + std::chrono::microseconds(pick(50, 1000));
      connects_.push_back(pc);
    }
  }

  // ---- downstairs lifecycle ------------------------------------------------------------------
  // The process dies: its connections close (peers see it after what was in flight).
  void kill_downstairs(int d, const std::string& why) {
    Downstairs& ds = ds_[d];
    std::vector<std::pair<uint64_t, bool>> sides;
    for (auto& [id, l] : links_) {
      if (!l.from_upstairs && l.a_ds == d && l.a_inc == ds.incarnation && l.a_open)
        sides.push_back({id, true});
      if (l.b_ds == d && l.b_inc == ds.incarnation && l.b_open) sides.push_back({id, false});
    }
    for (auto [id, side_a] : sides)
      if (links_.contains(id)) close_side(id, side_a, why);
    std::erase_if(connects_,
                  [&](const PendingConnect& pc) { return !pc.from_upstairs && pc.a_ds == d; });
    ds.core.reset();
    ds.tick_at.reset();
    ds.up = false;
  }

  void restart_due() {
    for (int d = 0; d < kClientCount; ++d) {
      Downstairs& ds = ds_[d];
      if (!ds.up && !ds.gone && now_ >= ds.restart_at) start_downstairs(d);
    }
  }

  // ---- faults --------------------------------------------------------------------------------
  // Impaired by the harness now: down, stalled, partitioned, with a failing disk, or with
  // damaged extents (a block torn by a power cut) that no repair has fixed yet. The last
  // is a copy partly lost even while the upstairs still sees the replica active (found
  // by the simulator: the next fault came in the moment between a replay and the
  // damage report, and two copies were out in a one-fault scenario).
  bool impaired(int d) const {
    const Downstairs& ds = ds_[d];
    if (ds.gone || !ds.up || now_ < ds.stalled_until || now_ < ds.partitioned_until ||
        ds.fault_end.has_value())
      return true;
    if (!ds.region) return true;
    auto versions = ds.region->versions();
    return std::any_of(versions.begin(), versions.end(),
                       [](const proto::ExtentVersion& v) { return v.damaged; });
  }

  int impaired_count() const {
    int n = 0;
    for (int d = 0; d < kClientCount; ++d) n += impaired(d) ? 1 : 0;
    return n;
  }

  // All three (or the two left) active, no repair, nothing held: the next fault may come.
  bool healthy() {
    if (!up().active()) return false;
    // The harness' own view first: a break the upstairs has not noticed yet is not health.
    for (int d = 0; d < kClientCount; ++d) {
      if (ds_[d].gone) continue;
      if (impaired(d)) return false;
      ClientId c{static_cast<uint8_t>(d)};
      auto id = upstairs_link(cur_, c, cur().conn[c]);
      if (!id) return false;
      const Link& l = links_.at(*id);
      if (!l.b_open ||
          std::any_of(l.to_a.begin(), l.to_a.end(), [](const Packet& p) { return !p.message; }))
        return false;
    }
    if (ups_.size() > 1) return false;  // a taken-over upstairs still has connections
    upstairs::Snapshot s = up().snapshot();
    if (s.repair.running) return false;
    for (int d = 0; d < kClientCount; ++d)
      if (!ds_[d].gone && s.clients[ClientId{static_cast<uint8_t>(d)}].state != "active")
        return false;
    return true;
  }

  // Replicas that cannot take IO now, in the upstairs' view or the harness'.
  int out_of_service() {
    upstairs::Snapshot s = up().snapshot();
    int n = 0;
    for (int d = 0; d < kClientCount; ++d)
      n += (impaired(d) || s.clients[ClientId{static_cast<uint8_t>(d)}].state != "active") ? 1 : 0;
    return n;
  }

  // Two replicas out of service: IO may fail with EIO until all are back.
  void note_double() {
    if (double_open_) return;
    double_open_ = true;
    ++double_epoch_;
    ++result_.double_faults;
    trace("two replicas out of service: EIO allowed");
  }

  void faults_due() {
    for (int d = 0; d < kClientCount; ++d)
      if (ds_[d].fault_end && now_ >= *ds_[d].fault_end) end_fault(d);
    if (double_open_ && now_ >= next_double_probe_) {
      next_double_probe_ = now_ + kPollInterval;
      if (phase_ == Phase::kDone || healthy()) double_open_ = false;
    }
    if (phase_ != Phase::kRunning || next_fault_ >= plan_.size()) return;
    FaultKind kind = plan_[next_fault_];
    // Replacing and taking over need a healthy volume (the upstairs refuses a replace
    // otherwise); the rest may overlap whatever is going on.
    bool gated = !options_.overlap || kind == FaultKind::kReplace || kind == FaultKind::kTakeover ||
                 kind == FaultKind::kLoseForGood || kind == FaultKind::kBitFlip ||
                 kind == FaultKind::kUpstairsCrash;
    if (gated) {
      if (now_ < next_fault_at_) return;
      if (!healthy()) {
        next_fault_at_ = now_ + kPollInterval;
        return;
      }
      ++next_fault_;
      return inject(kind);
    }
    // Overlapping: due on time, or at once when a repair is running (a second fault
    // during a repair, storage errors during one).
    bool repairing = false;
    if (now_ < next_fault_at_) {
      if (now_ < next_repair_probe_) return;
      next_repair_probe_ = now_ + kPollInterval;
      upstairs::Snapshot s = up().snapshot();
      repairing = s.repair.running || s.state == "reconciling";
      if (!repairing || !chance(50)) return;
    }
    // One replica stays untouched and active, so there is always a source to repair from
    // (with all three out the volume needs a new activation, which no fault here makes).
    int need = (kind == FaultKind::kPartitionTwo || kind == FaultKind::kCrashTwo) ? 2 : 1;
    if (std::max(impaired_count(), out_of_service()) + need > kImpairedMax) {
      next_fault_at_ = now_ + kPollInterval;
      return;
    }
    if (repairing) ++result_.faults_during_repair;
    ++next_fault_;
    inject(kind);
  }

  // A victim the harness is not already impairing.
  int pick_victim(int other = -1) {
    std::vector<int> free;
    for (int d = 0; d < kClientCount; ++d)
      if (d != other && !impaired(d)) free.push_back(d);
    if (free.empty()) return other == 0 ? 1 : 0;
    return free[pick(0, free.size() - 1)];
  }

  void crash_downstairs(int d) {
    Downstairs& ds = ds_[d];
    kill_downstairs(d, "simulated power cut");
    ds.fs->crash(rng_);
    ds.region.reset();
    ds.restart_at = now_ + pick_ms(10, 3000);
  }

  void partition(int d) {
    Downstairs& ds = ds_[d];
    ClientId c{static_cast<uint8_t>(d)};
    if (auto id = upstairs_link(cur_, c, cur().conn[c])) cut(*id, "simulated partition");
    // Sometimes past the offline timeout, so the downstairs is faulted and live-repaired.
    ds.partitioned_until = now_ + (chance(30) ? pick_ms(30'000, 45'000) : pick_ms(100, 5000));
  }

  void inject(FaultKind kind) {
    ++result_.faults_injected;
    ++epoch_;
    int d = pick_victim();
    trace("FAULT {} on ds{}", fault_name(kind), d);
    Downstairs& ds = ds_[d];
    ClientId c{static_cast<uint8_t>(d)};
    Duration gap = pick_ms(0, 2000);
    TimePoint ends = now_;
    switch (kind) {
      case FaultKind::kDisconnect:
        if (auto id = upstairs_link(cur_, c, cur().conn[c])) cut(*id, "simulated network failure");
        break;
      case FaultKind::kPartition:
        partition(d);
        ends = ds.partitioned_until;
        break;
      case FaultKind::kPartitionTwo: {
        int e = pick_victim(d);
        trace("FAULT partition-two also on ds{}", e);
        partition(d);
        partition(e);
        ends = std::max(ds.partitioned_until, ds_[e].partitioned_until);
        break;
      }
      case FaultKind::kDelay:
        ds.extra_delay = pick_ms(1, 300);
        ds.fault_end = now_ + pick_ms(200, 5000);
        ends = *ds.fault_end;
        break;
      case FaultKind::kStall:
        // Sometimes past the 45 s silence limit, so the upstairs hangs up on it.
        ds.stalled_until = now_ + (chance(30) ? pick_ms(46'000, 60'000) : pick_ms(100, 10'000));
        ends = ds.stalled_until;
        break;
      case FaultKind::kCrash:
        crash_downstairs(d);
        break;
      case FaultKind::kCrashTwo: {
        // The second one some time later, maybe while the first restarts or is repaired.
        int e = pick_victim(d);
        trace("FAULT crash-two also on ds{}", e);
        crash_downstairs(d);
        pending_crash_ = std::pair{e, now_ + pick_ms(0, 1500)};
        break;
      }
      case FaultKind::kStorageErrors: {
        set_storage_errors(d, static_cast<double>(pick(2, 20)) / 100);
        storage_faults_ = true;
        ds.fault_end = now_ + pick_ms(50, 2000);
        ends = *ds.fault_end;
        break;
      }
      case FaultKind::kBitFlip: {
        // Corruption stays on one replica: a latent flip on a repair source would be copied
        // to the replica it repairs (extent files are copied whole), so flip only where
        // no other replica holds an undetected one.
        for (int o = 0; o < kClientCount; ++o)
          if (o != d && latent_flips(o) > 0) d = o;
        Downstairs& victim = ds_[d];
        uint64_t block = pick(0, total_blocks_ - 1);
        downstairs::ExtentLayout layout{bs_, extent_size_};
        ExtentId e{static_cast<uint32_t>(block / extent_size_)};
        uint64_t offset = layout.data_offset(block % extent_size_) + pick(0, bs_ - 1);
        victim.fs->corrupt(victim.region->extent_path(e), offset,
                           static_cast<uint8_t>(1u << pick(0, 7)));
        victim.flipped.insert(block);
        storage_faults_ = true;
        flips_ever_ = true;
        break;
      }
      case FaultKind::kUpstairsCrash:
        crash_upstairs();
        break;
      case FaultKind::kTakeover:
        take_over();
        break;
      case FaultKind::kReplace:
        replace(d);
        break;
      case FaultKind::kLoseForGood:
        ds.gone = true;
        ds.lost_at_seq = next_seq_;
        kill_downstairs(d, "lost for good");
        break;
    }
    // Two out of service: both of a two-replica fault, or one on top of another's trouble.
    if (kind == FaultKind::kPartitionTwo || kind == FaultKind::kCrashTwo ||
        (options_.overlap && ups_.size() == 1 && up().active() && out_of_service() >= 2))
      note_double();
    next_fault_at_ = ends + gap;
  }

  // Flipped blocks of downstairs d that still fail their hash (not yet overwritten or
  // repaired).
  int latent_flips(int d) {
    int n = 0;
    for (uint64_t b : ds_[d].flipped) {
      auto r = ds_[d].region->read(BlockIndex{b}, 1);
      if (!r || !proto::verify_blocks(b, bs_, r->contexts, r->data.span(), options_.encrypted)) ++n;
    }
    return n;
  }

  void set_storage_errors(int d, double p) {
    ds_[d].storage_p = p;
    for (auto op : {test::FaultFs::Op::kRead, test::FaultFs::Op::kWrite, test::FaultFs::Op::kSync})
      ds_[d].fs->set_failure_probability(op, p);
  }

  void end_fault(int d) {
    trace("fault on ds{} ends", d);
    Downstairs& ds = ds_[d];
    ds.extra_delay = Duration{0};
    ds.storage_p = 0;
    ds.fs->clear_faults();
    ds.fault_end.reset();
    ++epoch_;
  }

  // Its connections die with it; what it sent before may still arrive.
  void kill_upstairs(int u, const std::string& why) {
    for (ClientId c : kAllClients) drop_upstairs_conn(u, c, why);
    std::erase_if(connects_,
                  [u](const PendingConnect& pc) { return pc.from_upstairs && pc.up == u; });
    collect(*ups_.at(u).core);
    ups_.erase(u);
  }

  void crash_upstairs() {
    // Calls in flight never complete; writes already count as acknowledged.
    kill_upstairs(cur_, "the upstairs died");
    calls_.clear();
    model_->upstairs_crash(next_seq_);
    ++next_seq_;
    new_upstairs();
  }

  // A second upstairs activates with a higher generation while the first still runs:
  // the downstairs must fence the first (nothing it sends later may land), and the
  // second starts from what was durable (as after a crash of the first).
  void take_over() {
    ++result_.takeovers;
    took_over_at_ = now_;
    int old = cur_;
    ups_.at(old).calls = std::move(calls_);
    calls_.clear();
    model_->upstairs_crash(next_seq_);
    ++next_seq_;
    new_upstairs();
    old_ups_.push_back(old);
  }

  // The first upstairs, taken over, keeps running (and trying) for a while; then its
  // host goes away.
  void retire_old_upstairs() {
    if (now_ < took_over_at_ + kTakenOverLife) return;
    for (int u : old_ups_)
      if (ups_.contains(u)) kill_upstairs(u, "the old upstairs stops");
    old_ups_.clear();
  }

  // The guest of a taken-over upstairs goes on writing. Once the new one is active every
  // downstairs has fenced the old one, so none of these writes may ever land: their
  // values are not in the model, and a read that returns one fails the run.
  void fenced_write_due() {
    if (phase_ != Phase::kRunning || now_ < next_fenced_write_at_ || old_ups_.empty()) return;
    next_fenced_write_at_ = now_ + pick_ms(1, 300);
    int u = old_ups_.back();
    if (!ups_.contains(u)) return;
    uint64_t count = pick(1, kIoBlocksMax);
    uint64_t start = pick(0, total_blocks_ - count);
    uint64_t seq = next_seq_++;
    ByteBuffer data(count * bs_);
    for (uint64_t i = 0; i < count; ++i)
      block_bytes(seq, start + i, data.span().subspan(i * bs_, bs_));
    upstairs::BlockCrypto::Sealed sealed = crypto_.seal(data.span());
    upstairs::WriteOp w;
    w.start = BlockIndex{start};
    w.contexts = std::move(sealed.contexts);
    w.data = std::move(sealed.data);
    GuestId id{next_guest_++};
    ups_.at(u).calls.emplace(id, GuestCall{OpKind::kWrite, seq, start, count});
    ++result_.fenced_writes;
    trace("fenced write op {} at block {} ({} blocks) to the old upstairs {}", seq, start, count,
          u);
    apply_up(u, upstairs::GuestSubmit{id, std::move(w)});
  }

  // A downstairs is lost with its disk; an empty one at a new port takes its place.
  void replace(int d) {
    ++result_.replacements;
    Downstairs& ds = ds_[d];
    std::string old_address = address(d);
    kill_downstairs(d, "replaced");
    ++ds.replacements;
    ds.port = kFirstPort + 10 * ds.replacements;
    create_region(d);
    start_downstairs(d);
    submit(upstairs::ReplaceOp{old_address, address(d)}, GuestCall{OpKind::kReplace});
  }

  // ---- the guest -----------------------------------------------------------------------------
  bool wants_guest_op() const {
    return phase_ == Phase::kRunning && calls_.size() < kGuestInFlightMax &&
           (ops_ < static_cast<uint64_t>(options_.ops) || next_fault_ < plan_.size() ||
            faults_active());
  }

  bool faults_active() const {
    if (pending_crash_) return true;
    for (int d = 0; d < kClientCount; ++d)
      if (!ds_[d].gone && impaired(d)) return true;
    return false;
  }

  void submit(upstairs::GuestOp op, GuestCall call) {
    GuestId id{next_guest_++};
    call.epoch = epoch_;
    call.double_epoch = double_open_ ? double_epoch_ - 1 : double_epoch_;
    calls_.emplace(id, call);
    apply_up(cur_, upstairs::GuestSubmit{id, std::move(op)});
  }

  void guest_due() {
    if (pending_crash_ && now_ >= pending_crash_->second) {
      int e = pending_crash_->first;
      pending_crash_.reset();
      if (ds_[e].up) {
        trace("FAULT crash-two: power cut of ds{}", e);
        crash_downstairs(e);
        note_double();
      }
    }
    if (!old_ups_.empty()) {
      retire_old_upstairs();
      fenced_write_due();
    }
    if (poll_at_ && now_ >= *poll_at_) {
      poll_at_.reset();
      poll();
    }
    if (phase_ == Phase::kRunning && !wants_guest_op() &&
        ops_ >= static_cast<uint64_t>(options_.ops) && next_fault_ >= plan_.size() &&
        !faults_active()) {
      phase_ = Phase::kDraining;
      poll_at_ = now_;
      return;
    }
    if (!wants_guest_op() || now_ < next_op_at_) return;
    // Bursts of back-to-back calls, then quiet spells long enough for automatic flushes.
    next_op_at_ =
        now_ + (chance(90) ? std::chrono::microseconds(pick(0, 2000)) : pick_ms(100, 800));
    ++ops_;
    uint64_t count = pick(1, kIoBlocksMax);
    // A quarter of IOs land in the first 16 blocks, so they overlap often.
    uint64_t limit = chance(25) ? std::min<uint64_t>(16, total_blocks_) : total_blocks_;
    count = std::min(count, limit);
    uint64_t start = pick(0, limit - count);
    uint64_t seq = next_seq_++;
    unsigned r = static_cast<unsigned>(pick(0, 99));
    if (r < 45) {
      bool unwritten = r < 10;
      upstairs::WriteOp w;
      w.start = BlockIndex{start};
      w.only_unwritten = unwritten;
      ByteBuffer data(count * bs_);
      for (uint64_t i = 0; i < count; ++i)
        block_bytes(seq, start + i, data.span().subspan(i * bs_, bs_));
      // As the volume shell does: hashed, or encrypted with a fresh nonce per block.
      upstairs::BlockCrypto::Sealed sealed = crypto_.seal(data.span());
      w.contexts = std::move(sealed.contexts);
      w.data = std::move(sealed.data);
      model_->write(seq, start, count, unwritten);
      touch(seq, start, count);
      ++result_.writes;
      submit(std::move(w),
             GuestCall{unwritten ? OpKind::kWriteUnwritten : OpKind::kWrite, seq, start, count});
    } else if (r < 50) {
      model_->discard(seq, start, count);
      touch(seq, start, count);
      submit(upstairs::DiscardOp{BlockIndex{start}, static_cast<uint32_t>(count)},
             GuestCall{OpKind::kDiscard, seq, start, count});
    } else if (r < 62) {
      ++result_.flushes;
      submit(upstairs::FlushOp{}, GuestCall{OpKind::kFlush, seq});
    } else {
      ++result_.reads;
      submit(upstairs::ReadOp{BlockIndex{start}, static_cast<uint32_t>(count)},
             GuestCall{OpKind::kRead, seq, start, count});
    }
    result_.ops = ops_;
  }

  // EIO is allowed only while two replicas are (or were, during the call) out of service.
  bool eio_allowed(const GuestCall& call) const {
    return double_open_ || call.double_epoch != double_epoch_;
  }

  void guest_done(upstairs::GuestDone& g) {
    auto it = calls_.find(g.id);
    if (it == calls_.end())
      return fail_run(fmt::format("a reply for guest call {} that is not outstanding", g.id.value));
    GuestCall call = it->second;
    calls_.erase(it);
    if (!g.status) {
      bool io_call = call.kind != OpKind::kActivate && call.kind != OpKind::kReplace;
      // A latent flip is a copy lost already, and with overlapping faults one (a break
      // during a repair, which cannot be replayed) may take out a second replica: two out
      // in the upstairs' own view is two out.
      if (io_call && !double_open_ && (flips_ever_ || options_.overlap) && out_of_service() >= 2)
        note_double();
      if (!io_call || !eio_allowed(call) || phase_ == Phase::kFinalFlush ||
          phase_ == Phase::kFinalRead)
        return fail_run(fmt::format("guest op {} ({}) failed: {}; {}", call.seq,
                                    static_cast<int>(call.kind), g.status.error().to_string(),
                                    status_text()));
      ++result_.eio;
      trace("guest op {} failed (allowed, two replicas out): {}", call.seq,
            g.status.error().to_string());
      if (call.kind == OpKind::kWrite || call.kind == OpKind::kWriteUnwritten ||
          call.kind == OpKind::kDiscard)
        model_->write_failed(call.seq, call.start, call.count);
      if (call.kind == OpKind::kFlush) {
        // As a failed fsync: what was written since the last good one may be lost (the
        // upstairs may drop those writes), so each block may hold any of those values.
        model_->upstairs_crash(next_seq_);
        ++next_seq_;
      }
      return;
    }
    switch (call.kind) {
      case OpKind::kActivate:
        if (phase_ == Phase::kActivating) phase_ = Phase::kRunning;
        next_op_at_ = now_;
        break;
      case OpKind::kFlush:
        model_->flush_acked(call.seq);
        check_durable(call.seq);
        if (phase_ == Phase::kFinalFlush) {
          phase_ = Phase::kRetiring;
          poll_at_ = now_;
        }
        break;
      case OpKind::kRead:
        check_read(call, g.read);
        break;
      default:
        break;
    }
  }

  // The guest's view of blocks read straight from a region: decrypted (each block alone,
  // so one bad block does not hide the others) and decoded. nullopt: unreadable.
  std::vector<std::optional<Value>> decode_region(const downstairs::ReadResult& r, uint64_t first) {
    std::vector<std::optional<Value>> out;
    for (size_t i = 0; i < r.contexts.size(); ++i) {
      std::vector<std::byte> block(r.data.span().begin() + static_cast<ptrdiff_t>(i * bs_),
                                   r.data.span().begin() + static_cast<ptrdiff_t>((i + 1) * bs_));
      std::optional<proto::BlockContext> ctx = r.contexts[i];
      if (!proto::verify_blocks(first + i, bs_, std::span(&ctx, 1), block, options_.encrypted) ||
          !crypto_.open(first + i, std::span(&ctx, 1), block)) {
        out.push_back(std::nullopt);
        continue;
      }
      out.push_back(decode_block(first + i, block));
    }
    return out;
  }

  void touch(uint64_t seq, uint64_t start, uint64_t count) {
    for (uint64_t b = start; b < start + count; ++b) written_at_[b] = seq;
  }

  // What downstairs d holds now in the extents marked in `extents` (nullopt where it
  // cannot be read: a closed extent under repair, a corrupt block). A downstairs that is
  // down shows what its disk will hold when it restarts.
  std::vector<std::optional<Value>> replica_view(int d, const std::vector<bool>& extents) {
    Downstairs& ds = ds_[d];
    std::vector<std::optional<Value>> out(total_blocks_);
    downstairs::Region* region = ds.region.get();
    std::unique_ptr<downstairs::Region> reopened;
    if (!region) {
      auto r = downstairs::Region::open(*ds.fs, ds.dir, true);
      if (!r) return out;
      reopened = std::move(*r);
      region = reopened.get();
    }
    // The harness reads past injected disk errors: this is the test's view, not IO.
    if (ds.storage_p > 0) ds.fs->clear_faults();
    for (uint64_t s = 0; s < total_blocks_; s += extent_size_) {
      if (!extents[s / extent_size_]) continue;
      auto r = region->read(BlockIndex{s}, extent_size_);
      auto values =
          r ? decode_region(*r, s)
            : read_extent_file(d, *region, ExtentId{static_cast<uint32_t>(s / extent_size_)});
      for (uint64_t i = 0; i < extent_size_; ++i) out[s + i] = values[i];
    }
    if (ds.storage_p > 0) set_storage_errors(d, ds.storage_p);
    return out;
  }

  // An extent the region does not serve: closed for a repair step (on every replica while
  // it is repaired), or damaged (blocks a crash tore match none of their contexts). What
  // its file holds, read past the region one block at a time: a damaged extent's other
  // blocks are intact on disk and count as copies (seed 10000000118 of Sim.TwoDown: a
  // torn unflushed write at blocks 58-61 hid the flushed block 34 of the same extent,
  // which the upstairs had rightly counted durable there). Whether recovery keeps them
  // when a stale healthy peer is the only source is for reconciliation (and the reads
  // after it) to show, not this check.
  std::vector<std::optional<Value>> read_extent_file(int d, downstairs::Region& region,
                                                     ExtentId e) {
    std::vector<std::optional<Value>> out(extent_size_);
    downstairs::ExtentLayout layout{bs_, extent_size_};
    auto x = downstairs::Extent::open(*ds_[d].fs, region.extent_path(e), layout, e, true,
                                      options_.encrypted, downstairs::Space::kKeep);
    if (!x) return out;
    const uint64_t first = uint64_t{e.value} * extent_size_;
    for (uint64_t i = 0; i < extent_size_; ++i) {
      downstairs::ReadResult r;
      r.contexts.resize(1);
      r.data = ByteBuffer(bs_);
      if (!(*x)->read(i, r.contexts, r.data.span())) continue;  // damaged: no copy
      out[i] = decode_region(r, first + i)[0];
    }
    return out;
  }

  // Every acknowledged flush survives the loss of any one replica: each block it covers
  // holds what the flush covered (or something written since) on at least two of them,
  // so every pair keeps a copy. Blocks last written between the previous checked flush
  // and this one are checked (older ones were, at an earlier flush; newer ones will be).
  void check_durable(uint64_t flush_seq) {
    ++result_.durability_checks;
    std::vector<bool> blocks(total_blocks_, false);
    for (uint64_t b = 0; b < total_blocks_; ++b)
      blocks[b] = written_at_[b] > checked_through_ && written_at_[b] < flush_seq;
    checked_through_ = std::max(checked_through_, flush_seq);
    std::vector<bool> extents(extent_count_, false);
    for (uint64_t b = 0; b < total_blocks_; ++b)
      if (blocks[b]) extents[b / extent_size_] = true;
    if (std::none_of(extents.begin(), extents.end(), [](bool x) { return x; })) return;
    std::vector<int> live;
    std::vector<std::vector<std::optional<Value>>> views;
    for (int d = 0; d < kClientCount; ++d) {
      // One lost after the flush was submitted may have acknowledged it before it went:
      // the copy it held then counts (its disk is as it left it).
      if (ds_[d].gone && ds_[d].lost_at_seq <= flush_seq) continue;
      live.push_back(d);
      views.push_back(replica_view(d, extents));
    }
    for (uint64_t b = 0; b < total_blocks_; ++b) {
      if (!blocks[b]) continue;
      if (std::any_of(ds_.begin(), ds_.end(),
                      [&](const Downstairs& ds) { return ds.flipped.contains(b); }))
        continue;  // a flipped copy is one copy lost already
      std::vector<Value> legal = model_->legal(b, flush_seq, next_seq_ - 1);
      std::vector<int> holding;
      for (size_t i = 0; i < live.size(); ++i)
        if (views[i][b] && std::find(legal.begin(), legal.end(), *views[i][b]) != legal.end())
          holding.push_back(live[i]);
      if (holding.size() >= 2) continue;
      std::string held;
      for (size_t i = 0; i < live.size(); ++i)
        held += fmt::format(" ds{}: {}", live[i],
                            views[i][b] ? fmt::format("{}", *views[i][b]) : "unreadable");
      return fail_run(fmt::format(
          "flush op {} was acknowledged but block {} is durable on {} replica(s) only (a pair "
          "without it exists):{}; {}; {}",
          flush_seq, b, holding.size(), held, model_->describe(b), status_text()));
    }
  }

  void check_read(const GuestCall& call, upstairs::ReadData& read) {
    if (read.data.size() != call.count * bs_)
      return fail_run(fmt::format("read op {} returned {} bytes for {} blocks", call.seq,
                                  read.data.size(), call.count));
    if (options_.encrypted) {
      ByteBuffer plain(read.data.size());
      std::copy(read.data.span().begin(), read.data.span().end(), plain.span().begin());
      if (auto s = crypto_.open(call.start, read.contexts, plain.span()); !s)
        return fail_run(
            fmt::format("read op {} does not decrypt: {}", call.seq, s.error().to_string()));
      read.data = Bytes(std::move(plain));
    }
    // Strict unless something happened that may have made the upstairs retry it as a new
    // job (which may then follow writes submitted after it).
    bool strict = call.epoch == epoch_ && !storage_faults_;
    for (uint64_t i = 0; i < call.count; ++i) {
      uint64_t block = call.start + i;
      auto got = decode_block(block, read.data.span().subspan(i * bs_, bs_));
      if (auto err = model_->check_read(block, call.seq, next_seq_ - 1, got, strict))
        return fail_run(*err + "; " + model_->describe(block));
    }
    if (call.final_read && calls_.empty()) finish();
  }

  // ---- the end of a run ------------------------------------------------------------------------
  void poll() {
    switch (phase_) {
      case Phase::kDraining:
        // Every call answered and every downstairs back: then a last flush.
        if (!calls_.empty() || !healthy()) break;
        phase_ = Phase::kFinalFlush;
        submit(upstairs::FlushOp{}, GuestCall{OpKind::kFlush, next_seq_++});
        return;
      case Phase::kRetiring:
        // The flush completes everywhere and retires every job.
        if (up().snapshot().jobs != 0) break;
        phase_ = Phase::kFinalRead;
        for (uint64_t s = 0; s < total_blocks_; s += extent_size_) {
          GuestCall call{OpKind::kRead, next_seq_++, s, extent_size_};
          call.final_read = true;
          submit(upstairs::ReadOp{BlockIndex{s}, static_cast<uint32_t>(extent_size_)}, call);
        }
        return;
      default:
        return;
    }
    poll_at_ = now_ + kPollInterval;
  }

  // Liveness: the replicas left compare equal, block by block and extent by extent.
  void finish() {
    // A downstairs faulted during the final flush or reads (a late report of damaged
    // extents, say) is being repaired, not in step: drain again before comparing.
    if (!healthy()) {
      phase_ = Phase::kDraining;
      poll_at_ = now_;
      return;
    }
    phase_ = Phase::kDone;
    std::vector<int> live;
    for (int d = 0; d < kClientCount; ++d)
      if (!ds_[d].gone) live.push_back(d);
    std::vector<downstairs::ReadResult> data;
    for (int d : live) {
      auto r = ds_[d].region->read(BlockIndex{0}, total_blocks_);
      if (!r)
        return fail_run(fmt::format("downstairs {}: reading the region at the end: {}", d,
                                    r.error().to_string()));
      data.push_back(std::move(*r));
    }
    for (uint64_t b = 0; b < total_blocks_; ++b) {
      std::vector<int> bad;
      for (size_t i = 0; i < live.size(); ++i) {
        auto bytes = data[i].data.span().subspan(b * bs_, bs_);
        std::optional<proto::BlockContext> ctx = data[i].contexts[b];
        if (!proto::verify_blocks(b, bs_, std::span(&ctx, 1), bytes, options_.encrypted))
          bad.push_back(live[i]);
      }
      if (!bad.empty()) {
        for (int d : bad)
          if (!ds_[d].flipped.contains(b))
            return fail_run(fmt::format(
                "block {} fails its hash on downstairs {}, where it was never corrupted", b, d));
        if (bad.size() == live.size())
          return fail_run(fmt::format("block {} is corrupt on every replica", b));
        ++result_.latent_corruptions;  // flipped and never read since: nothing could notice
        continue;
      }
      for (size_t i = 1; i < live.size(); ++i) {
        auto a = data[0].data.span().subspan(b * bs_, bs_);
        auto o = data[i].data.span().subspan(b * bs_, bs_);
        if (data[0].contexts[b] != data[i].contexts[b] ||
            !std::equal(a.begin(), a.end(), o.begin()))
          return fail_run(fmt::format("block {} differs between downstairs {} and {} at the end", b,
                                      live[0], live[i]));
      }
    }
    auto v0 = ds_[live[0]].region->versions();
    for (size_t i = 1; i < live.size(); ++i) {
      auto vi = ds_[live[i]].region->versions();
      for (size_t e = 0; e < v0.size(); ++e)
        if (v0[e] != vi[e])
          return fail_run(
              fmt::format("extent {} metadata differs at the end: downstairs {} has (gen {}, flush "
                          "{}, dirty {}), "
                          "downstairs {} has (gen {}, flush {}, dirty {})",
                          e, live[0], v0[e].generation, v0[e].flush, v0[e].dirty, live[i],
                          vi[e].generation, vi[e].flush, vi[e].dirty));
    }
    for (auto& [u, inst] : ups_) collect(*inst.core);
  }

  std::string status_text() const {
    if (!ups_.contains(cur_)) return "no upstairs";
    upstairs::Snapshot s = up().snapshot();
    std::string out =
        fmt::format("upstairs {} (jobs {}, waiting {}, repair {} at extent {})", s.state, s.jobs,
                    s.guest_waiting, s.repair.running, s.repair.extent);
    for (ClientId c : kAllClients) {
      const auto& cs = s.clients[c];
      out += fmt::format("; ds{}: {} in flight {} last error '{}'{}{}", c, cs.state,
                         cs.jobs_in_flight, cs.last_error, ds_[c.value].up ? "" : " (down)",
                         ds_[c.value].gone ? " (gone)" : "");
    }
    out += fmt::format("; guest calls outstanding {}", calls_.size());
    return out;
  }

  SimOptions options_;
  std::mt19937_64 rng_;
  uint32_t bs_;
  upstairs::BlockCrypto crypto_;
  SimResult result_;
  TimePoint start_, now_;
  uint64_t extent_size_ = 0, total_blocks_ = 0;
  uint32_t extent_count_ = 0;
  std::optional<Model> model_;
  std::vector<uint64_t> written_at_;  // the op that last wrote or discarded each block
  uint64_t checked_through_ = 0;      // the last flush whose blocks were checked
  std::array<Downstairs, kClientCount> ds_;
  std::map<int, UpInstance> ups_;
  int cur_ = 0, next_up_ = 1;
  TimePoint next_fenced_write_at_{};
  std::vector<int> old_ups_;            // taken over, still connected
  std::map<GuestId, GuestCall> calls_;  // the current upstairs'
  TimePoint took_over_at_{};
  std::map<uint64_t, Link> links_;
  uint64_t next_link_ = 1;
  std::vector<PendingConnect> connects_;
  std::vector<std::pair<uint64_t, bool>> candidates_;
  Phase phase_ = Phase::kActivating;
  uint64_t next_guest_ = 1, next_seq_ = 1, ops_ = 0;
  TimePoint next_op_at_{};
  std::optional<TimePoint> poll_at_;
  // Bumped by anything that may make the upstairs retry a read.
  uint64_t epoch_ = 0;
  // Two replicas out of service (EIO allowed): open now, and how often it opened.
  bool double_open_ = false;
  uint64_t double_epoch_ = 0;
  TimePoint next_double_probe_{}, next_repair_probe_{};
  bool storage_faults_ = false;
  bool flips_ever_ = false;
  std::vector<FaultKind> plan_;
  size_t next_fault_ = 0;
  TimePoint next_fault_at_{};
  std::optional<std::pair<int, TimePoint>> pending_crash_;  // the second of crash-two
};

}  // namespace

SimResult run_sim(const SimOptions& options) { return Sim(options).run(); }

}  // namespace cru::sim
