#include "upstairs/read_only_parent.h"

#include <fmt/format.h>

#include <future>

#include "common/assert.h"
#include "common/log.h"
#include "common/thread_signals.h"
#include "common/units.h"
#include "upstairs/parent.h"

namespace cru::upstairs {

namespace {
// A zero-fill (a discard over the parent) keeps this many one-job writes in flight: enough
// to keep three downstairs busy, few enough that a huge discard (fstrim of the whole disk)
// does not flood admission ahead of the guest's other IO.
constexpr uint64_t kZeroWritesInFlight = 4;
// Each of those writes: one upstairs job (upstairs::kMaxJobBytes).
constexpr uint64_t kZeroChunkBytes = 1 * kMiB;
// With guest IO in flight, the scrub waits this long before its next chunk: the guest's
// requests go first, and a busy guest still leaves the scrub a chunk now and then.
constexpr auto kGuestYield = std::chrono::milliseconds(20);
// After a failed chunk or checkpoint (a replica set without quorum, a parent not
// answering), the scrub tries again after this long rather than spinning.
constexpr auto kScrubRetry = std::chrono::seconds(1);
}  // namespace

// ---- ParentedVolume: guest IO (io thread) -------------------------------------------------

ParentedVolume::ParentedVolume(BlockDevice& volume, Post post, std::unique_ptr<ParentSource> parent,
                               ScrubOptions options)
    : volume_(volume),
      post_(std::move(post)),
      parent_(std::move(parent)),
      options_(std::move(options)),
      parent_blocks_(parent_->size_bytes() / volume.block_size()),
      zeros_(Bytes::zeros(std::max<uint64_t>(kZeroChunkBytes / volume.block_size(), 1) *
                          volume.block_size())) {
  CRU_ASSERT(parent_blocks_ > 0 && parent_blocks_ <= volume.total_blocks() &&
                 parent_->size_bytes() % volume.block_size() == 0,
             "the parent's geometry was not checked");
  CRU_ASSERT(options_.rate_bytes_per_s > 0 && options_.chunk_bytes >= volume.block_size());
  status_.parent = parent_->describe();
  status_.state_file = options_.state_file;
  status_.block_size = volume.block_size();
  status_.total_blocks = parent_blocks_;
  status_.next_block = status_.durable_block = status_.resumed_from =
      std::min(options_.resume_at, parent_blocks_);
  status_.rate_limit_bytes_per_s = options_.rate_bytes_per_s;
}

ParentedVolume::~ParentedVolume() { stop_scrub(); }

void ParentedVolume::read(BlockIndex start, uint64_t count, ReadFn done) {
  // No parent under these blocks: the volume's read, untouched.
  if (!attached_.load(std::memory_order_relaxed) || start.value >= parent_blocks_ || count == 0)
    return volume_.read(start, count, std::move(done));
  // The parent first, then the volume: a block the volume holds wins (Crucible's order).
  const uint64_t from_parent = std::min(count, parent_blocks_ - start.value);
  guest_started();
  parent_->read(
      start, from_parent, [this, start, count, done = std::move(done)](Result<Bytes> p) mutable {
        if (!p) {
          guest_ended();
          return done(tl::unexpected(p.error()));
        }
        volume_.read_masked(
            start, count, [this, p = std::move(*p), done = std::move(done)](Result<MaskedRead> v) {
              guest_ended();
              if (!v) return done(tl::unexpected(v.error()));
              done(merge_parent(p, *v, volume_.block_size()));
            });
      });
}

void ParentedVolume::read_masked(BlockIndex start, uint64_t count, MaskedReadFn done) {
  volume_.read_masked(start, count, std::move(done));
}

void ParentedVolume::write(BlockIndex start, std::span<const std::byte> data, DoneFn done) {
  if (!attached_.load(std::memory_order_relaxed))
    return volume_.write(start, data, std::move(done));
  guest_started();
  volume_.write(start, data, [this, done = std::move(done)](const Status& s) {
    guest_ended();
    done(s);
  });
}

void ParentedVolume::write_unwritten(BlockIndex start, std::span<const std::byte> data,
                                     DoneFn done) {
  volume_.write_unwritten(start, data, std::move(done));
}

void ParentedVolume::discard(BlockIndex start, uint64_t count, DoneFn done) {
  if (!attached_.load(std::memory_order_relaxed) || start.value >= parent_blocks_ || count == 0)
    return volume_.discard(start, count, std::move(done));
  // Zeros over [start, zero_end), a discard past the parent's end.
  struct ZeroFill {
    uint64_t next = 0, end = 0, in_flight = 0;
    bool answered = false;  // a write failing at once re-enters issue(): answer only once
    Status status;
    DoneFn done;
    std::function<void()> issue;
  };
  const uint64_t zero_end = std::min(start.value + count, parent_blocks_);
  const uint64_t rest = start.value + count - zero_end;
  auto z = std::make_shared<ZeroFill>();
  z->next = start.value;
  z->end = zero_end;
  z->done = std::move(done);
  if (rest > 0) ++z->in_flight;  // the discard past the parent, issued below
  const uint64_t per = zeros_.size() / volume_.block_size();
  guest_started();
  // `issue` refers to its own state through a weak pointer (no cycle); the state lives while
  // a completion holds it.
  std::weak_ptr<ZeroFill> weak = z;
  auto finish_one = [this, weak](const Status& s) {
    auto zf = weak.lock();
    CRU_ASSERT(zf, "a zero-fill ended before its writes");
    if (!s && zf->status) zf->status = s;
    --zf->in_flight;
    zf->issue();
  };
  z->issue = [this, weak, per, finish_one] {
    auto zf = weak.lock();
    CRU_ASSERT(zf);
    while (zf->status && zf->next < zf->end && zf->in_flight < kZeroWritesInFlight) {
      const uint64_t n = std::min(per, zf->end - zf->next);
      const BlockIndex at{zf->next};
      zf->next += n;
      ++zf->in_flight;
      volume_.write(at, zeros_.span().subspan(0, n * volume_.block_size()),
                    [zf, finish_one](const Status& s) { finish_one(s); });
    }
    if (zf->in_flight > 0 || zf->answered) return;
    CRU_ASSERT(zf->next >= zf->end || !zf->status, "a zero-fill stopped early without an error");
    zf->answered = true;
    guest_ended();
    auto d = std::move(zf->done);
    d(zf->status);
  };
  if (rest > 0)
    volume_.discard(BlockIndex{zero_end}, rest,
                    [z, finish_one](const Status& s) { finish_one(s); });
  z->issue();
}

void ParentedVolume::flush(DoneFn done) { volume_.flush(std::move(done)); }
void ParentedVolume::watch(int fd, std::function<void()> on_readable) {
  volume_.watch(fd, std::move(on_readable));
}
void ParentedVolume::unwatch() { volume_.unwatch(); }

// ---- the scrub (its own thread) -----------------------------------------------------------

void ParentedVolume::start_scrub() {
  std::lock_guard lock(mu_);
  if (scrub_.joinable() || status_.complete || stop_) return;
  status_.running = true;
  scrub_started_ = Clock::now();
  scrub_ = std::thread([this] { scrub_loop(); });
}

void ParentedVolume::stop_scrub() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (scrub_.joinable()) scrub_.join();
}

