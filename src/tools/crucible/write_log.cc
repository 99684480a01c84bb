#include "tools/crucible/write_log.h"

#include <fmt/format.h>

#include <cstring>
#include <fstream>

#include "common/assert.h"
#include "common/hash.h"

namespace cru::tools {

namespace {
constexpr char kMagic[8] = {'C', 'R', 'U', 'W', 'L', 'O', 'G', '1'};
// A log of more blocks than this is not ours (a 64 TiB volume of 512-byte blocks).
constexpr uint64_t kMaxBlocks = 1ull << 37;
}  // namespace

WriteLog::WriteLog(uint32_t block_size, uint64_t blocks, uint64_t seed)
    : block_size_(block_size), seed_(seed), current_(blocks, 0), durable_(blocks, 0) {}

void WriteLog::fill(uint64_t block, uint32_t count, std::span<std::byte> out) const {
  CRU_ASSERT(out.size() == block_size_);
  // 8 bytes at a time from XXH64 over (seed, block, count, word): cheap and never equal
  // for two different (block, count) pairs in practice; the first word carries the
  // block and count in clear to make a wrong block easy to diagnose.
  uint64_t head[2] = {block, count};
  std::memcpy(out.data(), head, std::min<size_t>(sizeof head, out.size()));
  for (size_t off = sizeof head; off < out.size(); off += 8) {
    uint64_t key[4] = {seed_, block, count, off};
    uint64_t v = integrity_hash(std::as_bytes(std::span(key)));
    std::memcpy(out.data() + off, &v, std::min<size_t>(8, out.size() - off));
  }
}

void WriteLog::write(uint64_t first, uint64_t count, std::span<std::byte> out) {
  CRU_ASSERT(first + count <= current_.size() && out.size() == count * block_size_);
  for (uint64_t i = 0; i < count; ++i)
    fill(first + i, ++current_[first + i], out.subspan(i * block_size_, block_size_));
}

void WriteLog::flushed() { durable_ = current_; }

uint64_t WriteLog::written_blocks() const {
  uint64_t n = 0;
  for (uint32_t c : current_) n += c > 0;
  return n;
}

Status WriteLog::check(uint64_t first, std::span<const std::byte> data) const {
  CRU_ASSERT(data.size() % block_size_ == 0);
  std::vector<std::byte> expect(block_size_);
  for (uint64_t i = 0; i < data.size() / block_size_; ++i) {
    uint64_t b = first + i;
    if (current_[b] == 0) continue;
    auto got = data.subspan(i * block_size_, block_size_);
    // Any count between the last flushed write and the last issued one is legal (a
    // crash may lose unflushed writes); 0 means the block may still be unwritten.
    for (uint32_t k = durable_[b];; ++k) {
      if (k == 0) {
        std::fill(expect.begin(), expect.end(), std::byte{0});
      } else {
        fill(b, k, expect);
      }
      if (std::memcmp(got.data(), expect.data(), block_size_) == 0) break;
      if (k == current_[b]) {
        uint64_t head[2] = {0, 0};
        std::memcpy(head, got.data(), std::min<size_t>(sizeof head, got.size()));
        return fail(
            ErrorCode::kCorrupt,
            fmt::format("block {}: expected write {}..{} of it, found data of block {} write {}", b,
                        durable_[b], current_[b], head[0], head[1]));
      }
    }
  }
  return {};
}

Status WriteLog::save(const std::string& path) const {
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) return fail(ErrorCode::kIo, fmt::format("cannot write {}", tmp));
    uint64_t header[3] = {block_size_, current_.size(), seed_};
    f.write(kMagic, sizeof kMagic);
    f.write(reinterpret_cast<const char*>(header), sizeof header);
    f.write(reinterpret_cast<const char*>(current_.data()),
            static_cast<std::streamsize>(current_.size() * 4));
    f.write(reinterpret_cast<const char*>(durable_.data()),
            static_cast<std::streamsize>(durable_.size() * 4));
    if (!f) return fail(ErrorCode::kIo, fmt::format("writing {} failed", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    return fail(ErrorCode::kIo, fmt::format("cannot rename {}", tmp));
  return {};
}

Result<WriteLog> WriteLog::load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return fail(ErrorCode::kNotFound, fmt::format("cannot open write log {}", path));
  char magic[8];
  uint64_t header[3];
  f.read(magic, sizeof magic);
  f.read(reinterpret_cast<char*>(header), sizeof header);
  if (!f || std::memcmp(magic, kMagic, sizeof magic) != 0)
    return fail(ErrorCode::kCorrupt, fmt::format("{} is not a write log", path));
  if (header[0] == 0 || header[0] > 65536 || header[1] > kMaxBlocks)
    return fail(ErrorCode::kCorrupt, fmt::format("{}: implausible geometry", path));
  WriteLog log(static_cast<uint32_t>(header[0]), header[1], header[2]);
  f.read(reinterpret_cast<char*>(log.current_.data()), static_cast<std::streamsize>(header[1] * 4));
  f.read(reinterpret_cast<char*>(log.durable_.data()), static_cast<std::streamsize>(header[1] * 4));
  if (!f) return fail(ErrorCode::kCorrupt, fmt::format("{} is truncated", path));
  return log;
}

}  // namespace cru::tools
