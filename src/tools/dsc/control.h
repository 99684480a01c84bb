// The crucible-dsc control protocol, spoken over the UNIX socket DIR/dsc.sock between a
// command (`crucible-dsc stop 1`) and the running supervisor. One request per
// connection: a single line "<command> [index]\n"; the supervisor answers with zero or
// more text lines and a final "ok" or "error <message>" line, then closes. The parsing
// here is pure; call() is a blocking client for the command side.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"
#include "common/units.h"

namespace cru::dsc {

// The longest request is "restart 4294967295"; anything longer is junk.
inline constexpr size_t kMaxRequestBytes = 64;
// A status of every downstairs fits many times over.
inline constexpr size_t kMaxReplyBytes = 64 * kKiB;
// Longer than the slowest command (restart: a stop that ends in SIGKILL, then a start).
inline constexpr std::chrono::seconds kCallTimeout{90};

enum class Command { kStatus, kStart, kStop, kRestart, kKill, kKillRandom };

struct Request {
  Command command = Command::kStatus;
  std::optional<uint32_t> index;  // present exactly for start, stop, restart and kill
  friend bool operator==(const Request&, const Request&) = default;
};

std::string_view command_name(Command c);
bool command_takes_index(Command c);

// Parses one request line (without its newline). Errors name the problem: an unknown
// command, a missing, extra or non-numeric index.
Result<Request> parse_request(std::string_view line);
// The request line, newline included.
std::string format_request(const Request& r);

// DIR/dsc.sock, or an error when the path does not fit a UNIX socket address.
Result<std::string> socket_path(const std::string& dir);

// Sends `r` to the supervisor on `dir` and returns the reply's text lines (without the
// final "ok"). Errors: no supervisor (no or stale socket), the supervisor's "error"
// line as the message, a reply that is malformed or longer than kMaxReplyBytes, or no
// reply within `timeout`.
Result<std::string> call(const std::string& dir, const Request& r,
                         std::chrono::milliseconds timeout);

}  // namespace cru::dsc
