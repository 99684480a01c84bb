#include "support/netns.h"

#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <iostream>
#include <regex>

#include "support/cluster.h"

namespace cru::test {

namespace fs = std::filesystem;

namespace {

// ip, nft and tc answer at once; a namespace deletion waits for the kernel's cleanup.
constexpr Millis kCommandTimeout{30000};
// A proxy prints its address as soon as it listens.
constexpr Millis kProxyStartTimeout{20000};
// The /24s tried: 10.213.N.0/24 from a per-process start, skipping any a route here uses.
constexpr int kSubnetChoices = 200;

bool refused_by_kernel(const CommandResult& r) {
  const std::string text = r.out + r.err;
  return text.find("Operation not permitted") != std::string::npos ||
         text.find("not supported") != std::string::npos ||
         text.find("Permission denied") != std::string::npos;
}

// <build>/tests/delay_proxy: next to the binaries' bin/.
std::string delay_proxy_path() {
  return (fs::path(bin("crucible-downstairs")).parent_path().parent_path() / "tests" /
          "delay_proxy")
      .string();
}

}  // namespace

std::vector<std::string> NetLab::exec_prefix(int i) const {
  return {tool("ip"), "netns", "exec", ns(i)};
}

Status NetLab::run_in(int i, std::vector<std::string> argv) const {
  if (i >= 0) {
    auto prefix = exec_prefix(i);
    argv.insert(argv.begin(), prefix.begin(), prefix.end());
  }
  auto r = run_command(argv, kCommandTimeout);
  if (r.exit_code() != 0)
    return fail(ErrorCode::kIo, fmt::format("{} failed: {}", fmt::join(argv, " "), r.describe()));
  return {};
}

Result<std::unique_ptr<NetLab>> NetLab::create(int hosts) {
  for (const char* t : {"ip", "nft", "tc"})
    if (tool(t) == t)
      return fail(ErrorCode::kIo, fmt::format("{} is not installed (make deps)", t));
  std::unique_ptr<NetLab> lab(new NetLab());
  const int pid = static_cast<int>(::getpid());
  lab->tag_ = std::to_string(pid % 100000);
  lab->bridge_ = "cru" + lab->tag_ + "b";

  auto routes = run_command({tool("ip"), "-4", "route", "show"}, kCommandTimeout);
  if (routes.exit_code() != 0) return fail(ErrorCode::kIo, "ip route show: " + routes.describe());
  for (int k = 0; k < kSubnetChoices && lab->prefix_.empty(); ++k) {
    std::string p = fmt::format("10.213.{}.", 20 + (pid + k) % kSubnetChoices);
    if (routes.out.find(p) == std::string::npos) lab->prefix_ = p;
  }
  if (lab->prefix_.empty()) return fail(ErrorCode::kIo, "no free 10.213.N.0/24 for the lab");

  auto br =
      run_command({tool("ip"), "link", "add", lab->bridge_, "type", "bridge"}, kCommandTimeout);
  if (br.exit_code() != 0)
    return fail(refused_by_kernel(br) ? ErrorCode::kUnsupported : ErrorCode::kIo,
                "cannot make a bridge: " + br.describe());
  lab->bridge_made_ = true;
  CRU_TRY(lab->run_in(-1, {tool("ip"), "addr", "add", lab->prefix_ + "1/24", "dev", lab->bridge_}));
  CRU_TRY(lab->run_in(-1, {tool("ip"), "link", "set", lab->bridge_, "up"}));
  for (int i = 0; i < hosts; ++i) CRU_TRY(lab->add_host(i));
  return lab;
}

Status NetLab::add_host(int i) {
  Host h;
  h.ns = fmt::format("crunetns-{}-{}", tag_, i);
  h.address = fmt::format("{}{}", prefix_, 11 + i);
  h.veth_host = fmt::format("cru{}h{}", tag_, i);
  h.veth_ns = fmt::format("cru{}n{}", tag_, i);
  auto made = run_command({tool("ip"), "netns", "add", h.ns}, kCommandTimeout);
  if (made.exit_code() != 0)
    return fail(refused_by_kernel(made) ? ErrorCode::kUnsupported : ErrorCode::kIo,
                "cannot make a network namespace: " + made.describe());
  hosts_.push_back(std::move(h));  // from here on teardown deletes it
  const Host& made_host = hosts_.back();
  auto veth = run_command({tool("ip"), "link", "add", made_host.veth_host, "type", "veth", "peer",
                           "name", made_host.veth_ns},
                          kCommandTimeout);
  if (veth.exit_code() != 0)
    return fail(refused_by_kernel(veth) ? ErrorCode::kUnsupported : ErrorCode::kIo,
                "cannot make a veth pair: " + veth.describe());
  CRU_TRY(run_in(-1, {tool("ip"), "link", "set", made_host.veth_ns, "netns", made_host.ns}));
  CRU_TRY(run_in(-1, {tool("ip"), "link", "set", made_host.veth_host, "master", bridge_}));
  CRU_TRY(run_in(-1, {tool("ip"), "link", "set", made_host.veth_host, "up"}));
  CRU_TRY(
      run_in(i, {tool("ip"), "addr", "add", made_host.address + "/24", "dev", made_host.veth_ns}));
  CRU_TRY(run_in(i, {tool("ip"), "link", "set", made_host.veth_ns, "up"}));
  CRU_TRY(run_in(i, {tool("ip"), "link", "set", "lo", "up"}));
  return {};
}

NetLab::~NetLab() { teardown(); }

void NetLab::teardown() {
  for (Host& h : hosts_) {
    h.proxy.reset();  // SIGKILL to its process group, reaped
    // Deleting the namespace deletes its end of the veth, and so the pair, with every
    // nft table and qdisc on them.
    if (auto st = run_in(-1, {tool("ip"), "netns", "delete", h.ns}); !st)
      std::cerr << "netns teardown: " << st.error().message << "\n";
    static_cast<void>(run_command({tool("ip"), "link", "delete", h.veth_host}, kCommandTimeout));
  }
  hosts_.clear();
  if (bridge_made_) {
    if (auto st = run_in(-1, {tool("ip"), "link", "delete", bridge_}); !st)
      std::cerr << "netns teardown: " << st.error().message << "\n";
    bridge_made_ = false;
  }
}

Result<Impairment> NetLab::drop_rule(const std::vector<int>& hosts, const std::string& name,
                                     const std::string& match) {
  Impairment guard([this, hosts, name] {
    for (int i : hosts)
      static_cast<void>(run_command(
          {tool("ip"), "netns", "exec", ns(i), tool("nft"), "delete", "table", "inet", name},
          kCommandTimeout));
  });
  for (int i : hosts) {
    const std::string& dev = hosts_.at(i).veth_ns;
    CRU_TRY(
        run_in(i, {tool("nft"),
                   fmt::format("add table inet {0}; "
                               "add chain inet {0} in {{ type filter hook input priority 0; }}; "
                               "add chain inet {0} out {{ type filter hook output priority 0; }}; "
                               "add rule inet {0} in iifname \"{1}\" {2} counter drop; "
                               "add rule inet {0} out oifname \"{1}\" {2} counter drop",
                               name, dev, match)}));
  }
  return guard;
}

Result<Impairment> NetLab::drop_percent(const std::vector<int>& hosts, int percent) {
  if (percent < 1 || percent > 100)
    return fail(ErrorCode::kInvalidArgument, fmt::format("drop {}%: expected 1..100", percent));
  return drop_rule(hosts, "cruloss", fmt::format("numgen random mod 100 < {}", percent));
}

Result<Impairment> NetLab::partition(const std::vector<int>& hosts) {
  return drop_rule(hosts, "crucut", "");
}

uint64_t NetLab::dropped(int i) const {
  uint64_t total = 0;
  for (const char* table : {"cruloss", "crucut"}) {
    auto r = run_command(
        {tool("ip"), "netns", "exec", ns(i), tool("nft"), "list", "table", "inet", table},
        kCommandTimeout);
    if (r.exit_code() != 0) continue;  // no such table
    static const std::regex counter("counter packets ([0-9]+)");
    for (std::sregex_iterator it(r.out.begin(), r.out.end(), counter), end; it != end; ++it)
      total += std::stoull((*it)[1]);
  }
  return total;
}

Result<Impairment> NetLab::cap_bandwidth(const std::vector<int>& hosts, const std::string& rate) {
  Impairment guard([this, hosts] {
    for (int i : hosts) {
      static_cast<void>(run_command(
          {tool("tc"), "qdisc", "del", "dev", hosts_.at(i).veth_host, "root"}, kCommandTimeout));
      static_cast<void>(run_command({tool("ip"), "netns", "exec", ns(i), tool("tc"), "qdisc", "del",
                                     "dev", hosts_.at(i).veth_ns, "root"},
                                    kCommandTimeout));
    }
  });
  // The burst holds a few of the veth's 64 KiB GSO packets; the latency bounds the queue.
  const std::vector<std::string> tbf = {"root",  "tbf",   "rate",    rate,
                                        "burst", "256kb", "latency", "200ms"};
  for (int i : hosts) {
    std::vector<std::string> here = {tool("tc"), "qdisc", "add", "dev", hosts_.at(i).veth_host};
    std::vector<std::string> there = {tool("tc"), "qdisc", "add", "dev", hosts_.at(i).veth_ns};
    here.insert(here.end(), tbf.begin(), tbf.end());
    there.insert(there.end(), tbf.begin(), tbf.end());
    CRU_TRY(run_in(-1, here));
    CRU_TRY(run_in(i, there));
  }
  return guard;
}

uint64_t NetLab::throttled(int i) const {
  uint64_t total = 0;
  static const std::regex overlimits("overlimits ([0-9]+)");
  for (bool inside : {false, true}) {
    std::vector<std::string> argv = {
        tool("tc"), "-s",  "qdisc",
        "show",     "dev", inside ? hosts_.at(i).veth_ns : hosts_.at(i).veth_host};
    if (inside) argv.insert(argv.begin(), {tool("ip"), "netns", "exec", ns(i)});
    auto r = run_command(argv, kCommandTimeout);
    for (std::sregex_iterator it(r.out.begin(), r.out.end(), overlimits), end; it != end; ++it)
      total += std::stoull((*it)[1]);
  }
  return total;
}

Status NetLab::start_proxy(int i, uint16_t listen_port, uint16_t target_port,
                           std::chrono::microseconds one_way, std::chrono::microseconds jitter) {
  Host& h = hosts_.at(i);
  std::vector<std::string> argv = exec_prefix(i);
  argv.insert(
      argv.end(),
      {delay_proxy_path(), "--listen", fmt::format("{}:{}", h.address, listen_port), "--target",
       fmt::format("{}:{}", h.address, target_port), "--delay-us", std::to_string(one_way.count()),
       "--jitter-us", std::to_string(jitter.count()), "--off", "--seed", std::to_string(i + 1)});
  auto p = Process::start(argv);
  if (!p) return tl::unexpected(p.error());
  auto line = (*p)->wait_for_line("listening on ", kProxyStartTimeout);
  if (!line)
    return fail(ErrorCode::kIo, fmt::format("delay proxy in {}: {}", h.ns, line.error().message));
  h.proxy = std::move(*p);
  return {};
}

Status NetLab::set_delay(bool on) {
  for (Host& h : hosts_) {
    if (!h.proxy) continue;
    h.proxy->kill(on ? SIGUSR1 : SIGUSR2);
    auto said = h.proxy->wait_for_line(on ? "delay on" : "delay off", kProxyStartTimeout);
    if (!said)
      return fail(ErrorCode::kIo, fmt::format("delay proxy in {}: {}", h.ns, said.error().message));
  }
  return {};
}

}  // namespace cru::test
