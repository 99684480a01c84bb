#include "fuse/scrub_state.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/units.h"

namespace cru::fuse {

namespace {
// The record is a few hundred bytes; anything much larger is not one.
constexpr uint64_t kMaxStateBytes = 64 * kKiB;
constexpr int kStateVersion = 1;

Status write_all(int fd, const std::string& text, const std::string& path) {
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      return fail(ErrorCode::kIo, fmt::format("{}: write: {}", path, std::strerror(errno)));
    done += static_cast<size_t>(n);
  }
  return {};
}

Status fsync_path(const std::string& path, int flags) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return fail(ErrorCode::kIo, fmt::format("{}: open: {}", path, std::strerror(errno)));
  const int r = ::fsync(fd);
  const int e = errno;
  ::close(fd);
  if (r != 0) return fail(ErrorCode::kIo, fmt::format("{}: fsync: {}", path, std::strerror(e)));
  return {};
}
}  // namespace

bool same_volume(const VolumeIdentity& recorded, const VolumeIdentity& now) {
  if (recorded.empty() || recorded.size() > now.size()) return false;
  for (size_t i = 0; i < recorded.size(); ++i) {
    bool shared = false;
    for (const auto& u : recorded[i])
      shared = shared || std::find(now[i].begin(), now[i].end(), u) != now[i].end();
    if (!shared) return false;
  }
  return true;
}

std::string scrub_state_json(const ScrubState& s) {
  nlohmann::json j = {{"version", kStateVersion},   {"volume", s.volume},
                      {"parent", s.parent},         {"parent_bytes", s.parent_bytes},
                      {"block_size", s.block_size}, {"next_block", s.next_block},
                      {"complete", s.complete}};
  return j.dump(2) + "\n";
}

Result<ScrubState> parse_scrub_state(std::string_view text, std::string_view source) {
  auto bad = [&](const std::string& why) {
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("{}: not a scrub state record: {}", source, why));
  };
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  if (!j.contains("version") || !j["version"].is_number_integer() || j["version"] != kStateVersion)
    return bad(fmt::format("version is not {}", kStateVersion));
  ScrubState s;
  try {
    s.volume = j.at("volume").get<VolumeIdentity>();
    s.parent = j.at("parent").get<std::string>();
    s.parent_bytes = j.at("parent_bytes").get<uint64_t>();
    s.block_size = j.at("block_size").get<uint32_t>();
    s.next_block = j.at("next_block").get<uint64_t>();
    s.complete = j.at("complete").get<bool>();
  } catch (const nlohmann::json::exception& e) {
    return bad(e.what());
  }
  if (s.volume.empty()) return bad("volume is empty");
  if (s.block_size == 0 || s.parent_bytes % s.block_size != 0) return bad("bad block_size");
  if (s.next_block > s.parent_bytes / s.block_size) return bad("next_block is past the parent");
  if (s.complete && s.next_block != s.parent_bytes / s.block_size)
    return bad("complete, but next_block is not the parent's end");
  return s;
}

Result<std::optional<ScrubState>> load_scrub_state(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::optional<ScrubState>{};
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return fail(ErrorCode::kIo, fmt::format("{}: cannot read: {}", path, std::strerror(errno)));
  std::string text(kMaxStateBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMaxStateBytes)
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("{}: too large for a scrub state record", path));
  CRU_TRY_ASSIGN(auto s, parse_scrub_state(text, path));
  return std::optional<ScrubState>(std::move(s));
}

Status save_scrub_state(const std::string& path, const ScrubState& s) {
  // Written beside the target and renamed over it: a crash leaves the old record or the new,
  // never a torn one; the directory's fsync makes the rename itself durable.
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return fail(ErrorCode::kIo, fmt::format("{}: create: {}", tmp, std::strerror(errno)));
  Status w = write_all(fd, scrub_state_json(s), tmp);
  if (w && ::fsync(fd) != 0)
    w = fail(ErrorCode::kIo, fmt::format("{}: fsync: {}", tmp, std::strerror(errno)));
  ::close(fd);
  if (!w) return w;
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    return fail(ErrorCode::kIo,
                fmt::format("rename {} to {}: {}", tmp, path, std::strerror(errno)));
  const auto dir = std::filesystem::path(path).parent_path();
  return fsync_path(dir.empty() ? "." : dir.string(), O_RDONLY | O_DIRECTORY);
}

}  // namespace cru::fuse
