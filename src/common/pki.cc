#include "common/pki.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

namespace cru {

namespace {

// Serial numbers: random, as RFC 5280 recommends, 64 bits (positive, under 20 octets).
constexpr int kSerialBits = 64;
// Certificates start an hour in the past so a clock a little behind still accepts them.
constexpr long kBackdateSeconds = 3600;
constexpr long kSecondsPerDay = 24L * 3600;

struct Deleter {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
  void operator()(BIGNUM* p) const { BN_free(p); }
  void operator()(std::FILE* p) const { std::fclose(p); }
};
template <typename T>
using Owned = std::unique_ptr<T, Deleter>;

tl::unexpected<Error> openssl_failed(const std::string& what) {
  std::string reason;
  while (unsigned long e = ERR_get_error()) {
    std::array<char, 256> buf{};
    ERR_error_string_n(e, buf.data(), buf.size());
    reason = buf.data();  // the last is the innermost cause
  }
  return fail(ErrorCode::kIo,
              fmt::format("{}: {}", what, reason.empty() ? "OpenSSL failed" : reason));
}

Result<Owned<EVP_PKEY>> new_key() {
  // P-256: small keys, fast handshakes, supported everywhere TLS 1.3 is.
  Owned<EVP_PKEY> key(EVP_EC_gen("P-256"));
  if (!key) return openssl_failed("generating a P-256 key");
  return key;
}

Status add_extension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  Owned<X509_EXTENSION> ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1)
    return openssl_failed(fmt::format("adding the certificate extension {}", value));
  return {};
}

// A certificate for `key` named `name`, signed by `issuer_key` (issuer: nullptr for the CA
// itself, which signs its own).
Result<Owned<X509>> new_cert(const std::string& name, EVP_PKEY* key, X509* issuer,
                             EVP_PKEY* issuer_key) {
  Owned<X509> cert(X509_new());
  Owned<BIGNUM> serial(BN_new());
  if (!cert || !serial || X509_set_version(cert.get(), X509_VERSION_3) != 1 ||
      BN_rand(serial.get(), kSerialBits, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1 ||
      BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get())) == nullptr ||
      X509_gmtime_adj(X509_getm_notBefore(cert.get()), -kBackdateSeconds) == nullptr ||
      X509_gmtime_adj(X509_getm_notAfter(cert.get()), kLocalPkiValidDays * kSecondsPerDay) ==
          nullptr ||
      X509_set_pubkey(cert.get(), key) != 1)
    return openssl_failed(fmt::format("making the certificate for {}", name));
  X509_NAME* subject = X509_get_subject_name(cert.get());
  if (X509_NAME_add_entry_by_txt(subject, "O", MBSTRING_ASC,
                                 reinterpret_cast<const unsigned char*>("crucible local cluster"),
                                 -1, -1, 0) != 1 ||
      X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC,
                                 reinterpret_cast<const unsigned char*>(name.c_str()), -1, -1,
                                 0) != 1)
    return openssl_failed(fmt::format("naming the certificate for {}", name));
  X509* signer = issuer != nullptr ? issuer : cert.get();
  if (X509_set_issuer_name(cert.get(), X509_get_subject_name(signer)) != 1)
    return openssl_failed(fmt::format("setting the issuer of {}", name));
  CRU_TRY(add_extension(cert.get(), signer, NID_subject_key_identifier, "hash"));
  if (issuer == nullptr) {
    CRU_TRY(add_extension(cert.get(), signer, NID_basic_constraints, "critical,CA:TRUE"));
    CRU_TRY(add_extension(cert.get(), signer, NID_key_usage, "critical,keyCertSign,cRLSign"));
  } else {
    CRU_TRY(add_extension(cert.get(), signer, NID_authority_key_identifier, "keyid:always"));
    CRU_TRY(add_extension(cert.get(), signer, NID_basic_constraints, "critical,CA:FALSE"));
    CRU_TRY(add_extension(cert.get(), signer, NID_key_usage, "critical,digitalSignature"));
    // Each process is a TLS server (downstairs) and a client (upstairs, repair).
    CRU_TRY(add_extension(cert.get(), signer, NID_ext_key_usage, "serverAuth,clientAuth"));
    CRU_TRY(add_extension(cert.get(), signer, NID_subject_alt_name,
                          "IP:127.0.0.1,IP:::1,DNS:localhost"));
  }
  if (X509_sign(cert.get(), issuer_key, EVP_sha256()) == 0)
    return openssl_failed(fmt::format("signing the certificate for {}", name));
  return cert;
}

// Creates `path` (never overwriting) with `mode` and returns it open for writing.
Result<Owned<std::FILE>> create_file(const std::string& path, mode_t mode) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0)
    return fail(errno == EEXIST ? ErrorCode::kAlreadyExists : ErrorCode::kIo,
                fmt::format("{}: {}", path, std::strerror(errno)));
  Owned<std::FILE> f(::fdopen(fd, "w"));
  if (!f) {
    int err = errno;
    ::close(fd);
    return fail(ErrorCode::kIo, fmt::format("{}: {}", path, std::strerror(err)));
  }
  return f;
}

Status finish(Owned<std::FILE> f, const std::string& path) {
  bool ok = std::fflush(f.get()) == 0 && ::fsync(::fileno(f.get())) == 0;
  int err = errno;
  if (std::fclose(f.release()) != 0 || !ok)
    return fail(ErrorCode::kIo, fmt::format("writing {}: {}", path, std::strerror(err)));
  return {};
}

// Keys are secrets: 0600 from the moment the file exists.
Status write_key(const std::string& path, EVP_PKEY* key) {
  CRU_TRY_ASSIGN(auto f, create_file(path, 0600));
  if (PEM_write_PrivateKey(f.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1)
    return openssl_failed(fmt::format("writing {}", path));
  return finish(std::move(f), path);
}

Status write_cert(const std::string& path, X509* cert) {
  CRU_TRY_ASSIGN(auto f, create_file(path, 0644));
  if (PEM_write_X509(f.get(), cert) != 1) return openssl_failed(fmt::format("writing {}", path));
  return finish(std::move(f), path);
}

}  // namespace

TlsFiles local_pki_files(const std::string& dir, const std::string& name) {
  return TlsFiles{dir + "/" + name + ".pem", dir + "/" + name + "-key.pem", dir + "/ca.pem"};
}

Status write_local_pki(const std::string& dir, const std::vector<std::string>& names) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    return fail(ErrorCode::kIo, fmt::format("creating {}: {}", dir, std::strerror(errno)));
  for (const auto& n : names)
    if (n.empty() || n == "ca" || n.find('/') != std::string::npos)
      return fail(ErrorCode::kInvalidArgument,
                  fmt::format("'{}' cannot name a certificate file", n));
  ERR_clear_error();
  CRU_TRY_ASSIGN(auto ca_key, new_key());
  CRU_TRY_ASSIGN(auto ca, new_cert("crucible local CA", ca_key.get(), nullptr, ca_key.get()));
  CRU_TRY(write_key(dir + "/ca-key.pem", ca_key.get()));
  CRU_TRY(write_cert(dir + "/ca.pem", ca.get()));
  for (const auto& n : names) {
    TlsFiles f = local_pki_files(dir, n);
    CRU_TRY_ASSIGN(auto key, new_key());
    CRU_TRY_ASSIGN(auto cert, new_cert(n, key.get(), ca.get(), ca_key.get()));
    CRU_TRY(write_key(f.key, key.get()));
    CRU_TRY(write_cert(f.cert, cert.get()));
  }
  return {};
}

}  // namespace cru
