#include "upstairs/sub_volumes.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <future>
#include <set>

#include "common/address.h"
#include "common/assert.h"
#include "common/log.h"

namespace cru::upstairs {

namespace {

// Several calls answered by one: the first error wins, the last to finish answers.
struct Join {
  size_t remaining = 0;
  Status status;
  BlockDevice::DoneFn done;

  static std::function<void(Status)> part(const std::shared_ptr<Join>& j) {
    return [j](const Status& s) {
      if (!s && j->status) j->status = s;
      if (--j->remaining > 0) return;
      auto d = std::move(j->done);
      d(j->status);
    };
  }
  static std::shared_ptr<Join> make(size_t parts, BlockDevice::DoneFn done) {
    auto j = std::make_shared<Join>();
    j->remaining = parts;
    j->done = std::move(done);
    return j;
  }
};

// Runs `fn(i)` for every i at once on threads of its own (activation and deactivation wait
// on the network, one sub-volume must not wait for another) and returns the results.
template <typename Fn>
std::vector<Status> for_each_at_once(size_t n, Fn fn) {
  std::vector<std::future<Status>> running;
  running.reserve(n);
  for (size_t i = 0; i < n; ++i) running.push_back(std::async(std::launch::async, fn, i));
  std::vector<Status> out;
  out.reserve(n);
  for (auto& f : running) out.push_back(f.get());
  return out;
}

}  // namespace

SubVolumes::SubVolumes(SubVolumesOptions options)
    : options_(std::move(options)), io_(std::make_shared<IoThread>()) {
  CRU_ASSERT(!options_.targets.empty() && options_.targets.size() <= kMaxSubVolumes);
  for (const Targets& t : options_.targets)
    volumes_.push_back(std::make_shared<Volume>(options_for(t)));
  targets_ = options_.targets;
  count_ = volumes_.size();
}

SubVolumes::~SubVolumes() {
  CRU_ASSERT(!io_->on_this_thread(), "sub-volumes cannot be destroyed from their io thread");
  volumes_.clear();  // each closes its connections on the shared thread, which then ends
}

VolumeOptions SubVolumes::options_for(const Targets& targets) const {
  VolumeOptions o = options_.common;
  o.targets = targets;
  o.io_thread = io_;
  return o;
}

std::string SubVolumes::describe(size_t i, const Targets& t) const {
  return fmt::format("sub-volume {} ({}, {}, {})", i, t[0], t[1], t[2]);
}

std::vector<std::shared_ptr<Volume>> SubVolumes::current() const {
  if (io_->on_this_thread()) return volumes_;
  std::promise<std::vector<std::shared_ptr<Volume>>> p;
  io_->post([this, &p] { p.set_value(volumes_); });
  return p.get_future().get();
}

std::vector<Targets> SubVolumes::targets() const {
  if (io_->on_this_thread()) return targets_;
  std::promise<std::vector<Targets>> p;
  io_->post([this, &p] { p.set_value(targets_); });
  return p.get_future().get();
}

Status SubVolumes::activate(std::optional<Generation> generation,
                            std::chrono::milliseconds timeout) {
  CRU_ASSERT(!layout_, "activated twice");
  const size_t n = volumes_.size();
  auto results = for_each_at_once(n, [this, generation, timeout](size_t i) {
    return volumes_[i]->activate(generation, timeout);
  });
  // One sub-volume: its own words, as a plain volume says them.
  if (n == 1 && !results[0]) return results[0];
  std::string failed;
  for (size_t i = 0; i < n; ++i)
    if (!results[i])
      failed += fmt::format("{}{}: {}", failed.empty() ? "" : "; ", describe(i, targets_[i]),
                            results[i].error().message);
  if (!failed.empty()) return fail(ErrorCode::kIo, failed);

  const uint32_t bs = volumes_[0]->block_size();
  std::vector<uint64_t> sizes;
  for (size_t i = 0; i < n; ++i) {
    if (volumes_[i]->block_size() != bs)
      return fail(ErrorCode::kInvalidArgument,
                  fmt::format("{} has {}-byte blocks but {} has {}-byte blocks: all "
                              "sub-volumes of a volume must share a block size",
                              describe(i, targets_[i]), volumes_[i]->block_size(),
                              describe(0, targets_[0]), bs));
    sizes.push_back(volumes_[i]->total_blocks());
  }
  if (options_.stripe_bytes % bs != 0)
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("volume.stripe_kib: {} bytes is not a whole number of the "
                            "sub-volumes' {}-byte blocks",
                            options_.stripe_bytes, bs));
  auto layout = VolumeLayout::make(std::move(sizes), options_.stripe_bytes / bs);
  if (!layout) return fail(ErrorCode::kInvalidArgument, layout.error().message);
  layout_ = std::move(*layout);
  block_size_ = bs;
  total_blocks_ = layout_->total_blocks();
  return {};
}

