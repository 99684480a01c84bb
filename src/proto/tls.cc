#include "proto/tls.h"

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/stat.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>

namespace cru::proto {

namespace {

// Errors OpenSSL may queue for one failed call; more are dropped, the first ones say why.
constexpr int kMaxReasons = 4;

Status readable(const std::string& path, const char* what) {
  if (path.empty()) return fail(ErrorCode::kInvalidArgument, fmt::format("no {} file given", what));
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr)
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("{} file {}: {}", what, path, std::strerror(errno)));
  std::fclose(f);
  return {};
}

// A private key others can read is no longer private: refused, as the volume key file is.
Status owner_only(const std::string& path, const char* what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("{} file {}: {}", what, path, std::strerror(errno)));
  if ((st.st_mode & 077) != 0)
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("{} file {}: mode {:04o} lets others read it; chmod 600 it", what, path,
                            st.st_mode & 07777));
  return {};
}

tl::unexpected<Error> failed(const std::string& path, const char* what) {
  return fail(ErrorCode::kInvalidArgument,
              fmt::format("{} file {}: {}", what, path, openssl_reason("rejected by OpenSSL")));
}

}  // namespace

std::string openssl_reason(const std::string& fallback) {
  std::string out;
  int n = 0;
  while (unsigned long e = ERR_get_error()) {
    if (n++ >= kMaxReasons) continue;  // keep draining the queue
    std::array<char, 256> buf{};
    ERR_error_string_n(e, buf.data(), buf.size());
    if (!out.empty()) out += "; ";
    // "error:0A000086:SSL routines::certificate verify failed" -> "SSL routines::..."
    std::string s(buf.data());
    size_t third = s.find(':', s.find(':') + 1);
    out += third == std::string::npos ? s : s.substr(third + 1);
  }
  return out.empty() ? fallback : out;
}

TlsContext::TlsContext() : ctx_(asio::ssl::context::tls) {}

Result<std::shared_ptr<TlsContext>> TlsContext::load(const TlsFiles& files) {
  CRU_TRY(readable(files.cert, "TLS certificate"));
  CRU_TRY(readable(files.key, "TLS key"));
  CRU_TRY(owner_only(files.key, "TLS key"));
  CRU_TRY(readable(files.ca, "TLS CA"));
  ERR_clear_error();
  std::shared_ptr<TlsContext> t(new TlsContext());
  SSL_CTX* ctx = t->ctx_.native_handle();
  // Both ends are ours: no reason to speak anything older than TLS 1.3.
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1)
    return fail(ErrorCode::kUnsupported, "TLS 1.3: " + openssl_reason("not supported"));
  if (SSL_CTX_use_certificate_chain_file(ctx, files.cert.c_str()) != 1)
    return failed(files.cert, "TLS certificate");
  // OpenSSL checks here that the key belongs to the certificate ("key values mismatch").
  if (SSL_CTX_use_PrivateKey_file(ctx, files.key.c_str(), SSL_FILETYPE_PEM) != 1)
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("TLS key file {} (for certificate file {}): {}", files.key, files.cert,
                            openssl_reason("rejected by OpenSSL")));
  if (SSL_CTX_check_private_key(ctx) != 1)
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("TLS key file {} does not match certificate file {}: {}", files.key,
                            files.cert, openssl_reason("mismatch")));
  if (SSL_CTX_load_verify_locations(ctx, files.ca.c_str(), nullptr) != 1)
    return failed(files.ca, "TLS CA");
  // A server asks for the client's certificate and refuses a client without one; a client
  // refuses a server whose certificate does not chain to the CA.
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  // Servers send only this CA's name when asking for a client certificate.
  STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(files.ca.c_str());
  if (names == nullptr) return failed(files.ca, "TLS CA");
  SSL_CTX_set_client_CA_list(ctx, names);
  return t;
}

}  // namespace cru::proto
