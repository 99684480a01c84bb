// Process-wide memory settings for the programs that move block data.
#pragma once

namespace cru {

// IO buffers (up to a 1 MiB job plus its frame, a few at a time) are allocated and freed at
// the rate of IO. By default glibc serves allocations over 128 KiB with a fresh mmap and
// unmaps them on free, so every 1 MiB read or write paid 256 page faults and an munmap.
// Keeps them in the heap instead; the admission limits bound how much is live at once.
void keep_io_buffers_in_heap();

}  // namespace cru
