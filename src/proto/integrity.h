// The integrity rule both sides share: a block's context hash is XXH64 of the bytes as
// stored, and for encrypted blocks of nonce || tag || ciphertext, so the downstairs can
// check it without the key. Pure.
#pragma once

#include <cstdint>
#include <optional>
#include <span>

#include "common/result.h"
#include "proto/messages.h"

namespace cru::proto {

uint64_t block_hash(const std::optional<EncryptionContext>& encryption,
                    std::span<const std::byte> data);

// Checks a read's blocks against their contexts: a present context's hash must match;
// an absent one (never written) needs all-zero data; `encrypted` must agree with the
// context kind. Errors name the first bad block (kHashMismatch).
Status verify_blocks(uint64_t first_block, uint32_t block_size,
                     std::span<const std::optional<BlockContext>> contexts,
                     std::span<const std::byte> data, bool encrypted);

}  // namespace cru::proto
