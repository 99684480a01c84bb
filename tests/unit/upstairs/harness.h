// A hand-driven upstairs core for unit tests: the test plays the guest, the three
// downstairs and the clock. Every action the core returns is sorted into per-downstairs
// inboxes (messages it sent), guest replies, connects and disconnects; the test answers
// by feeding events back. Fake time only; single thread; no sockets.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/hash.h"
#include "upstairs/upstairs.h"

namespace cru::upstairs::test {

using namespace std::chrono_literals;
using namespace cru::proto;

inline constexpr uint32_t kBs = 512;
inline constexpr uint64_t kExtentSize = 8;
inline constexpr uint32_t kExtents = 4;
inline constexpr uint64_t kTotalBlocks = kExtentSize * kExtents;
inline constexpr ClientId kC0{0}, kC1{1}, kC2{2};

// `n` blocks of bytes derived from `seed`.
inline Bytes pattern(size_t n, uint8_t seed) {
  ByteBuffer b(n * kBs);
  for (size_t i = 0; i < b.size(); ++i)
    b.data()[i] = static_cast<std::byte>(seed * 31 + i / kBs * 7 + i % 251);
  return Bytes(std::move(b));
}

// `n` blocks, block i filled with the byte (seed + i): which block came from where shows at
// a glance.
inline Bytes uniform_blocks(size_t n, uint8_t seed) {
  ByteBuffer b(n * kBs);
  for (size_t i = 0; i < n; ++i)
    std::memset(b.data() + i * kBs, static_cast<uint8_t>(seed + i), kBs);
  return Bytes(std::move(b));
}

inline std::vector<BlockContext> contexts_of(const Bytes& data) {
  std::vector<BlockContext> out;
  for (size_t off = 0; off < data.size(); off += kBs)
    out.push_back({integrity_hash(data.span().subspan(off, kBs)), std::nullopt});
  return out;
}

inline WriteOp write_op(uint64_t start, size_t n, uint8_t seed) {
  Bytes data = pattern(n, seed);
  return WriteOp{BlockIndex{start}, contexts_of(data), data, false};
}

// What one fake downstairs answers during negotiation.
struct FakeDs {
  Generation highest_generation;
  RegionDefinition region{kBs, kExtentSize, kExtents, Uuid::random(), false};
  std::vector<ExtentVersion> versions = std::vector<ExtentVersion>(kExtents);
  // Instead of YesItsMe, answer HereIAm with this (e.g. EncryptedMismatch).
  std::optional<Message> refuse_hello;
};

class Harness {
 public:
  explicit Harness(Limits limits = {}, bool encrypted = false)
      : up_(make_config(limits, encrypted)) {}

  static Config make_config(Limits limits, bool encrypted) {
    Config c;
    c.targets = {"127.0.0.1:3801", "127.0.0.1:3802", "127.0.0.1:3803"};
    c.encrypted = encrypted;
    c.upstairs_id = Uuid::random();
    c.session_id = Uuid::random();
    c.limits = limits;
    return c;
  }

  Upstairs& up() { return up_; }
  TimePoint now() const { return now_; }
  void advance(Duration d) { now_ += d; }

  void run(Event e) {
    for (Action& a : up_.apply(std::move(e), now_)) absorb(a);
  }
  // Ticks with the clock set to `t` (never moves the clock backwards).
  void tick_at(TimePoint t) {
    now_ = std::max(now_, t);
    run(Tick{});
  }

  GuestId submit(GuestOp op) {
    GuestId id{next_guest_++};
    run(GuestSubmit{id, std::move(op)});
    return id;
  }
  void deliver(ClientId c, Message m) {
    if (auto id = answered_job(m)) answered_at_[c].try_emplace(*id, seq_++);
    run(ClientMessage{c, conn_[c], std::move(m)});
  }
  // Bytes sent to c left for the network (the shell's ClientSent).
  void sent(ClientId c) { run(ClientSent{c, conn_[c]}); }
  void disconnect(ClientId c, const std::string& why = "test: connection reset") {
    run(ClientDisconnected{c, conn_[c], why});
  }

  // ---- guest replies
  bool done(GuestId g) const { return done_.contains(g.value); }
  const GuestDone& reply(GuestId g) const {
    auto it = done_.find(g.value);
    CRU_ASSERT(it != done_.end(), "no reply for that guest operation");
    return it->second;
  }
  size_t replies_for(GuestId g) const {
    return reply_count_.contains(g.value) ? reply_count_.at(g.value) : 0;
  }

  // ---- what the core sent
  std::deque<Message>& inbox(ClientId c) { return inbox_[c]; }
  const std::vector<Disconnect>& disconnects() const { return disconnects_; }
  const std::vector<ConnectTo>& connects() const { return connects_; }
  // Every IO job message each downstairs was sent, in order (kept after the inbox pops).
  const std::vector<Message>& jobs_sent(ClientId c) const { return jobs_sent_[c]; }
  // The job with id `id` as sent to `c` (nullopt if it was not sent there).
  std::optional<Message> sent(ClientId c, JobId id) const;
  // Its dependencies (a test failure if it was not sent to `c`).
  std::vector<JobId> deps(ClientId c, JobId id) const;
  // The id of the newest job sent to `c` (a test failure if none was).
  JobId newest(ClientId c) const;

  // Whether downstairs `c` cannot run job `y` before job `x` finished there: `x` was
  // answered by `c` before `y` was sent, or `y` depends on `x` directly or through jobs
  // that do. (A dependency on a job the downstairs already answered is not needed.)
  bool precedes(ClientId c, JobId x, JobId y) const;

