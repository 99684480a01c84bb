#include "tools/dsc/control.h"

#include <fmt/format.h>
#include <sys/un.h>

#include <array>
#include <asio/co_spawn.hpp>
#include <asio/connect.hpp>
#include <asio/io_context.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/read.hpp>
#include <asio/redirect_error.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <cerrno>
#include <charconv>

namespace cru::dsc {

namespace {

struct CommandInfo {
  Command command;
  std::string_view name;
  bool takes_index;
};

constexpr std::array<CommandInfo, 6> kCommands = {{
    {Command::kStatus, "status", false},
    {Command::kStart, "start", true},
    {Command::kStop, "stop", true},
    {Command::kRestart, "restart", true},
    {Command::kKill, "kill", true},
    {Command::kKillRandom, "kill-random", false},
}};

const CommandInfo& info(Command c) {
  for (const auto& i : kCommands)
    if (i.command == c) return i;
  return kCommands[0];
}

// Shows a piece of untrusted input in an error message: printable ASCII only, bounded.
std::string printable(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, kMaxRequestBytes)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  return out;
}

using asio::local::stream_protocol;

asio::awaitable<Result<std::string>> exchange(std::string path, std::string request) {
  stream_protocol::socket s(co_await asio::this_coro::executor);
  std::error_code ec;
  co_await s.async_connect(stream_protocol::endpoint(path),
                           asio::redirect_error(asio::use_awaitable, ec));
  if (ec == asio::error_code(ENOENT, asio::system_category()))
    co_return fail(ErrorCode::kNotFound,
                   fmt::format("no supervisor: {} does not exist (run crucible-dsc start)", path));
  if (ec == asio::error::connection_refused)
    co_return fail(ErrorCode::kNotFound,
                   fmt::format("no supervisor: {} is stale (its supervisor is gone)", path));
  if (ec) co_return fail(ErrorCode::kIo, fmt::format("connect {}: {}", path, ec.message()));
  co_await asio::async_write(s, asio::buffer(request),
                             asio::redirect_error(asio::use_awaitable, ec));
  if (ec)
    co_return fail(ErrorCode::kDisconnected, fmt::format("sending to {}: {}", path, ec.message()));
  std::string reply;
  co_await asio::async_read(s, asio::dynamic_buffer(reply, kMaxReplyBytes),
                            asio::redirect_error(asio::use_awaitable, ec));
  if (ec != asio::error::eof) {
    if (reply.size() >= kMaxReplyBytes)
      co_return fail(ErrorCode::kProtocol,
                     fmt::format("the reply is longer than {} bytes", kMaxReplyBytes));
    co_return fail(ErrorCode::kDisconnected,
                   fmt::format("reading from {}: {}", path, ec.message()));
  }
  // The last line is the verdict.
  if (reply.empty() || reply.back() != '\n')
    co_return fail(ErrorCode::kProtocol, "the supervisor closed the connection without an answer");
  size_t start = reply.rfind('\n', reply.size() - 2);
  start = start == std::string::npos ? 0 : start + 1;
  std::string verdict = reply.substr(start, reply.size() - 1 - start);
  reply.resize(start);
  if (verdict == "ok") co_return reply;
  if (verdict.starts_with("error ")) co_return fail(ErrorCode::kInvalidArgument, verdict.substr(6));
  co_return fail(ErrorCode::kProtocol,
                 fmt::format("unexpected reply line '{}'", printable(verdict)));
}

}  // namespace

std::string_view command_name(Command c) { return info(c).name; }
bool command_takes_index(Command c) { return info(c).takes_index; }

Result<Request> parse_request(std::string_view line) {
  if (line.size() > kMaxRequestBytes)
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("request longer than {} bytes", kMaxRequestBytes));
  size_t space = line.find(' ');
  std::string_view name = line.substr(0, space);
  std::string_view arg =
      space == std::string_view::npos ? std::string_view{} : line.substr(space + 1);
  const CommandInfo* found = nullptr;
  for (const auto& i : kCommands)
    if (i.name == name) found = &i;
  if (found == nullptr)
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("unknown command '{}' (expected status, start N, stop N, restart N, "
                            "kill N or kill-random)",
                            printable(name)));
  Request r{found->command, std::nullopt};
  if (!found->takes_index) {
    if (space != std::string_view::npos)
      return fail(ErrorCode::kInvalidArgument, fmt::format("{} takes no argument", found->name));
    return r;
  }
  if (arg.empty())
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("{} needs a downstairs index", found->name));
  uint32_t index = 0;
  auto [end, ec] = std::from_chars(arg.data(), arg.data() + arg.size(), index);
  if (ec != std::errc{} || end != arg.data() + arg.size())
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("'{}' is not a downstairs index (a number from 0)", printable(arg)));
  r.index = index;
  return r;
}

std::string format_request(const Request& r) {
  if (r.index) return fmt::format("{} {}\n", command_name(r.command), *r.index);
  return fmt::format("{}\n", command_name(r.command));
}

Result<std::string> socket_path(const std::string& dir) {
  std::string path = dir + "/dsc.sock";
  if (path.size() >= sizeof(sockaddr_un::sun_path))
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("--dir {}: the control socket path {} is {} bytes, UNIX sockets allow "
                            "{}; use a shorter "
                            "directory",
                            dir, path, path.size(), sizeof(sockaddr_un::sun_path) - 1));
  return path;
}

Result<std::string> call(const std::string& dir, const Request& r,
                         std::chrono::milliseconds timeout) {
  auto path = socket_path(dir);
  if (!path) return path;
  asio::io_context io;
  std::optional<Result<std::string>> result;
  asio::co_spawn(io, exchange(*path, format_request(r)),
                 [&result](const std::exception_ptr& e, Result<std::string> reply) {
                   if (e) {
                     try {
                       std::rethrow_exception(e);
                     } catch (const std::exception& x) {
                       result = fail(ErrorCode::kIo, x.what());
                     }
                   } else {
                     result = std::move(reply);
                   }
                 });
  io.run_for(timeout);
  if (!result)
    return fail(ErrorCode::kTimeout,
                fmt::format("no answer from the supervisor on {} within {} s", *path,
                            std::chrono::duration_cast<std::chrono::seconds>(timeout).count()));
  return std::move(*result);
}

}  // namespace cru::dsc
