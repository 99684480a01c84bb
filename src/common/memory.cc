#include "common/memory.h"

#include <malloc.h>

#include "common/units.h"

namespace cru {

namespace {
// Above the largest IO buffer (a 1 MiB job's frame, or a 1 MiB repair chunk, plus headers).
constexpr int kMmapThresholdBytes = 4 * kMiB;
// Free heap memory is returned to the system only beyond this: about the upstairs' 75 MiB
// in-flight limit, so steady IO does not trim and refault the same pages.
constexpr int kTrimThresholdBytes = 128 * kMiB;
}  // namespace

void keep_io_buffers_in_heap() {
  // Failures leave glibc's defaults: slower, not wrong.
  static_cast<void>(::mallopt(M_MMAP_THRESHOLD, kMmapThresholdBytes));
  static_cast<void>(::mallopt(M_TRIM_THRESHOLD, kTrimThresholdBytes));
}

}  // namespace cru