Status SubVolumes::deactivate(std::chrono::milliseconds timeout) {
  auto vols = current();
  auto tgts = targets();
  auto results = for_each_at_once(
      vols.size(), [&vols, timeout](size_t i) { return vols[i]->deactivate(timeout); });
  if (vols.size() == 1) return results[0];
  for (size_t i = 0; i < results.size(); ++i)
    if (!results[i])
      return fail(results[i].error().code,
                  fmt::format("{}: {}", describe(i, tgts[i]), results[i].error().message));
  return {};
}

void SubVolumes::read(BlockIndex start, uint64_t count, ReadFn done) {
  if (volumes_.size() == 1 && layout_) return volumes_[0]->read(start, count, std::move(done));
  read_split(start, count, false, [done = std::move(done)](Result<MaskedRead> r) {
    if (r)
      done(std::move(r->data));
    else
      done(tl::unexpected(r.error()));
  });
}

void SubVolumes::read_masked(BlockIndex start, uint64_t count, MaskedReadFn done) {
  read_split(start, count, true, std::move(done));
}

void SubVolumes::read_split(BlockIndex start, uint64_t count, bool masked, MaskedReadFn done) {
  if (!layout_) return done(fail(ErrorCode::kNotActive, "the volume is not active"));
  if (count == 0) return done(MaskedRead{});
  if (start.value > layout_->total_blocks() || count > layout_->total_blocks() - start.value)
    return done(fail(ErrorCode::kOffsetInvalid, "read past the end of the volume"));
  // Each piece reads from its sub-volume, with its mask when one is wanted (a plain read
  // does not pay for it); a single piece's answer is passed on as it is.
  auto read_piece = [this, masked](const SubRange& p, MaskedReadFn piece_done) {
    BlockDevice& v = *volumes_[p.sub_volume];
    if (masked) return v.read_masked(BlockIndex{p.start}, p.count, std::move(piece_done));
    v.read(BlockIndex{p.start}, p.count, [piece_done = std::move(piece_done)](Result<Bytes> r) {
      if (r)
        piece_done(MaskedRead{std::move(*r), {}});
      else
        piece_done(tl::unexpected(r.error()));
    });
  };
  auto pieces = layout_->split(start.value, count);
  if (pieces.size() == 1) return read_piece(pieces[0], std::move(done));
  // Every piece lands in one buffer (and its mask beside it); the last to finish answers.
  struct Gather {
    ByteBuffer buf;
    WrittenMask written;
    size_t remaining = 0;
    Status status;
    MaskedReadFn done;
  };
  const uint32_t bs = block_size_;
  auto g = std::make_shared<Gather>();
  g->buf = ByteBuffer(count * bs);
  if (masked) g->written.resize(count);
  g->remaining = pieces.size();
  g->done = std::move(done);
  for (const SubRange& p : pieces) {
    read_piece(p, [g, off = p.offset, n = p.count, bs, masked](Result<MaskedRead> r) {
      if (!r) {
        if (g->status) g->status = tl::unexpected(r.error());
      } else {
        CRU_ASSERT(r->data.size() == n * bs && (!masked || r->written.size() == n),
                   "a sub-volume read returned the wrong length");
        std::memcpy(g->buf.data() + off * bs, r->data.data(), n * bs);
        std::copy(r->written.begin(), r->written.end(),
                  g->written.begin() + static_cast<long>(off));
      }
      if (--g->remaining > 0) return;
      auto reply = std::move(g->done);
      if (g->status)
        reply(MaskedRead{Bytes(std::move(g->buf)), std::move(g->written)});
      else
        reply(tl::unexpected(g->status.error()));
    });
  }
}