bool ParentedVolume::wait_until(TimePoint t) {
  std::unique_lock lock(mu_);
  wake_.wait_until(lock, t, [this] { return stop_; });
  return !stop_;
}

void ParentedVolume::set_error(const std::string& e) {
  log::warn("scrub of the read-only parent: {}; trying again in {} s", e, kScrubRetry.count());
  std::lock_guard lock(mu_);
  status_.last_error = e;
}

Status ParentedVolume::on_io(const std::function<void(DoneFn)>& call) {
  auto p = std::make_shared<std::promise<Status>>();
  auto f = p->get_future();
  post_([&call, p] { call([p](const Status& s) { p->set_value(s); }); });
  return f.get();
}

Status ParentedVolume::checkpoint(ScrubPlan& plan) {
  // Only what a flush made durable may be recorded: a record ahead of the data would skip
  // blocks after a crash.
  if (Status s = on_io([this](DoneFn d) { volume_.flush(std::move(d)); }); !s)
    return fail(s.error().code, "flush: " + s.error().message);
  if (Status s = options_.record(plan.next_block(), plan.done()); !s) return s;
  plan.checkpointed();
  std::lock_guard lock(mu_);
  status_.durable_block = plan.durable_block();
  if (plan.done()) {
    status_.complete = true;
    status_.running = false;
  }
  return {};
}

