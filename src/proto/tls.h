// Mutual TLS for framed connections: one TlsContext per process, built once from the
// (cert, key, ca) files and shared by every connection, served and outgoing alike. Both
// sides present a certificate and require the peer's to chain to the CA; TLS 1.3 only.
// Immutable after load(), so connections on the io thread may share it freely.
#pragma once

#include <asio/ssl/context.hpp>
#include <memory>
#include <string>

#include "common/result.h"
#include "common/tls_files.h"

namespace cru::proto {

class TlsContext {
 public:
  // Reads and checks the three files. Errors name the file, what it was meant to hold and
  // OpenSSL's reason (unreadable, not PEM, key not matching the certificate, no CA).
  static Result<std::shared_ptr<TlsContext>> load(const TlsFiles& files);

  asio::ssl::context& native() { return ctx_; }

 private:
  TlsContext();
  asio::ssl::context ctx_;
};

// The reason OpenSSL gives for the most recent failure on this thread (and clears its
// queue): "lib: reason" for each queued error, or `fallback` if there is none.
std::string openssl_reason(const std::string& fallback);

}  // namespace cru::proto
