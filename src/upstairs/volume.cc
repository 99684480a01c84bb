#include "upstairs/volume.h"

#include <fmt/format.h>

#include <asio/io_context.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>
#include <atomic>
#include <cstring>
#include <future>
#include <semaphore>
#include <thread>
#include <unordered_map>

#include "common/log.h"
#include "common/thread_signals.h"
#include "proto/connection.h"
#include "proto/limits.h"
#include "upstairs/parent.h"
#include "upstairs/tracing.h"
#include "upstairs/upstairs.h"

namespace cru::upstairs {

namespace {
// Frames queued for one downstairs: above the 1500-job admission limit plus pings,
// flushes and repair jobs, so a healthy connection never fills it.
constexpr size_t kOutboxFrames = 8192;
// Besides jobs, the outbox holds pings and repair steps: a little room on top of the
// jobs the core may send at once.
constexpr uint64_t kOutboxSlackBytes = 16 * kMiB;
// The longest frame a downstairs may send us: a read reply of one job, or an extent list
// (both within the metadata limit). A longer one is a protocol error before anything is
// allocated for it, so a hostile downstairs cannot make us hold 64 MiB frames.
constexpr uint64_t kFrameFromDownstairsBytesMax =
    proto::kFrameHeaderBytes + proto::kMaxMetaBytes + kMaxJobBytes;
static_assert(kFrameFromDownstairsBytesMax <= proto::kMaxFrameBytes);

// Bytes queued for one downstairs: at most its admitted jobs plus the finished ones kept
// for replay (a reconnect resends them at once), twice over for the jobs that arrive
// while a barrier is on its way.
uint64_t outbox_bytes_max(const Limits& l) {
  return 2 * (l.bytes_in_flight_max + l.barrier_bytes) + kOutboxSlackBytes;
}

// How often, at most, a link tells the core that bytes left for the network: far below
// the quorum grace (seconds), far above the rate of batches (microseconds).
constexpr auto kSentReportInterval = std::chrono::milliseconds(200);

}  // namespace

struct IoThread::Impl {
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work{asio::make_work_guard(io)};
  // Written by the io thread as it starts, read by any caller: atomic so TSan-clean.
  std::atomic<std::thread::id> id{};
  std::thread thread;

  Impl() {
    thread = std::thread([this] {
      block_async_signals_in_this_thread();
      id = std::this_thread::get_id();
      io.run();
    });
  }
  ~Impl() { stop(); }

  // Lets the thread end once nothing is left to run, and waits for that. Not from it.
  void stop() {
    if (!thread.joinable()) return;
    asio::post(io, [this] { work.reset(); });
    thread.join();
  }
};

IoThread::IoThread() : impl_(std::make_unique<Impl>()) {}
IoThread::~IoThread() = default;
void IoThread::post(std::function<void()> fn) { asio::post(impl_->io, std::move(fn)); }
bool IoThread::on_this_thread() const { return std::this_thread::get_id() == impl_->id; }

struct Volume::Impl {
  using Completion = std::function<void(GuestDone&)>;
  // The connection the core knows as (client, id); a replaced or dropped one is closed
  // and leaves its slot, so only the current one's events reach the core.
  struct Link {
    ConnId id;
    proto::FramedConnection::Ptr conn;
    Clock::time_point next_sent_report{};  // ClientSent: not before this
  };

  explicit Impl(VolumeOptions o)
      : owned(o.io_thread == nullptr),
        owner(owned ? std::make_shared<IoThread>() : o.io_thread),
        io(owner->impl().io),
        options(std::move(o)),
        core(Config{options.targets, options.read_only, options.key.has_value(), Uuid::random(),
                    Uuid::random(), options.limits}),
        timer(io),
        outstanding(kMaxOutstandingCalls) {}

