#include "common/tls_files.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace cru {

Result<std::optional<TlsFiles>> tls_files_from_flags(const std::string& cert,
                                                     const std::string& key,
                                                     const std::string& ca) {
  if (cert.empty() && key.empty() && ca.empty()) return std::nullopt;
  std::vector<std::string> missing;
  if (cert.empty()) missing.emplace_back("--tls-cert");
  if (key.empty()) missing.emplace_back("--tls-key");
  if (ca.empty()) missing.emplace_back("--tls-ca");
  if (!missing.empty())
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("TLS needs --tls-cert, --tls-key and --tls-ca together; missing {}",
                            fmt::join(missing, ", ")));
  return TlsFiles{cert, key, ca};
}

std::vector<std::string> tls_flags(const std::optional<TlsFiles>& files) {
  if (!files) return {};
  return {"--tls-cert", files->cert, "--tls-key", files->key, "--tls-ca", files->ca};
}

}  // namespace cru
