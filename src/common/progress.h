// Progress of a long operation (import, export, fill) on a terminal: one line on stderr,
// redrawn at most a few times a second, only when stderr is a terminal. Not for cores.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace cru {

class Progress {
 public:
  // total in bytes (0 if unknown); label e.g. "importing disk.raw".
  Progress(std::string label, uint64_t total_bytes);
  ~Progress();
  void update(uint64_t done_bytes);
  // Clears the line; the caller prints its own summary.
  void finish();

 private:
  std::string label_;
  uint64_t total_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_;
};

}  // namespace cru
