#include "common/address.h"

#include <arpa/inet.h>
#include <fmt/format.h>

#include <charconv>

namespace cru {

namespace {

bool is_ip(const std::string& host) {
  in6_addr buf{};
  return ::inet_pton(AF_INET, host.c_str(), &buf) == 1 ||
         ::inet_pton(AF_INET6, host.c_str(), &buf) == 1;
}

// RFC 1123 labels: letters, digits and inner hyphens, dot-separated, at most 253 bytes.
bool is_dns_name(std::string_view host) {
  constexpr size_t kMaxDnsName = 253, kMaxLabel = 63;
  if (host.empty() || host.size() > kMaxDnsName) return false;
  size_t label = 0;
  for (size_t i = 0; i < host.size(); ++i) {
    char c = host[i];
    if (c == '.') {
      if (label == 0 || host[i - 1] == '-') return false;
      label = 0;
      continue;
    }
    bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!alnum && !(c == '-' && label > 0)) return false;
    if (++label > kMaxLabel) return false;
  }
  return host.back() != '-' && host.back() != '.';
}

}  // namespace

Result<HostPort> parse_address(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return fail(ErrorCode::kInvalidArgument, fmt::format("'{}' is not host:port: {}", text, why));
  };
  auto colon = text.rfind(':');
  if (colon == std::string_view::npos) return bad("no ':port'");
  std::string host(text.substr(0, colon));
  std::string_view port_text = text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
    in6_addr buf{};
    if (::inet_pton(AF_INET6, host.c_str(), &buf) != 1) return bad("bad IPv6 address in brackets");
  } else if (host.find(':') != std::string::npos) {
    return bad("write IPv6 addresses in brackets, e.g. [::1]:3810");
  }
  if (host.empty()) return bad("empty host");
  if (!is_ip(host) && !is_dns_name(host)) return bad(fmt::format("bad host '{}'", host));
  unsigned port = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || ec != std::errc{} || end != port_text.data() + port_text.size())
    return bad(fmt::format("bad port '{}'", port_text));
  if (port == 0 || port > 65535) return bad(fmt::format("port {} is not in 1..65535", port));
  return HostPort{host, static_cast<uint16_t>(port)};
}

Result<HostPort> parse_listen_address(std::string_view text) {
  // Port 0 is valid here only: check the rest as an address with port 1.
  const bool any_port = text.ends_with(":0");
  std::string checked(any_port ? text.substr(0, text.size() - 1) : text);
  if (any_port) checked += '1';
  CRU_TRY_ASSIGN(auto a, parse_address(checked));
  if (any_port) a.port = 0;
  if (!is_ip(a.host))
    return fail(
        ErrorCode::kInvalidArgument,
        fmt::format("'{}' is not IP:PORT: '{}' is a name, give an IP address", text, a.host));
  return a;
}

}  // namespace cru
