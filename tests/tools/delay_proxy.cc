// delay-proxy: the delaying TCP proxy of tests/support/delay_proxy.h as a program, for the
// network-namespace test (run inside a namespace with `ip netns exec`) and `make bench`
// (crucible over a 1 ms round trip).
//
//   delay_proxy --listen 127.0.0.1:0 --target 127.0.0.1:9000 [--delay-us 500]
//               [--jitter-us 100] [--off] [--queue-bytes 8MiB] [--seed N]
//
// Prints "listening on ADDR:PORT" once it accepts connections. SIGUSR1 turns the delay on,
// SIGUSR2 off (each answered by a line "delay on" / "delay off"); SIGTERM or SIGINT resets
// every connection and exits 0.
#include "support/delay_proxy.h"

#include <fmt/format.h>
#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "common/units.h"

namespace {

struct HostPort {
  std::string host;
  uint16_t port = 0;
};

// "1.2.3.4:80" or "[::1]:80".
cru::Result<HostPort> parse_host_port(const std::string& flag, const std::string& text) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size())
    return cru::fail(cru::ErrorCode::kInvalidArgument,
                     fmt::format("{} '{}': expected ADDRESS:PORT", flag, text));
  std::string host = text.substr(0, colon);
  if (host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  unsigned long port = 0;
  try {
    size_t used = 0;
    port = std::stoul(text.substr(colon + 1), &used);
    if (used != text.size() - colon - 1 || port > 65535) throw std::out_of_range("port");
  } catch (const std::exception&) {
    return cru::fail(cru::ErrorCode::kInvalidArgument,
                     fmt::format("{} '{}': the port is not a number in 0..65535", flag, text));
  }
  return HostPort{host, static_cast<uint16_t>(port)};
}

int run(const std::string& listen_text, const std::string& target_text,
        cru::test::DelayProxyOptions o, const std::string& queue_text) {
  auto listen = parse_host_port("--listen", listen_text);
  auto target = parse_host_port("--target", target_text);
  auto queue = cru::parse_size(queue_text);
  for (const auto* e : {listen ? nullptr : &listen.error(), target ? nullptr : &target.error(),
                        queue ? nullptr : &queue.error()})
    if (e != nullptr) {
      fmt::print(stderr, "delay_proxy: {}\n", e->message);
      return 2;
    }
  o.listen_address = listen->host;
  o.listen_port = listen->port;
  o.target_address = target->host;
  o.target_port = target->port;
  o.queue_bytes_max = *queue;

  // Signals are taken synchronously by this thread; the proxy's io thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  for (int s : {SIGUSR1, SIGUSR2, SIGTERM, SIGINT}) sigaddset(&signals, s);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto proxy = cru::test::DelayProxy::start(o);
  if (!proxy) {
    fmt::print(stderr, "delay_proxy: {}\n", proxy.error().message);
    return 1;
  }
  fmt::print("delay_proxy: forwarding to {}:{}, {} us one way, jitter {} us, delay {}\n",
             o.target_address, o.target_port, o.one_way_delay.count(), o.jitter.count(),
             o.delay_on ? "on" : "off");
  fmt::print("listening on {}:{}\n", o.listen_address, (*proxy)->port());
  std::fflush(stdout);
  for (;;) {
    int sig = 0;
    if (sigwait(&signals, &sig) != 0) continue;
    if (sig == SIGUSR1 || sig == SIGUSR2) {
      (*proxy)->set_delay_on(sig == SIGUSR1);
      fmt::print("delay {}\n", sig == SIGUSR1 ? "on" : "off");
      std::fflush(stdout);
      continue;
    }
    break;
  }
  (*proxy)->stop();
  const auto st = (*proxy)->stats();
  fmt::print(
      "delay_proxy: stopped; {} connections, {} refused, {} bytes to the target, {} from it\n",
      st.accepted, st.refused, st.bytes_to_target, st.bytes_from_target);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"delaying TCP proxy (tests and benchmarks)"};
  std::string listen, target, queue = "8MiB";
  int64_t delay_us = 500, jitter_us = 100;
  bool off = false;
  uint64_t seed = 1;
  app.add_option("--listen", listen, "ADDRESS:PORT to accept on (port 0: any free port)")
      ->required();
  app.add_option("--target", target, "ADDRESS:PORT to forward to")->required();
  app.add_option("--delay-us", delay_us, "added one-way delay, each direction")
      ->check(CLI::Range(int64_t{0}, int64_t{10'000'000}));
  app.add_option("--jitter-us", jitter_us, "the delay varies by up to this either way")
      ->check(CLI::Range(int64_t{0}, int64_t{10'000'000}));
  app.add_flag("--off", off, "start with the delay off (SIGUSR1 turns it on)");
  app.add_option("--queue-bytes", queue, "bytes held per direction of a connection");
  app.add_option("--seed", seed, "the jitter's random seed");
  CLI11_PARSE(app, argc, argv);
  cru::test::DelayProxyOptions o;
  o.one_way_delay = std::chrono::microseconds(delay_us);
  o.jitter = std::chrono::microseconds(jitter_us);  // above the delay: start() says so
  o.delay_on = !off;
  o.seed = seed;
  return run(listen, target, o, queue);
}
