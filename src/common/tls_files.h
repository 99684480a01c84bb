// The three PEM files that configure mutual TLS (a certificate, its private key, and the
// CA that signs every peer's certificate), as given on command lines and in configs.
// Plain values, no OpenSSL: the context is built from them in proto/tls.h.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/result.h"

namespace cru {

struct TlsFiles {
  std::string cert;  // this process's certificate (PEM, signed by `ca`)
  std::string key;   // its private key (PEM)
  std::string ca;    // the CA certificate peers' certificates must chain to (PEM)
  friend bool operator==(const TlsFiles&, const TlsFiles&) = default;
};

// --tls-cert, --tls-key, --tls-ca: all three or none. None -> nullopt (plain TCP); some
// but not all -> an error naming the missing flags. Empty strings count as not given.
Result<std::optional<TlsFiles>> tls_files_from_flags(const std::string& cert,
                                                     const std::string& key, const std::string& ca);

// The same three as command-line arguments ("--tls-cert", F, ...), to pass them on to a
// child process; empty for nullopt.
std::vector<std::string> tls_flags(const std::optional<TlsFiles>& files);

}  // namespace cru
