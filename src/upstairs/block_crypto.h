// Turns guest blocks into what the downstairs stores, and back: each block gets a context
// (its integrity hash; with a key, XChaCha20-Poly1305 with a fresh random nonce per
// write, hash over nonce || tag || ciphertext). Stateless apart from the key; safe to use
// from any thread (the volume calls it on the guest's thread, off the io thread).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "common/bytes.h"
#include "common/result.h"
#include "proto/messages.h"

namespace cru::upstairs {

inline constexpr size_t kKeyBytes = 32;
using Key = std::array<uint8_t, kKeyBytes>;

// Decodes a standard base64 key that must be exactly 32 bytes.
Result<Key> parse_key(std::string_view base64);
// Reads a key file: a regular file owned by this user, readable by no one else (mode 0600
// or stricter), holding the base64 key (e.g. `openssl rand -base64 32`). The error names
// the path and what is wrong, never the key.
Result<Key> load_key_file(const std::string& path);

class BlockCrypto {
 public:
  BlockCrypto(uint32_t block_size, std::optional<Key> key);
  bool encrypted() const { return key_.has_value(); }

  struct Sealed {
    std::vector<proto::BlockContext> contexts;
    Bytes data;  // ciphertext (or the plaintext itself when not encrypted)
  };
  // Precondition: plain.size() is a multiple of the block size.
  Sealed seal(std::span<const std::byte> plain) const;
  // Decrypts blocks in place; unwritten blocks (no context) stay zeros. The hashes were
  // already checked by the upstairs core; this checks authenticity (kDecrypt).
  Status open(uint64_t first_block, std::span<const std::optional<proto::BlockContext>> contexts,
              std::span<std::byte> data) const;

 private:
  uint32_t block_size_;
  std::optional<Key> key_;
};

}  // namespace cru::upstairs
