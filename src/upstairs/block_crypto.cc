#include "upstairs/block_crypto.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "common/assert.h"
#include "common/hash.h"
#include "proto/integrity.h"

namespace cru::upstairs {

static_assert(crypto_aead_xchacha20poly1305_ietf_NPUBBYTES == proto::kNonceBytes);
static_assert(crypto_aead_xchacha20poly1305_ietf_ABYTES == proto::kTagBytes);
static_assert(crypto_aead_xchacha20poly1305_ietf_KEYBYTES == kKeyBytes);

Result<Key> parse_key(std::string_view base64) {
  CRU_ASSERT(sodium_init() >= 0);
  Key key{};
  size_t len = 0;
  const char* end = nullptr;
  if (sodium_base642bin(key.data(), key.size(), base64.data(), base64.size(), " \n\r\t", &len, &end,
                        sodium_base64_VARIANT_ORIGINAL) != 0 ||
      end != base64.data() + base64.size() || len != kKeyBytes) {
    sodium_memzero(key.data(), key.size());
    return fail(ErrorCode::kInvalidArgument,
                "the encryption key must be 32 bytes in standard base64 (44 characters)");
  }
  return key;
}

Result<Key> load_key_file(const std::string& path) {
  // A base64 key and a newline; anything much larger is the wrong file.
  constexpr size_t kMaxKeyFileBytes = 1024;
  auto bad = [&](const std::string& why) {
    return fail(ErrorCode::kInvalidArgument, fmt::format("key file {}: {}", path, why));
  };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return bad(std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) return bad(std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return bad("not a regular file");
  if (st.st_uid != ::geteuid())
    return bad(fmt::format("owned by uid {}, not by this user (uid {})", st.st_uid, ::geteuid()));
  if ((st.st_mode & 077) != 0)
    return bad(fmt::format("mode {:04o} lets others read it; chmod 600 it", st.st_mode & 07777));
  std::array<char, kMaxKeyFileBytes + 1> text{};
  size_t len = 0;
  for (;;) {
    const ssize_t n = ::read(fd, text.data() + len, text.size() - len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return bad(std::strerror(errno));
    if (n == 0) break;
    len += static_cast<size_t>(n);
    if (len == text.size()) break;
  }
  if (len > kMaxKeyFileBytes) return bad(fmt::format("larger than {} bytes", kMaxKeyFileBytes));
  Result<Key> key = parse_key(std::string_view(text.data(), len));
  sodium_memzero(text.data(), text.size());
  if (!key) return bad(key.error().message);
  return key;
}

BlockCrypto::BlockCrypto(uint32_t block_size, std::optional<Key> key)
    : block_size_(block_size), key_(key) {
  CRU_ASSERT(sodium_init() >= 0);
}

BlockCrypto::Sealed BlockCrypto::seal(std::span<const std::byte> plain) const {
  CRU_ASSERT(plain.size() % block_size_ == 0);
  const size_t n = plain.size() / block_size_;
  Sealed out;
  out.contexts.resize(n);
  if (!key_) {
    out.data = Bytes::copy_of(plain);
    for (size_t i = 0; i < n; ++i)
      out.contexts[i].hash = integrity_hash(out.data.span().subspan(i * block_size_, block_size_));
    return out;
  }
  ByteBuffer cipher(plain.size());
  for (size_t i = 0; i < n; ++i) {
    proto::EncryptionContext e;
    randombytes_buf(e.nonce.data(), e.nonce.size());  // fresh per write: never reused
    auto* c = reinterpret_cast<unsigned char*>(cipher.data() + i * block_size_);
    const auto* p = reinterpret_cast<const unsigned char*>(plain.data() + i * block_size_);
    crypto_aead_xchacha20poly1305_ietf_encrypt_detached(c, e.tag.data(), nullptr, p, block_size_,
                                                        nullptr, 0, nullptr, e.nonce.data(),
                                                        key_->data());
    out.contexts[i].hash =
        proto::block_hash(e, cipher.span().subspan(i * block_size_, block_size_));
    out.contexts[i].encryption = e;
  }
  out.data = Bytes(std::move(cipher));
  return out;
}

Status BlockCrypto::open(uint64_t first_block,
                         std::span<const std::optional<proto::BlockContext>> contexts,
                         std::span<std::byte> data) const {
  if (!key_) return {};
  for (size_t i = 0; i < contexts.size(); ++i) {
    const auto& ctx = contexts[i];
    if (!ctx || !ctx->encryption) continue;
    auto* d = reinterpret_cast<unsigned char*>(data.data() + i * block_size_);
    if (crypto_aead_xchacha20poly1305_ietf_decrypt_detached(
            d, nullptr, d, block_size_, ctx->encryption->tag.data(), nullptr, 0,
            ctx->encryption->nonce.data(), key_->data()) != 0)
      return fail(ErrorCode::kDecrypt,
                  fmt::format("block {} failed authentication (wrong key or tampered data)",
                              first_block + i));
  }
  return {};
}

}  // namespace cru::upstairs
