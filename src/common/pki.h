// A throw-away certificate authority for local clusters and tests (crucible-dsc create
// --tls, the e2e tests): one CA and one certificate per name, each valid for 127.0.0.1,
// ::1 and localhost, made with the OpenSSL library. Not for production: the CA's key
// sits next to the certificates. Any thread; no shared state.
#pragma once

#include <string>
#include <vector>

#include "common/result.h"
#include "common/tls_files.h"

namespace cru {

// Throw-away certificates expire after this long: long enough for any local cluster.
inline constexpr int kLocalPkiValidDays = 3650;

// Creates `dir` (mode 0700) if needed and writes ca.pem and ca-key.pem, then for each
// name <name>.pem (signed by the CA, usable as TLS client and server) and <name>-key.pem.
// Keys are written with mode 0600. Refuses to overwrite any existing file.
Status write_local_pki(const std::string& dir, const std::vector<std::string>& names);

// The files write_local_pki() wrote for `name` in `dir`.
TlsFiles local_pki_files(const std::string& dir, const std::string& name);

}  // namespace cru