  // Pops the oldest message to `c`, which must be a T.
  template <typename T>
  T take(ClientId c) {
    auto& q = inbox_[c];
    if (q.empty()) {
      ADD_FAILURE() << "downstairs " << int(c.value) << " was sent nothing; expected "
                    << tag_name(T::kTag);
      return T{};
    }
    Message m = std::move(q.front());
    q.pop_front();
    if (auto* t = std::get_if<T>(&m)) return std::move(*t);
    ADD_FAILURE() << "downstairs " << int(c.value) << " was sent " << describe(m) << "; expected "
                  << tag_name(T::kTag);
    return T{};
  }
  // Drops pings and other chatter the tests do not answer.
  void drop_pings() {
    for (auto& q : inbox_)
      std::erase_if(q, [](const Message& m) { return std::holds_alternative<Ruok>(m); });
  }

  // ---- activation
  // Plays the three downstairs through connect and negotiation. Returns the activation's
  // guest id; the activation may have succeeded or failed (see reply()).
  GuestId activate(std::optional<Generation> gen, ClientData<FakeDs> ds = {}) {
    GuestId g = submit(ActivateOp{gen});
    negotiate(ds);
    return g;
  }
  // Answers connects and negotiation messages until nothing more happens.
  void negotiate(ClientData<FakeDs>& ds) {
    for (bool progress = true; progress;) {
      progress = false;
      for (ClientId c : kAllClients) {
        if (pending_connect_[c]) {
          pending_connect_[c] = false;
          run(ClientConnected{c, conn_[c]});
          progress = true;
        }
        auto& q = inbox_[c];
        for (auto it = q.begin(); it != q.end();) {
          std::optional<Message> answer;
          if (std::holds_alternative<HereIAm>(*it)) {
            answer = ds[c].refuse_hello ? *ds[c].refuse_hello
                                        : Message{YesItsMe{kProtocolVersion, "127.0.0.1:4000",
                                                           ds[c].highest_generation}};
          } else if (auto* p = std::get_if<PromoteToActive>(&*it)) {
            answer = YouAreNowActive{p->upstairs_id, p->session_id, p->generation};
            promoted_[c] = p->generation;
          } else if (std::holds_alternative<RegionInfoPlease>(*it)) {
            answer = RegionInfo{ds[c].region};
          } else if (std::holds_alternative<ExtentVersionsPlease>(*it)) {
            answer = ExtentVersions{ds[c].versions};
          }
          if (!answer) {
            ++it;
            continue;
          }
          it = q.erase(it);
          deliver(c, std::move(*answer));
          progress = true;
          break;  // the inbox may have changed under us
        }
      }
    }
  }
  // Activates three fresh downstairs; asserts success.
  void activate_fresh() {
    GuestId g = activate(std::nullopt);
    ASSERT_TRUE(done(g)) << "activation did not finish";
    ASSERT_TRUE(reply(g).status) << reply(g).status.error().to_string();
    ASSERT_TRUE(up_.active());
    for (auto& q : inbox_) ASSERT_TRUE(q.empty()) << "left over: " << describe(q.front());
  }
  std::optional<Generation> promoted(ClientId c) const { return promoted_[c]; }

  // ---- answering IO
  void ack(ClientId c, JobId id, WireStatus st = WireStatus::ok()) {
    deliver(c, Ack{id, std::move(st)});
  }
  // Pops the next message to `c` (a job carrying an id) and acks it.
  JobId ack_next(ClientId c);
  // Answers a read with the given data and the contexts it should have.
  void read_reply(ClientId c, const Read& r, const Bytes& data,
                  std::optional<std::vector<BlockContext>> ctx = {}) {
    std::vector<BlockContext> good = ctx ? *ctx : contexts_of(data);
    ReadResponse resp;
    resp.job_id = r.job_id;
    resp.block_size = kBs;
    for (auto& x : good) resp.contexts.emplace_back(x);
    resp.data = data;
    deliver(c, std::move(resp));
  }
  void read_error(ClientId c, const Read& r, ErrorCode code = ErrorCode::kIo) {
    ReadResponse resp;
    resp.job_id = r.job_id;
    resp.status = WireStatus{code, "test: injected read error"};
    resp.block_size = kBs;
    deliver(c, std::move(resp));
  }
  // Which downstairs were sent a Read (still in their inbox).
  std::vector<ClientId> holding_read() const {
    std::vector<ClientId> out;
    for (ClientId c : kAllClients)
      for (auto& m : inbox_[c])
        if (std::holds_alternative<Read>(m)) out.push_back(c);
    return out;
  }

 private:
  void absorb(Action& a);
  static std::optional<JobId> answered_job(const Message& m);

  Upstairs up_;
  TimePoint now_ = TimePoint{} + std::chrono::hours(1000);
  uint64_t next_guest_ = 1;
  ClientData<ConnId> conn_{ConnId{}};
  ClientData<bool> pending_connect_{false};
  ClientData<std::optional<Generation>> promoted_;
  ClientData<std::deque<Message>> inbox_;
  ClientData<std::vector<Message>> jobs_sent_;
  // Event order, per downstairs: when each job was first sent and first answered.
  uint64_t seq_ = 0;
  ClientData<std::map<JobId, uint64_t>> sent_at_, answered_at_;
  std::map<uint64_t, GuestDone> done_;
  std::map<uint64_t, size_t> reply_count_;
  std::vector<Disconnect> disconnects_;
  std::vector<ConnectTo> connects_;
};

// The job id and dependencies of an IO job message (nullopt for other messages).
struct JobView {
  JobId id;
  std::vector<JobId> deps;
};
std::optional<JobView> job_view(const Message& m);

}  // namespace cru::upstairs::test
