// The block integrity hash: XXH64 with seed 0 (libxxhash), over one or more byte ranges
// taken as if concatenated. StreamHash computes the same over data that arrives in
// pieces (repair transfers).
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>

namespace cru {

uint64_t integrity_hash(std::span<const std::byte> data);
uint64_t integrity_hash(std::initializer_list<std::span<const std::byte>> parts);

class StreamHash {
 public:
  StreamHash();
  ~StreamHash();
  StreamHash(StreamHash&&) noexcept;
  StreamHash& operator=(StreamHash&&) noexcept;
  void update(std::span<const std::byte> data);
  uint64_t digest() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace cru
