#include "common/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>

#include "common/units.h"

namespace cru {

namespace {
constexpr auto kRedrawInterval = std::chrono::milliseconds(200);
}

Progress::Progress(std::string label, uint64_t total_bytes)
    : label_(std::move(label)),
      total_(total_bytes),
      enabled_(::isatty(STDERR_FILENO) == 1),
      start_(std::chrono::steady_clock::now()),
      last_(start_) {}

Progress::~Progress() { finish(); }

void Progress::update(uint64_t done_bytes) {
  if (!enabled_) return;
  auto now = std::chrono::steady_clock::now();
  if (now - last_ < kRedrawInterval) return;
  last_ = now;
  double secs = std::chrono::duration<double>(now - start_).count();
  double rate = secs > 0 ? static_cast<double>(done_bytes) / secs : 0;
  std::string line = fmt::format("{}: {}", label_, format_size(done_bytes));
  if (total_ > 0)
    line += fmt::format(" / {} ({:.0f}%)", format_size(total_),
                        100.0 * static_cast<double>(done_bytes) / static_cast<double>(total_));
  line += fmt::format(", {}/s", format_size(static_cast<uint64_t>(rate)));
  if (total_ > done_bytes && rate > 0)
    line += fmt::format(", {:.0f} s left", static_cast<double>(total_ - done_bytes) / rate);
  std::fprintf(stderr, "\r\033[K%s", line.c_str());
  std::fflush(stderr);
  drawn_ = true;
}

void Progress::finish() {
  if (drawn_) {
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
    drawn_ = false;
  }
}

}  // namespace cru
