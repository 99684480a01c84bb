#include "fuse/disk.h"

#include <fmt/format.h>

#include <cstring>
#include <memory>

#include "common/assert.h"
#include "common/units.h"

namespace cru::fuse {

Disk::Disk(upstairs::BlockDevice& volume)
    : volume_(volume), block_size_(volume.block_size()), size_bytes_(volume.size_bytes()) {}

void Disk::grown() {
  CRU_ASSERT(volume_.size_bytes() >= size_bytes_, "a volume never shrinks");
  size_bytes_ = volume_.size_bytes();
}

Status Disk::check_range(uint64_t offset, uint64_t len) const {
  if (offset > size_bytes_ || len > size_bytes_ - offset)
    return fail(ErrorCode::kOffsetInvalid,
                fmt::format("bytes {}..{} reach past the end of the {}-byte disk", offset,
                            offset + len, size_bytes_));
  return {};
}

void Disk::read(uint64_t offset, uint64_t len, ReadFn done) {
  if (offset >= size_bytes_ || len == 0) return done(Bytes{});
  len = std::min(len, size_bytes_ - offset);
  const uint64_t first = offset / block_size_;
  const uint64_t end = (offset + len + block_size_ - 1) / block_size_;
  const uint64_t skip = offset - first * block_size_;
  volume_.read(BlockIndex{first}, end - first,
               [done = std::move(done), skip, len](Result<Bytes> r) {
                 if (!r) return done(tl::unexpected(r.error()));
                 done(r->slice(skip, len));
               });
}

void Disk::locked(uint64_t offset, uint64_t len, DoneFn done,
                  std::function<void(DoneFn release_and_done)> body) {
  const uint64_t first = offset / block_size_;
  const uint64_t end = (offset + len + block_size_ - 1) / block_size_;
  locks_.lock(first, end,
              [this, done = std::move(done), body = std::move(body)](RangeLock::Token t) mutable {
                body([this, t, done = std::move(done)](Status s) {
                  locks_.unlock(t);
                  done(std::move(s));
                });
              });
}

void Disk::write(uint64_t offset, std::span<const std::byte> data, DoneFn done) {
  if (auto s = check_range(offset, data.size()); !s) return done(s);
  if (data.empty()) return done({});
  dirty_ = true;
  const uint64_t first = offset / block_size_;
  const uint64_t end = (offset + data.size() + block_size_ - 1) / block_size_;
  const bool aligned = offset % block_size_ == 0 && data.size() % block_size_ == 0;
  // Aligned writes lock too: a concurrent read-modify-write of a shared block must not
  // read before this write and write after it. The common case, blocks nobody holds, goes
  // straight to the volume (which copies `data` before returning).
  if (auto t = aligned ? locks_.try_lock(first, end) : std::nullopt) {
    volume_.write(BlockIndex{first}, data, [this, t = *t, done = std::move(done)](Status s) {
      locks_.unlock(t);
      done(std::move(s));
    });
    return;
  }
  // It waits for its blocks (or reads them first): keep a copy, `data` is the caller's.
  Bytes copy = Bytes::copy_of(data);
  locked(offset, data.size(), std::move(done),
         [this, offset, aligned, copy = std::move(copy)](DoneFn finish) {
           if (aligned)
             volume_.write(BlockIndex{offset / block_size_}, copy.span(), std::move(finish));
           else
             patch(offset, copy, std::move(finish));
         });
}

void Disk::patch(uint64_t offset, Bytes data, DoneFn done) {
  const uint64_t first = offset / block_size_;
  const uint64_t end = (offset + data.size() + block_size_ - 1) / block_size_;
  volume_.read(BlockIndex{first}, end - first,
               [this, first, offset, data = std::move(data),
                done = std::move(done)](Result<Bytes> old) mutable {
                 if (!old) return done(tl::unexpected(old.error()));
                 ByteBuffer merged(old->size());
                 std::memcpy(merged.data(), old->data(), old->size());
                 std::memcpy(merged.data() + (offset - first * block_size_), data.data(),
                             data.size());
                 const Bytes whole(std::move(merged));
                 volume_.write(BlockIndex{first}, whole.span(), std::move(done));
               });
}

void Disk::zero_range(uint64_t offset, uint64_t len, DoneFn done) {
  if (auto s = check_range(offset, len); !s) return done(s);
  if (len == 0) return done({});
  dirty_ = true;
  const uint64_t end_byte = offset + len;
  const uint64_t first_whole = (offset + block_size_ - 1) / block_size_;
  const uint64_t end_whole = end_byte / block_size_;
  locked(offset, len, std::move(done),
         [this, offset, end_byte, first_whole, end_whole](DoneFn finish) {
           if (first_whole >= end_whole)  // within one block or across one boundary
             return patch(offset, Bytes::zeros(end_byte - offset), std::move(finish));
           // The partial edges and the whole blocks between them are disjoint: all at once,
           // the first error wins and the last to finish answers.
           struct Join {
             int remaining = 0;
             Status status;
             DoneFn finish;
           };
           auto join = std::make_shared<Join>();
           join->finish = std::move(finish);
           auto part = [join](const Status& s) {
             if (!s && join->status) join->status = s;
             if (--join->remaining == 0) join->finish(join->status);
           };
           const uint64_t head = first_whole * block_size_ - offset;
           const uint64_t tail = end_byte - end_whole * block_size_;
           join->remaining = 1 + (head > 0) + (tail > 0);
           if (head > 0) patch(offset, Bytes::zeros(head), part);
           if (tail > 0) patch(end_whole * block_size_, Bytes::zeros(tail), part);
           volume_.discard(BlockIndex{first_whole}, end_whole - first_whole, part);
         });
}

void Disk::flush(DoneFn done) {
  dirty_ = false;
  volume_.flush([this, done = std::move(done)](const Status& s) {
    if (!s) dirty_ = true;  // the next close tries again
    done(s);
  });
}

}  // namespace cru::fuse