  ~Impl() {
    CRU_ASSERT(!on_io_thread(), "a volume cannot be destroyed from its own io thread");
    std::promise<void> closed;
    asio::post(io, [this, &closed] {
      // Disarmed, the connections end on their own without calling back into this.
      for (auto& l : links) {
        if (!l.conn) continue;
        l.conn->disarm();
        l.conn->close("volume closing");
        l.conn.reset();
      }
      timer.cancel();
      end_watch();
      stopping = true;
      // Handlers that completed before the cancellations are queued ahead of this one:
      // once it runs, none of them can still reach this on a shared thread.
      asio::post(io, [&closed] { closed.set_value(); });
    });
    closed.get_future().wait();
    // Its own thread ends here, so what is left to run (the cancelled timer, the closing
    // connections) runs while this is still whole; a shared one runs on, and those
    // handlers then only see their cancellation.
    if (owned) owner->impl().stop();
  }

  // ---- a watched descriptor (io thread only) --------------------------------------------

  void arm_watch() {
    watched->async_wait(asio::posix::stream_descriptor::wait_read,
                        [this](const asio::error_code& ec) {
                          if (ec || !watched) return;  // cancelled by end_watch()
                          on_readable();
                          if (watched) arm_watch();
                        });
  }

  void end_watch() {
    if (!watched) return;
    asio::error_code ignored;
    watched->cancel(ignored);
    watched->release();  // the descriptor is the caller's
    watched.reset();
    on_readable = nullptr;
  }

  bool on_io_thread() const { return owner->on_this_thread(); }

  // ---- core driving (io thread only) --------------------------------------------------

  void run_core(Event e) {
    auto actions = core.apply(std::move(e), Clock::now());
    for (auto& a : actions) perform(a);
    // Geometry for the API's callers, once known.
    if (auto& r = core.region(); r && block_size_.load() == 0) {
      total_blocks_ = r->total_blocks();
      block_size_ = r->block_size;
      crypto.emplace(r->block_size, options.key);
    }
    rearm_timer();
  }

  void rearm_timer() {
    TimePoint d = core.next_deadline();
    if (d == armed) return;
    armed = d;
    if (d == TimePoint::max()) {
      timer.cancel();
      return;
    }
    timer.expires_at(d);
    timer.async_wait([this, d](const asio::error_code& ec) {
      if (ec || stopping || armed != d) return;
      armed = TimePoint::max();
      run_core(Tick{});
    });
  }

  void perform(Action& a) {
    if (auto* s = std::get_if<SendTo>(&a)) {
      Link& l = links[s->client];
      // False when closing (a full outbox closes it): its on_closed tells the core.
      if (l.conn && l.id == s->conn) {
        if (tracing) tracing->on_send(s->client, s->message, Clock::now());
        (void)l.conn->send(s->message);
      }
    } else if (auto* ct = std::get_if<ConnectTo>(&a)) {
      Link& l = links[ct->client];
      if (l.conn) l.conn->close("replaced by a new connection");
      l = Link{ct->conn, proto::FramedConnection::connect(io.get_executor(), ct->address,
                                                          connection_options(),
                                                          handlers(ct->client, ct->conn))};
      l.conn->set_frame_bytes_max(kFrameFromDownstairsBytesMax);
    } else if (auto* d = std::get_if<Disconnect>(&a)) {
      Link& l = links[d->client];
      if (l.conn && l.id == d->conn) {
        l.conn->close(d->reason);
        l.conn.reset();
      }
    } else if (auto* g = std::get_if<GuestDone>(&a)) {
      auto it = pending.find(g->id);
      CRU_ASSERT(it != pending.end(), "a guest reply for an unknown request");
      Completion done = std::move(it->second);
      pending.erase(it);
      if (tracing) tracing->on_done(*g, Clock::now());
      done(*g);
    }
  }

  proto::FramedConnection::Options connection_options() const {
    proto::FramedConnection::Options o;
    o.outbox_frames = kOutboxFrames;
    o.tls = options.tls;
    o.tls_check_host = true;
    o.outbox_bytes = outbox_bytes_max(options.limits);
    // No idle or connect timeout: the core times both out through ticks (Disconnect).
    return o;
  }

  bool current(ClientId client, ConnId id) const {
    return links[client].conn && links[client].id == id;
  }

