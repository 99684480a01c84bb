#include "downstairs/admin.h"

#include <fmt/format.h>

#include <algorithm>

#include "common/hash.h"
#include "common/progress.h"
#include "common/units.h"

namespace cru::downstairs {

namespace {
// Import and export move this much at a time (bounded memory for any file size).
constexpr uint64_t kCopyChunkBytes = 8 * kMiB;

bool all_zero(std::span<const std::byte> d) {
  return std::all_of(d.begin(), d.end(), [](std::byte b) { return b == std::byte{0}; });
}
}  // namespace

Result<ImportStats> import_file(Region& region, const std::string& file) {
  if (region.def().encrypted)
    return fail(ErrorCode::kUnsupported,
                "cannot import into an encrypted region: the downstairs never holds the key "
                "(import through crucible-fuse instead)");
  FileSystem& fs = posix_fs();
  CRU_TRY_ASSIGN(auto in, fs.open(file, OpenMode::kReadOnly));
  CRU_TRY_ASSIGN(const uint64_t size, in->size());
  ImportStats stats;
  stats.file_bytes = size;
  const uint32_t bs = region.def().block_size;
  const uint64_t blocks = (size + bs - 1) / bs;
  const uint64_t extent_blocks = region.def().extent_size;
  const uint64_t extents_needed =
      std::max<uint64_t>(1, (blocks + extent_blocks - 1) / extent_blocks);
  if (extents_needed > region.def().extent_count) {
    uint32_t before = region.def().extent_count;
    if (extents_needed > UINT32_MAX)
      return fail(ErrorCode::kInvalidArgument, fmt::format("{} is too large to import", file));
    CRU_TRY(region.extend(static_cast<uint32_t>(extents_needed)));
    stats.extents_created = region.def().extent_count - before;
  }
  Progress progress("importing " + file, size);
  ByteBuffer buf(kCopyChunkBytes);
  std::vector<proto::BlockContext> contexts;
  for (uint64_t offset = 0; offset < size; offset += kCopyChunkBytes) {
    uint64_t n = std::min(kCopyChunkBytes, size - offset);
    uint64_t padded = (n + bs - 1) / bs * bs;
    CRU_TRY(in->read_at(offset, buf.span().first(n)));
    std::fill(buf.data() + n, buf.data() + padded, std::byte{0});  // zero-pad the last block
    // Write runs of non-zero blocks; zero blocks stay unwritten and read as zeros.
    uint64_t first_block = offset / bs;
    uint64_t count = padded / bs;
    for (uint64_t i = 0; i < count;) {
      auto block = buf.span().subspan(i * bs, bs);
      if (all_zero(block)) {
        ++stats.zero_blocks;
        ++i;
        continue;
      }
      uint64_t j = i;
      contexts.clear();
      while (j < count && !all_zero(buf.span().subspan(j * bs, bs))) {
        contexts.push_back({integrity_hash(buf.span().subspan(j * bs, bs)), std::nullopt});
        ++j;
      }
      CRU_TRY(region.write(BlockIndex{first_block + i}, bs, contexts,
                           buf.span().subspan(i * bs, (j - i) * bs), false));
      stats.blocks_copied += j - i;
      i = j;
    }
    progress.update(offset + n);
  }
  progress.finish();
  CRU_TRY(region.flush(FlushNumber{1}, Generation{0}, std::nullopt));
  return stats;
}

Result<uint64_t> export_file(Region& region, const std::string& file, uint64_t skip,
                             std::optional<uint64_t> count) {
  const uint32_t bs = region.def().block_size;
  const uint64_t total = region.def().total_blocks();
  if (skip > total)
    return fail(ErrorCode::kOffsetInvalid,
                fmt::format("--skip {} is beyond the region's {} blocks", skip, total));
  uint64_t n = count.value_or(total - skip);
  if (n > total - skip)
    return fail(
        ErrorCode::kOffsetInvalid,
        fmt::format("--skip {} --count {} reaches past the region's {} blocks", skip, n, total));
  FileSystem& fs = posix_fs();
  CRU_TRY(fs.remove(file));
  CRU_TRY_ASSIGN(auto out, fs.open(file, OpenMode::kCreateExclusive));
  const uint64_t chunk_blocks = kCopyChunkBytes / bs;
  Progress progress("exporting to " + file, n * bs);
  for (uint64_t done = 0; done < n;) {
    uint64_t m = std::min(chunk_blocks, n - done);
    CRU_TRY_ASSIGN(auto r, region.read(BlockIndex{skip + done}, m));
    CRU_TRY(out->write_at(done * bs, r.data.span()));
    done += m;
    progress.update(done * bs);
  }
  progress.finish();
  CRU_TRY(out->sync());
  return n;
}

Result<DumpReport> dump(const std::vector<Region*>& regions, const std::vector<std::string>& names,
                        const DumpOptions& options) {
  CRU_ASSERT(!regions.empty() && regions.size() == names.size());
  DumpReport report;
  const auto& def0 = regions[0]->def();
  for (size_t i = 1; i < regions.size(); ++i) {
    const auto& d = regions[i]->def();
    if (d.block_size != def0.block_size || d.extent_size != def0.extent_size ||
        d.extent_count != def0.extent_count)
      return fail(ErrorCode::kInvalidArgument,
                  fmt::format("{} has a different geometry from {} ({}x{}x{} vs {}x{}x{})",
                              names[i], names[0], d.extent_count, d.extent_size, d.block_size,
                              def0.extent_count, def0.extent_size, def0.block_size));
  }
  std::string& t = report.text;
  for (size_t i = 0; i < regions.size(); ++i)
    t += fmt::format("region {}: {} ({} extents x {} blocks x {} bytes, uuid {})\n", i, names[i],
                     regions[i]->def().extent_count, regions[i]->def().extent_size,
                     regions[i]->def().block_size, regions[i]->def().uuid);
  if (options.block) {
    uint64_t b = *options.block;
    if (b >= def0.total_blocks())
      return fail(
          ErrorCode::kOffsetInvalid,
          fmt::format("--block {} is beyond the region's {} blocks", b, def0.total_blocks()));
    ExtentId e{static_cast<uint32_t>(b / def0.extent_size)};
    t += fmt::format("block {} (extent {}, block {} in it):\n", b, e, b % def0.extent_size);
    std::optional<uint64_t> first_hash;
    for (size_t i = 0; i < regions.size(); ++i) {
      CRU_TRY_ASSIGN(auto r, regions[i]->inspect(e, b % def0.extent_size, 1));
      const BlockReport& br = r[0];
      t +=
          fmt::format("  region {}: data xxh64 {:016x}, active slot {}, data {}\n", i, br.data_hash,
                      br.active < 0 ? std::string("none") : std::to_string(br.active),
                      br.data_matches ? "matches" : "DOES NOT MATCH");
      for (int s = 0; s < 2; ++s) {
        const Slot& sl = br.slots[s];
        if (sl.empty()) {
          t += fmt::format("    slot {}: empty\n", s);
          continue;
        }
        t += fmt::format("    slot {}: seq {} hash {:016x}{}{}\n", s, sl.seq, sl.hash,
                         sl.discarded ? " discarded" : "", sl.encryption ? " encrypted" : "");
      }
      if (first_hash && *first_hash != br.data_hash) report.differ = true;
      first_hash = br.data_hash;
    }
    if (regions.size() > 1)
      t += report.differ ? "the block's data DIFFERS\n" : "the block's data is the same\n";
    return report;
  }
  // Per-extent metadata table.
  t += fmt::format("{:>6}", "EXT");
  for (size_t i = 0; i < regions.size(); ++i)
    t += fmt::format(" | {:>8} {:>8} {:>5}", fmt::format("GEN{}", i), fmt::format("FL{}", i),
                     fmt::format("D{}", i));
  t += "\n";
  std::vector<std::vector<proto::ExtentVersion>> versions;
  versions.reserve(regions.size());
  for (auto* r : regions) versions.push_back(r->versions());
  uint32_t first = options.extent.value_or(0);
  uint32_t last = options.extent ? *options.extent + 1 : def0.extent_count;
  if (first >= def0.extent_count)
    return fail(
        ErrorCode::kInvalidExtent,
        fmt::format("--extent {} does not exist (the region has {})", first, def0.extent_count));
  uint64_t max_gen = 0, max_flush = 0, differing = 0;
  for (uint32_t e = first; e < last; ++e) {
    bool diff = false;
    for (size_t i = 1; i < regions.size(); ++i) diff |= versions[i][e] != versions[0][e];
    for (size_t i = 0; i < regions.size(); ++i) {
      max_gen = std::max(max_gen, versions[i][e].generation.value);
      max_flush = std::max(max_flush, versions[i][e].flush.value);
    }
    if (diff) ++differing;
    if (options.only_diffs && !diff) continue;
    t += fmt::format("{:>6}", e);
    for (size_t i = 0; i < regions.size(); ++i) {
      const auto& v = versions[i][e];
      // DMG: damaged (the file could not be opened, or blocks match none of their contexts).
      t += fmt::format(" | {:>8} {:>8} {:>5}", v.generation, v.flush,
                       v.damaged ? "DMG"
                       : v.dirty ? "T"
                                 : "F");
    }
    t += diff ? "  <-- differs\n" : "\n";
  }
  t += fmt::format("Max gen: {}, Max flush: {}\n", max_gen, max_flush);
  if (regions.size() > 1) {
    t += differing ? fmt::format("{} extents differ\n", differing) : "all extents match\n";
    report.differ = differing > 0;
  }
  return report;
}

Result<VerifyReport> verify(Region& region) {
  VerifyReport report;
  const auto& def = region.def();
  // Inspect a bounded number of blocks at a time (the extent reads them in chunks).
  const uint64_t step =
      std::max<uint64_t>(1, std::min<uint64_t>(def.extent_size, 8 * kMiB / def.block_size));
  Progress progress("verifying " + region.dir(), def.total_bytes());
  for (uint32_t e = 0; e < def.extent_count; ++e) {
    if (!region.is_open(ExtentId{e})) {
      // Opened read-only for verify, a closed extent is one whose file could not be opened.
      ++report.damaged_extents;
      report.text +=
          fmt::format("extent {}: damaged: {}\n", e, region.damage(ExtentId{e}).value_or("closed"));
      continue;
    }
    for (uint64_t first = 0; first < def.extent_size; first += step) {
      uint64_t n = std::min(step, def.extent_size - first);
      CRU_TRY_ASSIGN(auto blocks, region.inspect(ExtentId{e}, first, n));
      for (uint64_t i = 0; i < n; ++i) {
        const BlockReport& b = blocks[i];
        ++report.blocks;
        if (b.active >= 0 && !b.slots[b.active].discarded) ++report.written;
        if (!b.data_matches) {
          ++report.mismatches;
          uint64_t abs = static_cast<uint64_t>(e) * def.extent_size + first + i;
          report.text +=
              b.active < 0
                  ? fmt::format("block {} (extent {}): unwritten but its data is not zeros\n", abs,
                                e)
                  : fmt::format(
                        "block {} (extent {}): data xxh64 {:016x} does not match its context "
                        "hash {:016x}\n",
                        abs, e, b.data_hash, b.slots[b.active].hash);
        }
      }
      progress.update((static_cast<uint64_t>(e) * def.extent_size + first + n) * def.block_size);
    }
  }
  progress.finish();
  if (report.damaged_extents > 0)
    report.text += fmt::format("{} of {} extents are DAMAGED (their files cannot be opened)\n",
                               report.damaged_extents, def.extent_count);
  report.text +=
      report.mismatches == 0
          ? fmt::format("verified {} blocks ({} written) in {} extents: all match\n", report.blocks,
                        report.written, def.extent_count - report.damaged_extents)
          : fmt::format("verified {} blocks: {} DO NOT MATCH their contexts\n", report.blocks,
                        report.mismatches);
  return report;
}

}  // namespace cru::downstairs
