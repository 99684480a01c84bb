#include "common/hash.h"

#define XXH_STATIC_LINKING_ONLY  // for a stack-allocated XXH64_state_t
#include <xxhash.h>

#include "common/assert.h"

namespace cru {

uint64_t integrity_hash(std::span<const std::byte> data) {
  return XXH64(data.data(), data.size(), 0);
}

uint64_t integrity_hash(std::initializer_list<std::span<const std::byte>> parts) {
  StreamHash h;
  for (auto p : parts) h.update(p);
  return h.digest();
}

struct StreamHash::State {
  XXH64_state_t xxh;
};

StreamHash::StreamHash() : state_(std::make_unique<State>()) {
  CRU_ASSERT(XXH64_reset(&state_->xxh, 0) == XXH_OK);
}
StreamHash::~StreamHash() = default;
StreamHash::StreamHash(StreamHash&&) noexcept = default;
StreamHash& StreamHash::operator=(StreamHash&&) noexcept = default;

void StreamHash::update(std::span<const std::byte> data) {
  CRU_ASSERT(XXH64_update(&state_->xxh, data.data(), data.size()) == XXH_OK);
}

uint64_t StreamHash::digest() const { return XXH64_digest(&state_->xxh); }

}  // namespace cru
