#include "proto/integrity.h"

#include <fmt/format.h>

#include <algorithm>

#include "common/hash.h"

namespace cru::proto {

uint64_t block_hash(const std::optional<EncryptionContext>& encryption,
                    std::span<const std::byte> data) {
  if (encryption)
    return integrity_hash({std::as_bytes(std::span(encryption->nonce)),
                           std::as_bytes(std::span(encryption->tag)), data});
  return integrity_hash(data);
}

Status verify_blocks(uint64_t first_block, uint32_t block_size,
                     std::span<const std::optional<BlockContext>> contexts,
                     std::span<const std::byte> data, bool encrypted) {
  if (data.size() != contexts.size() * block_size)
    return fail(ErrorCode::kHashMismatch,
                fmt::format("{} bytes of data for {} blocks", data.size(), contexts.size()));
  for (size_t i = 0; i < contexts.size(); ++i) {
    auto block = data.subspan(i * block_size, block_size);
    const auto& ctx = contexts[i];
    if (!ctx) {
      if (!std::all_of(block.begin(), block.end(), [](std::byte b) { return b == std::byte{0}; }))
        return fail(
            ErrorCode::kHashMismatch,
            fmt::format("block {} has no context but its data is not zeros", first_block + i));
      continue;
    }
    if (ctx->encryption.has_value() != encrypted)
      return fail(ErrorCode::kHashMismatch,
                  fmt::format("block {} has {} context on {} volume", first_block + i,
                              ctx->encryption ? "an encrypted" : "an unencrypted",
                              encrypted ? "an encrypted" : "an unencrypted"));
    if (block_hash(ctx->encryption, block) != ctx->hash)
      return fail(ErrorCode::kHashMismatch,
                  fmt::format("block {}: data does not match its hash {:016x}", first_block + i,
                              ctx->hash));
  }
  return {};
}

}  // namespace cru::proto
