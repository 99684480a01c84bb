#include "common/uuid.h"

#include <sodium.h>

#include <cctype>

#include "common/assert.h"

namespace cru {

Uuid Uuid::random() {
  CRU_ASSERT(sodium_init() >= 0, "libsodium failed to initialise");
  Uuid u;
  randombytes_buf(u.bytes.data(), u.bytes.size());
  u.bytes[6] = static_cast<uint8_t>((u.bytes[6] & 0x0f) | 0x40);  // version 4
  u.bytes[8] = static_cast<uint8_t>((u.bytes[8] & 0x3f) | 0x80);  // RFC 4122 variant
  return u;
}

Result<Uuid> Uuid::parse(std::string_view text) {
  auto bad = [&] {
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("'{}' is not a UUID (expected 8-4-4-4-12 hex digits)", text));
  };
  if (text.size() != 36) return bad();
  Uuid u;
  size_t out = 0;
  for (size_t i = 0; i < text.size();) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (text[i] != '-') return bad();
      ++i;
      continue;
    }
    int hi = std::isxdigit(static_cast<unsigned char>(text[i])) ? 0 : -1;
    int lo = std::isxdigit(static_cast<unsigned char>(text[i + 1])) ? 0 : -1;
    if (hi < 0 || lo < 0) return bad();
    auto nibble = [](char c) {
      return static_cast<uint8_t>(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
    };
    u.bytes[out++] = static_cast<uint8_t>(nibble(text[i]) << 4 | nibble(text[i + 1]));
    i += 2;
  }
  return u;
}

std::string Uuid::to_string() const {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  s.reserve(36);
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
    s += kHex[bytes[i] >> 4];
    s += kHex[bytes[i] & 0xf];
  }
  return s;
}

bool Uuid::is_nil() const {
  for (auto b : bytes)
    if (b != 0) return false;
  return true;
}

}  // namespace cru
