// The block integrity hash: XXH64 with seed 0 (libxxhash), over one or more byte ranges
// taken as if concatenated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>

namespace cru {

uint64_t integrity_hash(std::span<const std::byte> data);
uint64_t integrity_hash(std::initializer_list<std::span<const std::byte>> parts);

}  // namespace cru