void SubVolumes::write(BlockIndex start, std::span<const std::byte> data, DoneFn done) {
  write_split(start, data, false, std::move(done));
}

void SubVolumes::write_unwritten(BlockIndex start, std::span<const std::byte> data, DoneFn done) {
  write_split(start, data, true, std::move(done));
}

void SubVolumes::write_split(BlockIndex start, std::span<const std::byte> data, bool only_unwritten,
                             DoneFn done) {
  if (!layout_) return done(fail(ErrorCode::kNotActive, "the volume is not active"));
  auto write_to = [only_unwritten](Volume& v, BlockIndex at, std::span<const std::byte> d,
                                   DoneFn fn) {
    if (only_unwritten)
      v.write_unwritten(at, d, std::move(fn));
    else
      v.write(at, d, std::move(fn));
  };
  if (volumes_.size() == 1) return write_to(*volumes_[0], start, data, std::move(done));
  const uint32_t bs = block_size_;
  if (data.size() % bs != 0)
    return done(
        fail(ErrorCode::kDataLenUnaligned,
             fmt::format("{} bytes is not a multiple of the {}-byte block", data.size(), bs)));
  const uint64_t count = data.size() / bs;
  if (count == 0) return done({});
  if (start.value > layout_->total_blocks() || count > layout_->total_blocks() - start.value)
    return done(fail(ErrorCode::kOffsetInvalid, "write past the end of the volume"));
  auto pieces = layout_->split(start.value, count);
  if (pieces.size() == 1)
    return write_to(*volumes_[pieces[0].sub_volume], BlockIndex{pieces[0].start}, data,
                    std::move(done));
  auto j = Join::make(pieces.size(), std::move(done));
  // Each sub-volume copies its part before write() returns: `data` need not outlive this.
  for (const SubRange& p : pieces)
    write_to(*volumes_[p.sub_volume], BlockIndex{p.start},
             data.subspan(p.offset * bs, p.count * bs), Join::part(j));
}

void SubVolumes::discard(BlockIndex start, uint64_t count, DoneFn done) {
  if (!layout_) return done(fail(ErrorCode::kNotActive, "the volume is not active"));
  if (volumes_.size() == 1) return volumes_[0]->discard(start, count, std::move(done));
  if (count == 0) return done({});
  if (start.value > layout_->total_blocks() || count > layout_->total_blocks() - start.value)
    return done(fail(ErrorCode::kOffsetInvalid, "discard past the end of the volume"));
  // No data to keep in order: one range per sub-volume, however large the discard.
  auto pieces = layout_->split_per_sub_volume(start.value, count);
  auto j = Join::make(pieces.size(), std::move(done));
  for (const SubRange& p : pieces)
    volumes_[p.sub_volume]->discard(BlockIndex{p.start}, p.count, Join::part(j));
}

void SubVolumes::flush(DoneFn done) {
  // Every sub-volume's flush covers the writes it acknowledged before it: together, every
  // write acknowledged before this call.
  if (volumes_.size() == 1) return volumes_[0]->flush(std::move(done));
  auto j = Join::make(volumes_.size(), std::move(done));
  for (auto& v : volumes_) v->flush(Join::part(j));
}

// All sub-volumes share the io thread: the first one serves the watch for all.
void SubVolumes::watch(int fd, std::function<void()> on_readable) {
  volumes_.front()->watch(fd, std::move(on_readable));
}
void SubVolumes::unwatch() { volumes_.front()->unwatch(); }

