// "host:port" addresses of downstairs, as written in configs and on command lines.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"

namespace cru {

struct HostPort {
  std::string host;  // an IPv4 or IPv6 address (without brackets) or a DNS name
  uint16_t port = 0;
  std::string port_string() const { return std::to_string(port); }
};

// Parses "host:port" or "[v6]:port". The host must be an IP address or a plausible DNS
// name; the port 1..65535. The error names the text and what is wrong with it.
Result<HostPort> parse_address(std::string_view text);
// An address to listen on: "IP:PORT" or "[IPv6]:PORT", an IP address (a server binds
// addresses, it does not resolve names) and PORT 0..65535 (0: any free port).
Result<HostPort> parse_listen_address(std::string_view text);

}  // namespace cru
