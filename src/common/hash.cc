#include "common/hash.h"

#define XXH_STATIC_LINKING_ONLY  // for a stack-allocated XXH64_state_t
#include <xxhash.h>

#include "common/assert.h"

namespace cru {

uint64_t integrity_hash(std::span<const std::byte> data) {
  return XXH64(data.data(), data.size(), 0);
}

uint64_t integrity_hash(std::initializer_list<std::span<const std::byte>> parts) {
  XXH64_state_t state;
  CRU_ASSERT(XXH64_reset(&state, 0) == XXH_OK);
  for (auto p : parts) CRU_ASSERT(XXH64_update(&state, p.data(), p.size()) == XXH_OK);
  return XXH64_digest(&state);
}

}  // namespace cru
