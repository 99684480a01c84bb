#include "fuse/disk.h"

#include <fmt/format.h>

#include <cstring>
#include <future>
#include <memory>

#include "common/units.h"

namespace cru::fuse {

Disk::Disk(upstairs::Volume& volume)
    : volume_(volume), block_size_(volume.block_size()), size_bytes_(volume.size_bytes()) {}

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

void Disk::write(uint64_t offset, std::span<const std::byte> data, DoneFn done) {
  if (auto s = check_range(offset, data.size()); !s) return done(s);
  if (data.empty()) return done({});
  dirty_.store(true, std::memory_order_release);
  const uint64_t first = offset / block_size_;
  const uint64_t end = (offset + data.size() + block_size_ - 1) / block_size_;
  // Aligned writes lock too: a concurrent read-modify-write of a shared block must not
  // read before this write and write after it.
  auto token = locks_.lock(first, end);
  if (offset % block_size_ == 0 && data.size() % block_size_ == 0) {
    volume_.write(BlockIndex{first}, data, [this, token, done = std::move(done)](Status s) {
      locks_.unlock(token);
      done(std::move(s));
    });
    return;
  }
  Status s = write_partial(offset, data);
  locks_.unlock(token);
  done(s);
}

// Read the blocks the range touches, patch, write back; the caller holds the range.
Status Disk::write_partial(uint64_t offset, std::span<const std::byte> data) {
  const uint64_t first = offset / block_size_;
  const uint64_t end = (offset + data.size() + block_size_ - 1) / block_size_;
  CRU_TRY_ASSIGN(const Bytes old, volume_.read_sync(BlockIndex{first}, end - first));
  ByteBuffer merged(old.size());
  std::memcpy(merged.data(), old.data(), old.size());
  std::memcpy(merged.data() + (offset - first * block_size_), data.data(), data.size());
  return volume_.write_sync(BlockIndex{first}, merged.span());
}

Status Disk::zero_range(uint64_t offset, uint64_t len) {
  CRU_TRY(check_range(offset, len));
  if (len == 0) return {};
  dirty_.store(true, std::memory_order_release);
  const uint64_t end_byte = offset + len;
  const uint64_t first_whole = (offset + block_size_ - 1) / block_size_;
  const uint64_t end_whole = end_byte / block_size_;
  auto zero_bytes = [&](uint64_t from, uint64_t to) -> Status {
    if (from >= to) return {};
    std::vector<std::byte> zeros(to - from);
    const uint64_t first = from / block_size_, end = (to + block_size_ - 1) / block_size_;
    auto token = locks_.lock(first, end);
    Status s = write_partial(from, zeros);
    locks_.unlock(token);
    return s;
  };
  if (first_whole >= end_whole) return zero_bytes(offset, end_byte);  // within one or two blocks
  CRU_TRY(zero_bytes(offset, first_whole * block_size_));
  {
    auto token = locks_.lock(first_whole, end_whole);
    Status s = volume_.discard_sync(BlockIndex{first_whole}, end_whole - first_whole);
    locks_.unlock(token);
    CRU_TRY(s);
  }
  return zero_bytes(end_whole * block_size_, end_byte);
}

void Disk::flush(DoneFn done) {
  dirty_.store(false, std::memory_order_release);
  volume_.flush([this, done = std::move(done)](const Status& s) {
    if (!s) dirty_.store(true, std::memory_order_release);  // the next close tries again
    done(s);
  });
}

}  // namespace cru::fuse
