// Other hosts for end-to-end tests: network namespaces `crunetns-<tag>-<i>`, each joined to a
// bridge in the test's (root) namespace by a veth pair, with addresses in a private /24
// that no route here uses yet (the bridge holds .1, host i holds .(11+i)). Per host, the
// impairments the kernel offers without netem: packet loss and partitions as nftables
// rules inside the host's namespace, a bandwidth cap as tbf on both ends of its veth, and
// added latency through a delaying proxy (tests/tools/delay_proxy) running in the host.
// Owned and used by one test thread. Destroying the lab stops its proxies and deletes
// every namespace (their veths, rules and qdiscs go with them) and the bridge, whatever
// state a failed test left; each impairment is also a guard that undoes it when it goes.
//
//   auto lab = NetLab::create(3);        // kUnsupported: no namespaces here (skip)
//   auto cut = (*lab)->partition({1});   // host 1 unreachable until `cut` is destroyed
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/result.h"
#include "support/process.h"

namespace cru::test {

// Undoes one impairment when destroyed (or by undo()). Move-only.
class Impairment {
 public:
  Impairment() = default;
  explicit Impairment(std::function<void()> undo) : undo_(std::move(undo)) {}
  Impairment(Impairment&& o) noexcept : undo_(std::exchange(o.undo_, nullptr)) {}
  Impairment& operator=(Impairment&& o) noexcept {
    undo();
    undo_ = std::exchange(o.undo_, nullptr);
    return *this;
  }
  ~Impairment() { undo(); }
  void undo() {
    if (auto u = std::exchange(undo_, nullptr)) u();
  }

 private:
  std::function<void()> undo_;
};

class NetLab {
 public:
  // `hosts` namespaces on a new bridge. kUnsupported when this kernel or sandbox cannot
  // make a namespace or a veth pair (the caller skips); kIo for any other failure.
  static Result<std::unique_ptr<NetLab>> create(int hosts);
  ~NetLab();
  NetLab(const NetLab&) = delete;
  NetLab& operator=(const NetLab&) = delete;

  int hosts() const { return static_cast<int>(hosts_.size()); }
  const std::string& ns(int i) const { return hosts_.at(i).ns; }
  const std::string& address(int i) const { return hosts_.at(i).address; }
  // argv prefix that runs a program in host i: {"ip", "netns", "exec", NS}.
  std::vector<std::string> exec_prefix(int i) const;

  // Drops `percent`% of the packets in and out of each host (nft numgen random).
  Result<Impairment> drop_percent(const std::vector<int>& hosts, int percent);
  // Drops every packet in and out of each host: to the others it is gone, though its
  // processes run and its connections stay open until a timeout ends them.
  Result<Impairment> partition(const std::vector<int>& hosts);
  // Caps each host's link to `rate` (tc syntax, e.g. "40mbit") both ways.
  Result<Impairment> cap_bandwidth(const std::vector<int>& hosts, const std::string& rate);
  // Packets the drop rules of host i have dropped so far (0 if it has none).
  uint64_t dropped(int i) const;
  // How often the tbf caps on host i's link held a packet back so far.
  uint64_t throttled(int i) const;

  // Starts a delay proxy in host i: address(i):listen_port -> address(i):target_port,
  // `one_way` each way with `jitter`, off until set_delay(true).
  Status start_proxy(int i, uint16_t listen_port, uint16_t target_port,
                     std::chrono::microseconds one_way, std::chrono::microseconds jitter);
  // Turns every proxy's delay on or off; returns once each has said so.
  Status set_delay(bool on);

 private:
  struct Host {
    std::string ns, address, veth_host, veth_ns;
    std::unique_ptr<Process> proxy;
  };
  NetLab() = default;
  Status add_host(int i);
  // Runs a command in host i's namespace (or here for i < 0); kIo with its output on failure.
  Status run_in(int i, std::vector<std::string> argv) const;
  // An nftables table `name` in each host that drops what `match` (an nft expression)
  // selects, both ways; the guard deletes them.
  Result<Impairment> drop_rule(const std::vector<int>& hosts, const std::string& name,
                               const std::string& match);
  void teardown();

  std::string tag_;     // unique to this process: names of namespaces and links
  std::string prefix_;  // "10.213.N." of the /24
  std::string bridge_;
  bool bridge_made_ = false;
  std::vector<Host> hosts_;
};

}  // namespace cru::test