  // The handlers capture this: ~Impl disarms every connection before it goes.
  proto::FramedConnection::Handlers handlers(ClientId client, ConnId id) {
    proto::FramedConnection::Handlers h;
    h.on_connected = [this, client, id] {
      if (current(client, id)) run_core(ClientConnected{client, id});
    };
    h.on_message = [this, client, id](proto::Message m) {
      if (!current(client, id)) return;
      if (tracing) tracing->on_reply(client, m, Clock::now());
      run_core(ClientMessage{client, id, std::move(m)});
    };
    h.on_closed = [this, client, id](const std::string& reason) { lost(client, id, reason); };
    h.on_sent = [this, client, id] {
      // Liveness only needs coarse time: at most one core event per interval per link.
      auto now = Clock::now();
      if (!current(client, id) || now < links[client].next_sent_report) return;
      links[client].next_sent_report = now + kSentReportInterval;
      run_core(ClientSent{client, id});
    };
    return h;
  }

  // Reports a connection's end to the core unless the core already replaced or dropped it.
  void lost(ClientId client, ConnId id, const std::string& reason) {
    if (!current(client, id)) return;
    links[client].conn.reset();
    run_core(ClientDisconnected{client, id, reason});
  }

  // ---- guest submissions --------------------------------------------------------------

  // Queues operations for the core (in order) with one completion for each.
  void submit(std::vector<std::pair<GuestOp, Completion>> ops) {
    asio::post(io, [this, ops = std::move(ops)]() mutable {
      if (stopping) return;
      for (auto& [op, done] : ops) {
        GuestId id{next_guest++};
        pending.emplace(id, std::move(done));
        if (tracing) tracing->on_submit(id, op, block_size_, Clock::now());
        run_core(GuestSubmit{id, std::move(op)});
      }
    });
  }

  // Bounds calls in flight; not on the io thread (a completion submitting more must not
  // wait for completions that only the io thread can deliver).
  bool acquire() {
    if (on_io_thread()) return false;
    outstanding.acquire();
    return true;
  }
  std::function<void()> releaser(bool acquired) {
    return [this, acquired] {
      if (acquired) outstanding.release();
    };
  }

  // A read of several jobs (or one to decrypt, or one whose written mask is wanted): every
  // job's data lands in one buffer, and the last to finish decrypts and answers `done`, or
  // `masked_done` with the mask when that is set.
  void read_gathered(BlockIndex start, uint64_t count, ReadFn done, MaskedReadFn masked_done,
                     std::function<void()> release) {
    const uint32_t bs = block_size_;
    const uint64_t per = chunk_blocks();
    struct State {
      ByteBuffer buf;
      std::vector<std::optional<proto::BlockContext>> contexts;
      uint64_t remaining = 0;
      Status status;
      ReadFn done;
      MaskedReadFn masked_done;
      std::function<void()> release;
    };
    auto st = std::make_shared<State>();
    st->remaining = std::max<uint64_t>(1, (count + per - 1) / per);
    st->done = std::move(done);
    st->masked_done = std::move(masked_done);
    st->release = std::move(release);
    if (count > 0) {
      st->buf = ByteBuffer(count * bs);
      if (options.key || st->masked_done) st->contexts.resize(count);
    }
    std::vector<std::pair<GuestOp, Completion>> ops;
    for (uint64_t off = 0; off < count || (count == 0 && off == 0); off += per) {
      uint64_t n = std::min(per, count - off);
      ops.emplace_back(
          ReadOp{BlockIndex{start.value + off}, static_cast<uint32_t>(n)},
          [this, st, off, bs, start](GuestDone& g) {
            if (!g.status) {
              if (st->status) st->status = g.status;
            } else if (!st->buf.empty()) {
              std::memcpy(st->buf.data() + off * bs, g.read.data.data(), g.read.data.size());
              if (!st->contexts.empty())
                std::move(g.read.contexts.begin(), g.read.contexts.end(),
                          st->contexts.begin() + static_cast<long>(off));
            }
            if (--st->remaining > 0) return;
            if (st->status && options.key)
              st->status = crypto->open(start.value, st->contexts, st->buf.span());
            auto unlock = std::move(st->release);
            if (st->masked_done) {
              auto reply = std::move(st->masked_done);
              if (st->status)
                reply(MaskedRead{Bytes(std::move(st->buf)), written_mask(st->contexts)});
              else
                reply(tl::unexpected(st->status.error()));
            } else {
              auto reply = std::move(st->done);
              if (st->status)
                reply(Bytes(std::move(st->buf)));
              else
                reply(tl::unexpected(st->status.error()));
            }
            unlock();
          });
      if (count == 0) break;
    }
    submit(std::move(ops));
  }

