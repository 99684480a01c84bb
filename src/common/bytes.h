// Block data buffers. ByteBuffer is an owned, mutable, uninitialised allocation (filled by
// a socket read or pread). Bytes is an immutable, shared, sliceable view: the same write
// data goes to three downstairs without copies, and a received frame's payload becomes a
// message's data without copies. Bytes is safe to share across threads (read-only).
#pragma once

#include <cstddef>
#include <cstring>
#include <memory>
#include <span>
#include <string_view>

#include "common/assert.h"

namespace cru {

class ByteBuffer {
 public:
  ByteBuffer() = default;
  explicit ByteBuffer(size_t size)
      : data_(size ? std::make_unique_for_overwrite<std::byte[]>(size) : nullptr), size_(size) {}
  static ByteBuffer zeros(size_t size) {
    ByteBuffer b(size);
    if (size) std::memset(b.data(), 0, size);
    return b;
  }

  std::byte* data() { return data_.get(); }
  const std::byte* data() const { return data_.get(); }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::span<std::byte> span() { return {data_.get(), size_}; }
  std::span<const std::byte> span() const { return {data_.get(), size_}; }

 private:
  friend class Bytes;
  std::unique_ptr<std::byte[]> data_;
  size_t size_ = 0;
};

class Bytes {
 public:
  Bytes() = default;
  // Takes ownership without copying.
  explicit Bytes(ByteBuffer&& buf)
      : owner_(std::move(buf.data_)), data_(owner_.get()), size_(buf.size_) {
    buf.size_ = 0;
  }
  static Bytes copy_of(std::span<const std::byte> src) {
    ByteBuffer b(src.size());
    if (!src.empty()) std::memcpy(b.data(), src.data(), src.size());
    return Bytes(std::move(b));
  }
  static Bytes zeros(size_t size) { return Bytes(ByteBuffer::zeros(size)); }

  // Equal contents (not identity); for tests and comparisons.
  friend bool operator==(const Bytes& a, const Bytes& b) {
    return a.size_ == b.size_ && (a.size_ == 0 || std::memcmp(a.data_, b.data_, a.size_) == 0);
  }

  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::span<const std::byte> span() const { return {data_, size_}; }
  // A view of [offset, offset + len) sharing the same owner.
  Bytes slice(size_t offset, size_t len) const {
    CRU_ASSERT(offset <= size_ && len <= size_ - offset);
    Bytes b;
    b.owner_ = owner_;
    b.data_ = data_ + offset;
    b.size_ = len;
    return b;
  }

 private:
  std::shared_ptr<const std::byte[]> owner_;
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

inline std::span<const std::byte> as_bytes(std::string_view s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

}  // namespace cru
