#include "trace/export.h"

#include <fmt/format.h>
#include <httplib.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/address.h"
#include "trace/jaeger.h"
#include "trace/otlp.h"

namespace cru::trace {

namespace {

constexpr std::string_view kHttpPrefix = "http://";

// One connected UDP socket to the agent; each batch is one or more datagrams.
class JaegerAgentExporter final : public Exporter {
 public:
  explicit JaegerAgentExporter(int fd) : fd_(fd) {}
  ~JaegerAgentExporter() override { ::close(fd_); }
  JaegerAgentExporter(const JaegerAgentExporter&) = delete;
  JaegerAgentExporter& operator=(const JaegerAgentExporter&) = delete;

  Status send(const std::string& service, std::span<const Span> spans,
              const ExportStats& stats) override {
    auto packets =
        encode_emit_batches(service, spans, seq_no_, stats, kJaegerPacketBytesMax, too_large_);
    for (const auto& p : packets) {
      // Never waits: a full socket buffer loses the datagram, as UDP would anyway. An agent
      // that is not there shows as ECONNREFUSED on a later send.
      if (::send(fd_, p.data(), p.size(), MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
        return fail(ErrorCode::kIo,
                    fmt::format("sending spans to the Jaeger agent: {}", std::strerror(errno)));
    }
    return {};
  }

 private:
  int fd_;
  int64_t seq_no_ = 1;
  uint64_t too_large_ = 0;
};

class OtlpHttpExporter final : public Exporter {
 public:
  explicit OtlpHttpExporter(const Endpoint& e) : client_(e.host, e.port) {
    client_.set_connection_timeout(kHttpTimeout);
    client_.set_read_timeout(kHttpTimeout);
    client_.set_write_timeout(kHttpTimeout);
    client_.set_keep_alive(true);
  }

  Status send(const std::string& service, std::span<const Span> spans,
              const ExportStats&) override {
    auto res = client_.Post("/v1/traces", encode_otlp_json(service, spans), "application/json");
    if (!res)
      return fail(ErrorCode::kIo, fmt::format("OTLP export: {}", httplib::to_string(res.error())));
    if (res->status != 200)
      return fail(ErrorCode::kIo, fmt::format("OTLP export: HTTP status {}", res->status));
    return {};
  }

 private:
  httplib::Client client_;
};

Result<int> connect_udp(const Endpoint& e) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(e.port);
  if (int rc = ::getaddrinfo(e.host.c_str(), port.c_str(), &hints, &res); rc != 0)
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("Jaeger agent {}:{}: {}", e.host, e.port, ::gai_strerror(rc)));
  std::string why = "no address";
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      why = std::strerror(errno);
      continue;
    }
    if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
      ::freeaddrinfo(res);
      return fd;
    }
    why = std::strerror(errno);
    ::close(fd);
  }
  ::freeaddrinfo(res);
  return fail(ErrorCode::kIo, fmt::format("Jaeger agent {}:{}: {}", e.host, e.port, why));
}

}  // namespace

Result<Endpoint> parse_endpoint(std::string_view text, std::string_view flag) {
  auto bad = [&](std::string_view why) {
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("{} '{}': {} (expected HOST:PORT for a Jaeger agent, or "
                            "http://HOST:PORT for an OTLP/HTTP receiver)",
                            flag, text, why));
  };
  Endpoint e;
  std::string_view rest = text;
  if (rest.starts_with(kHttpPrefix)) {
    e.kind = Endpoint::Kind::kOtlpHttp;
    rest.remove_prefix(kHttpPrefix.size());
    if (rest.ends_with('/')) rest.remove_suffix(1);
    if (rest.find('/') != std::string_view::npos)
      return bad("a path is not allowed: spans go to /v1/traces");
  } else if (rest.find("://") != std::string_view::npos) {
    return bad("only http:// is supported");
  }
  auto hp = parse_address(rest);
  if (!hp) return bad(hp.error().message);
  e.host = hp->host;
  e.port = hp->port;
  return e;
}

Result<std::unique_ptr<Exporter>> make_exporter(const Endpoint& endpoint) {
  if (endpoint.kind == Endpoint::Kind::kOtlpHttp)
    return std::unique_ptr<Exporter>(std::make_unique<OtlpHttpExporter>(endpoint));
  CRU_TRY_ASSIGN(int fd, connect_udp(endpoint));
  return std::unique_ptr<Exporter>(std::make_unique<JaegerAgentExporter>(fd));
}

Result<std::unique_ptr<Tracer>> make_tracer(std::string service, std::string_view endpoint,
                                            double sample_ratio, std::string_view flag) {
  CRU_TRY_ASSIGN(Endpoint e, parse_endpoint(endpoint, flag));
  CRU_TRY(check_sample_ratio(sample_ratio, "the trace sample ratio"));
  auto exporter = make_exporter(e);
  if (!exporter)
    return fail(exporter.error().code, fmt::format("{}: {}", flag, exporter.error().message));
  TracerOptions o;
  o.service = std::move(service);
  o.sample_ratio = sample_ratio;
  return std::make_unique<Tracer>(std::move(o), std::move(*exporter));
}

}  // namespace cru::trace