void ParentedVolume::scrub_loop() {
  // The main thread waits for SIGTERM on a signalfd: no other thread may take it.
  block_async_signals_in_this_thread();
  const uint32_t bs = volume_.block_size();
  ScrubPlan plan(parent_blocks_, options_.chunk_bytes / bs, options_.resume_at,
                 kScrubCheckpointBytes / bs);
  RateLimiter limiter(options_.rate_bytes_per_s, options_.chunk_bytes);
  log::info("scrub of the read-only parent ({}): from block {} of {} at up to {}/s",
            parent_->describe(), plan.next_block(), plan.total_blocks(),
            format_size(options_.rate_bytes_per_s));
  TimePoint last_checkpoint = Clock::now();
  bool stopped = false;
  while (!stopped) {
    if (plan.checkpoint_due(Clock::now() - last_checkpoint)) {
      if (Status s = checkpoint(plan); !s) {
        set_error("checkpoint: " + s.error().message);
        stopped = !wait_until(Clock::now() + kScrubRetry);
        continue;
      }
      last_checkpoint = Clock::now();
    }
    const auto chunk = plan.next();
    if (!chunk) break;
    stopped = !wait_until(limiter.reserve(chunk->count * bs, Clock::now()));
    if (!stopped && guest_in_flight_.load() > 0) stopped = !wait_until(Clock::now() + kGuestYield);
    if (stopped) break;
    auto data = parent_->read_sync(BlockIndex{chunk->start}, chunk->count);
    Status s = data ? on_io([this, &chunk, &data](DoneFn d) {
      volume_.write_unwritten(BlockIndex{chunk->start}, data->span(), std::move(d));
    })
                    : Status(tl::unexpected(data.error()));
    if (!s) {
      set_error(fmt::format("blocks {}..{}: {}", chunk->start, chunk->end(), s.error().message));
      stopped = !wait_until(Clock::now() + kScrubRetry);
      continue;
    }
    plan.copied(*chunk);
    std::lock_guard lock(mu_);
    status_.next_block = plan.next_block();
    status_.last_error.clear();
  }
  // Stopping (unmount) or done: what was copied is recorded, so a restart resumes there.
  if (plan.next_block() != plan.durable_block()) {
    if (Status s = checkpoint(plan); !s)
      log::warn("scrub: the last checkpoint failed ({}); a restart resumes at block {}",
                s.error().message, plan.durable_block());
  }
  {
    std::lock_guard lock(mu_);
    status_.running = false;
  }
  if (plan.done() && plan.durable_block() == plan.total_blocks()) {
    // Reads and discards stop consulting the parent (on the io thread, between guest IOs).
    post_([this] { attached_ = false; });
    log::info(
        "scrub of the read-only parent complete: every parent block is in the volume; the "
        "parent is no longer needed (volume.read_only_parent may be removed from the config)");
  } else {
    log::info("scrub stopped at block {} of {} (recorded: {})", plan.next_block(),
              plan.total_blocks(), plan.durable_block());
  }
}

ScrubStatus ParentedVolume::scrub_status() const {
  std::lock_guard lock(mu_);
  ScrubStatus s = status_;
  if (s.running) {
    const double secs = std::chrono::duration<double>(Clock::now() - scrub_started_).count();
    if (secs > 0 && s.next_block > s.resumed_from)
      s.rate_bytes_per_s = static_cast<double>(s.next_block - s.resumed_from) * s.block_size / secs;
    s.eta_s = scrub_eta_s(s.total_blocks - s.next_block, s.block_size, s.rate_bytes_per_s);
  } else if (s.complete) {
    s.eta_s = 0.0;
  }
  return s;
}

}  // namespace cru::upstairs