std::vector<Snapshot> SubVolumes::snapshot() const {
  std::vector<Snapshot> out;
  for (const auto& v : current()) out.push_back(v->snapshot());
  return out;
}

Status SubVolumes::replace_sync(const std::string& old_target, const std::string& new_target) {
  auto vols = current();
  if (vols.size() == 1) return vols[0]->replace_sync(old_target, new_target);
  auto tgts = targets();
  for (size_t i = 0; i < vols.size(); ++i) {
    // The live targets (an earlier replace changed them), not the configured ones.
    const Snapshot s = vols[i]->snapshot();
    for (const auto& c : s.clients)
      if (c.target == old_target) return vols[i]->replace_sync(old_target, new_target);
  }
  return fail(ErrorCode::kNotFound, fmt::format("no sub-volume has a downstairs {}", old_target));
}

Status SubVolumes::snapshot_flush_sync(const std::string& name) {
  CRU_ASSERT(!io_->on_this_thread(), "a snapshot waits for the io thread");
  auto vols = current();
  auto result = std::make_shared<std::promise<Status>>();
  auto done = result->get_future();
  auto j = Join::make(vols.size(), [result](const Status& s) { result->set_value(s); });
  for (auto& v : vols) v->snapshot_flush(name, Join::part(j));
  return done.get();
}

Result<uint64_t> SubVolumes::grow(const Targets& targets, std::optional<Generation> generation,
                                  std::chrono::milliseconds timeout) {
  CRU_ASSERT(!io_->on_this_thread(), "grow waits for the io thread");
  if (!layout_) return fail(ErrorCode::kNotActive, "the volume is not active");
  if (layout_->striped())
    return fail(ErrorCode::kInvalidArgument,
                "a striped volume (volume.stripe_kib) cannot grow: a new sub-volume would move "
                "most existing blocks to another sub-volume");
  if (current().size() >= kMaxSubVolumes)
    return fail(
        ErrorCode::kInvalidArgument,
        fmt::format("the volume already has {} sub-volumes, the most it may have", kMaxSubVolumes));
  std::set<std::string> in_use;
  for (const auto& s : snapshot())
    for (const auto& c : s.clients) in_use.insert(c.target);
  std::set<std::string> seen;
  for (const std::string& t : targets) {
    if (auto a = parse_address(t); !a)
      return fail(ErrorCode::kInvalidArgument,
                  fmt::format("target '{}': {}", t, a.error().message));
    if (in_use.contains(t))
      return fail(ErrorCode::kAlreadyExists,
                  fmt::format("{} already serves a sub-volume of this volume", t));
    if (!seen.insert(t).second)
      return fail(ErrorCode::kInvalidArgument, fmt::format("{} is listed twice", t));
  }

  auto v = std::make_shared<Volume>(options_for(targets));
  if (Status s = v->activate(generation, timeout); !s)
    return fail(s.error().code,
                fmt::format("the new sub-volume did not activate: {}", s.error().message));
  if (v->block_size() != block_size_) {
    static_cast<void>(v->deactivate(timeout));
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("the new sub-volume has {}-byte blocks, the volume {}-byte blocks",
                            v->block_size(), block_size_.load()));
  }
  std::promise<Result<uint64_t>> p;
  io_->post([this, &p, &v, &targets] {
    auto grown = layout_->appended(v->total_blocks());
    if (!grown) return p.set_value(tl::unexpected(grown.error()));
    volumes_.push_back(v);
    targets_.push_back(targets);
    layout_ = std::move(*grown);
    total_blocks_ = layout_->total_blocks();
    count_ = volumes_.size();
    if (grown_) grown_();
    p.set_value(layout_->total_blocks());
  });
  auto r = p.get_future().get();
  if (!r) static_cast<void>(v->deactivate(timeout));
  return r;
}

}  // namespace cru::upstairs