  uint64_t chunk_blocks() const { return std::max<uint64_t>(1, kMaxJobBytes / block_size_); }

  Status check_active() const {
    if (block_size_.load() == 0) return fail(ErrorCode::kNotActive, "the volume is not active");
    return {};
  }

  const bool owned;  // the io thread is this volume's own
  // Declared first: the io_context outlives everything below that uses it.
  std::shared_ptr<IoThread> owner;
  asio::io_context& io;
  VolumeOptions options;
  Upstairs core;
  asio::steady_timer timer;
  std::counting_semaphore<kMaxOutstandingCalls> outstanding;
  TimePoint armed = TimePoint::max();
  bool stopping = false;
  ClientData<Link> links;
  std::unordered_map<GuestId, Completion> pending;
  uint64_t next_guest = 1;
  std::atomic<uint32_t> block_size_{0};
  std::atomic<uint64_t> total_blocks_{0};
  std::optional<BlockCrypto> crypto;  // set on the io thread before block_size_ is published
  std::optional<asio::posix::stream_descriptor> watched;
  std::function<void()> on_readable;
  // Spans of guest IO, when the options name a tracer (io thread only).
  std::unique_ptr<GuestTracing> tracing =
      options.tracer ? std::make_unique<GuestTracing>(options.tracer) : nullptr;
};

Volume::Volume(VolumeOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Volume::~Volume() = default;

uint32_t Volume::block_size() const { return impl_->block_size_.load(); }
uint64_t Volume::total_blocks() const { return impl_->total_blocks_.load(); }

namespace {
template <typename T>
T wait_for(std::future<T>& f, std::chrono::milliseconds timeout, bool& timed_out) {
  timed_out = f.wait_for(timeout) != std::future_status::ready;
  if (timed_out) return T{};
  return f.get();
}
}  // namespace

Status Volume::activate(std::optional<Generation> generation, std::chrono::milliseconds timeout) {
  auto p = std::make_shared<std::promise<Status>>();
  auto f = p->get_future();
  impl_->submit(
      {{ActivateOp{generation}, [p](GuestDone& g) { p->set_value(std::move(g.status)); }}});
  if (f.wait_for(timeout) == std::future_status::ready) return f.get();
  // Name what is missing: the downstairs that never became ready.
  Snapshot s = snapshot();
  std::string who;
  for (ClientId c : kAllClients) {
    const ClientStatus& cs = s.clients[c];
    if (cs.state == "wait_quorum" || cs.state == "active") continue;
    who += fmt::format("{}{} ({}{}{})", who.empty() ? "" : "; ", cs.target, cs.state,
                       cs.last_error.empty() ? "" : ": ", cs.last_error);
  }
  return fail(ErrorCode::kTimeout,
              fmt::format("activation did not finish within {} s; not ready: {}",
                          timeout.count() / 1000, who.empty() ? "(reconciling)" : who));
}

Status Volume::deactivate(std::chrono::milliseconds timeout) {
  auto p = std::make_shared<std::promise<Status>>();
  auto f = p->get_future();
  impl_->submit({{DeactivateOp{}, [p](GuestDone& g) { p->set_value(std::move(g.status)); }}});
  bool timed_out = false;
  Status s = wait_for(f, timeout, timed_out);
  if (timed_out) return fail(ErrorCode::kTimeout, "deactivation did not finish in time");
  return s;
}

void Volume::read(BlockIndex start, uint64_t count, ReadFn done) {
  if (auto s = impl_->check_active(); !s) return done(tl::unexpected(s.error()));
  Impl& im = *impl_;
  auto release = im.releaser(im.acquire());
  if (count <= im.chunk_blocks() && !im.options.key) {
    // One job and nothing to decrypt: the received data is the answer, not copied.
    im.submit({{ReadOp{start, static_cast<uint32_t>(count)},
                [done = std::move(done), release = std::move(release)](GuestDone& g) {
                  if (g.status)
                    done(std::move(g.read.data));
                  else
                    done(tl::unexpected(g.status.error()));
                  release();
                }}});
    return;
  }
  im.read_gathered(start, count, std::move(done), nullptr, std::move(release));
}

void Volume::read_masked(BlockIndex start, uint64_t count, MaskedReadFn done) {
  if (auto s = impl_->check_active(); !s) return done(tl::unexpected(s.error()));
  Impl& im = *impl_;
  auto release = im.releaser(im.acquire());
  if (count > 0 && count <= im.chunk_blocks() && !im.options.key) {
    // One job and nothing to decrypt: the received data is the answer, not copied.
    im.submit({{ReadOp{start, static_cast<uint32_t>(count)},
                [done = std::move(done), release = std::move(release)](GuestDone& g) {
                  if (g.status)
                    done(MaskedRead{std::move(g.read.data), written_mask(g.read.contexts)});
                  else
                    done(tl::unexpected(g.status.error()));
                  release();
                }}});
    return;
  }
  im.read_gathered(start, count, nullptr, std::move(done), std::move(release));
}

// One guest call split into several jobs: the first error wins, the last job to finish
// answers the call and frees its admission slot.
struct SplitCall {
  uint64_t remaining = 0;
  Status status;
  Volume::DoneFn done;
  std::function<void()> release;

  static std::shared_ptr<SplitCall> make(uint64_t jobs, Volume::DoneFn done,
                                         std::function<void()> release) {
    auto st = std::make_shared<SplitCall>();
    st->remaining = std::max<uint64_t>(1, jobs);
    st->done = std::move(done);
    st->release = std::move(release);
    return st;
  }
  static std::function<void(GuestDone&)> job_done(const std::shared_ptr<SplitCall>& st) {
    return [st](GuestDone& g) {
      if (!g.status && st->status) st->status = g.status;
      if (--st->remaining > 0) return;
      auto d = std::move(st->done);
      auto r = std::move(st->release);
      d(st->status);
      r();
    };
  }
};

// Seals a write on the caller's thread and submits it as jobs of at most `per` blocks.
static void submit_write(
    Volume::DoneFn done, BlockIndex start, std::span<const std::byte> data, bool only_unwritten,
    const BlockCrypto& crypto, uint64_t per, uint32_t bs,
    const std::function<void(std::vector<std::pair<GuestOp, std::function<void(GuestDone&)>>>)>&
        submit,
    std::function<void()> release) {
  BlockCrypto::Sealed sealed = crypto.seal(data);
  const uint64_t count = data.size() / bs;
  auto st = SplitCall::make((count + per - 1) / per, std::move(done), std::move(release));
  std::vector<std::pair<GuestOp, std::function<void(GuestDone&)>>> ops;
  for (uint64_t off = 0; off < count || (count == 0 && off == 0); off += per) {
    uint64_t n = std::min(per, count - off);
    WriteOp w;
    w.start = BlockIndex{start.value + off};
    w.contexts.assign(sealed.contexts.begin() + static_cast<long>(off),
                      sealed.contexts.begin() + static_cast<long>(off + n));
    w.data = sealed.data.slice(off * bs, n * bs);
    w.only_unwritten = only_unwritten;
    ops.emplace_back(std::move(w), SplitCall::job_done(st));
    if (count == 0) break;
  }
  submit(std::move(ops));
}

void Volume::write(BlockIndex start, std::span<const std::byte> data, DoneFn done) {
  if (auto s = impl_->check_active(); !s) return done(s);
  const uint32_t bs = impl_->block_size_;
  if (data.size() % bs != 0)
    return done(
        fail(ErrorCode::kDataLenUnaligned,
             fmt::format("{} bytes is not a multiple of the {}-byte block", data.size(), bs)));
  bool acquired = impl_->acquire();
  submit_write(
      std::move(done), start, data, false, *impl_->crypto, impl_->chunk_blocks(), bs,
      [this](auto ops) { impl_->submit(std::move(ops)); }, impl_->releaser(acquired));
}

void Volume::write_unwritten(BlockIndex start, std::span<const std::byte> data, DoneFn done) {
  if (auto s = impl_->check_active(); !s) return done(s);
  const uint32_t bs = impl_->block_size_;
  if (data.size() % bs != 0)
    return done(
        fail(ErrorCode::kDataLenUnaligned,
             fmt::format("{} bytes is not a multiple of the {}-byte block", data.size(), bs)));
  bool acquired = impl_->acquire();
  submit_write(
      std::move(done), start, data, true, *impl_->crypto, impl_->chunk_blocks(), bs,
      [this](auto ops) { impl_->submit(std::move(ops)); }, impl_->releaser(acquired));
}

void Volume::discard(BlockIndex start, uint64_t count, DoneFn done) {
  if (auto s = impl_->check_active(); !s) return done(s);
  Impl& im = *impl_;
  bool acquired = im.acquire();
  const uint64_t per = proto::kMaxDiscardBlocks;
  auto st = SplitCall::make((count + per - 1) / per, std::move(done), im.releaser(acquired));
  std::vector<std::pair<GuestOp, Impl::Completion>> ops;
  for (uint64_t off = 0; off < count || (count == 0 && off == 0); off += per) {
    uint64_t n = std::min(per, count - off);
    ops.emplace_back(DiscardOp{BlockIndex{start.value + off}, static_cast<uint32_t>(n)},
                     SplitCall::job_done(st));
    if (count == 0) break;
  }
  im.submit(std::move(ops));
}

void Volume::flush(DoneFn done) { submit_flush(std::nullopt, std::move(done)); }

void Volume::snapshot_flush(std::string name, DoneFn done) {
  submit_flush(std::move(name), std::move(done));
}

void Volume::submit_flush(std::optional<std::string> snapshot, DoneFn done) {
  bool acquired = impl_->acquire();
  auto release = impl_->releaser(acquired);
  impl_->submit({{FlushOp{std::move(snapshot)}, [done = std::move(done), release](GuestDone& g) {
                    done(g.status);
                    release();
                  }}});
}

void Volume::replace(std::string old_target, std::string new_target, DoneFn done) {
  impl_->submit({{ReplaceOp{std::move(old_target), std::move(new_target)},
                  [done = std::move(done)](GuestDone& g) { done(g.status); }}});
}

namespace {
template <typename T, typename F>
T call_sync(F&& start) {
  auto p = std::make_shared<std::promise<T>>();
  auto f = p->get_future();
  start([p](T v) { p->set_value(std::move(v)); });
  return f.get();
}
}  // namespace

Result<Bytes> Volume::read_sync(BlockIndex start, uint64_t count) {
  return call_sync<Result<Bytes>>([&](auto cb) { read(start, count, cb); });
}
Status Volume::write_sync(BlockIndex start, std::span<const std::byte> data) {
  return call_sync<Status>([&](auto cb) { write(start, data, cb); });
}
Status Volume::discard_sync(BlockIndex start, uint64_t count) {
  return call_sync<Status>([&](auto cb) { discard(start, count, cb); });
}
Status Volume::flush_sync() {
  return call_sync<Status>([&](auto cb) { flush(cb); });
}
Status Volume::snapshot_flush_sync(std::string name) {
  return call_sync<Status>([&](auto cb) { snapshot_flush(std::move(name), cb); });
}
Status Volume::replace_sync(std::string old_target, std::string new_target) {
  return call_sync<Status>(
      [&](auto cb) { replace(std::move(old_target), std::move(new_target), cb); });
}

void Volume::watch(int fd, std::function<void()> on_readable) {
  asio::post(impl_->io, [this, fd, fn = std::move(on_readable)]() mutable {
    Impl& im = *impl_;
    CRU_ASSERT(!im.watched, "one watch at a time");
    im.watched.emplace(im.io, fd);
    im.on_readable = std::move(fn);
    im.arm_watch();
  });
}

void Volume::unwatch() {
  CRU_ASSERT(!impl_->on_io_thread(), "unwatch() waits for the io thread");
  std::promise<void> ended;
  asio::post(impl_->io, [this, &ended] {
    impl_->end_watch();
    ended.set_value();
  });
  ended.get_future().wait();
}

Snapshot Volume::snapshot() const {
  auto p = std::make_shared<std::promise<Snapshot>>();
  auto f = p->get_future();
  asio::post(impl_->io, [this, p] { p->set_value(impl_->core.snapshot()); });
  return f.get();
}

}  // namespace cru::upstairs
