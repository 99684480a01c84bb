// The crucible-dsc supervisor: runs one `crucible-downstairs run` per region, reports
// each start and exit, restarts none by itself, and serves the control socket
// (control.h). Single-threaded: everything runs on the calling thread inside
// run_supervisor(). Children die with the supervisor (PR_SET_PDEATHSIG) and are stopped
// (SIGTERM, then SIGKILL) on SIGINT/SIGTERM.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "common/tls_files.h"

namespace cru::dsc {

// A graceful stop (SIGTERM) turns into SIGKILL after this long.
inline constexpr std::chrono::seconds kStopTimeout{10};
// A SIGKILLed child is reaped within this long unless the kernel is stuck on it.
inline constexpr std::chrono::seconds kKillTimeout{5};
// A started downstairs prints its "listening on" line within this long.
inline constexpr std::chrono::seconds kStartTimeout{30};
// A control client sends its request line within this long.
inline constexpr std::chrono::seconds kRequestTimeout{5};
// Control connections served at once; a further one is answered with an error.
inline constexpr size_t kMaxControlConnections = 8;
// Child output is forwarded line by line; a longer line is split.
inline constexpr size_t kMaxChildLineBytes = 4096;

struct SupervisorOptions {
  std::string dir;                   // holds the control socket (and, usually, the regions)
  std::vector<std::string> regions;  // region directories; the index is the downstairs number
  std::string downstairs_bin;        // path of crucible-downstairs
  std::string address = "127.0.0.1";
  // Downstairs i listens on port_base + i * port_step. port_base 0: each picks a free
  // port on its first start and keeps it for later starts.
  uint16_t port_base = 3810;
  uint16_t port_step = 10;
  // Prometheus metrics: downstairs i serves them on address:(metrics_port_base + i *
  // port_step) (crucible-downstairs run --metrics); 0: off.
  uint16_t metrics_port_base = 0;
  // Mutual TLS: empty, plain TCP; else one set of files per region, passed to its downstairs.
  std::vector<TlsFiles> tls;
};

// Runs in the foreground. Returns the exit code: 0 after SIGINT/SIGTERM stopped every
// child, 1 if another supervisor holds `dir`, the control socket cannot be served, or a
// downstairs fails its first start (the others are then stopped).
// Precondition: regions is not empty and every port fits in 16 bits.
int run_supervisor(const SupervisorOptions& options);

}  // namespace cru::dsc
