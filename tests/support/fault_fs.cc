#include "support/fault_fs.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <unordered_set>

#include "common/assert.h"

namespace cru::test {

using downstairs::File;
using downstairs::OpenMode;
using downstairs::parent_dir;

namespace {

// "a//b/" -> "a/b": every path is compared as a string, so spell each one way.
std::string normalize(const std::string& path) {
  std::string out;
  out.reserve(path.size());
  for (char c : path) {
    if (c == '/' && !out.empty() && out.back() == '/') continue;
    out += c;
  }
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  return out;
}

std::string base_name(const std::string& path) {
  auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string_view op_name(FaultFs::Op op) {
  switch (op) {
    case FaultFs::Op::kRead:
      return "read";
    case FaultFs::Op::kWrite:
      return "write";
    case FaultFs::Op::kSync:
      return "sync";
    case FaultFs::Op::kPunch:
      return "punch hole";
    case FaultFs::Op::kTruncate:
      return "truncate";
    case FaultFs::Op::kOpen:
      return "open";
    case FaultFs::Op::kRename:
      return "rename";
    case FaultFs::Op::kRemove:
      return "remove";
    case FaultFs::Op::kSyncDir:
      return "sync directory";
  }
  return "?";
}

bool mutating(FaultFs::Op op) { return op != FaultFs::Op::kRead && op != FaultFs::Op::kOpen; }

}  // namespace

// ---- files -------------------------------------------------------------------------------

class FaultFs::FaultFile final : public File {
 public:
  FaultFile(FaultFs& fs, InodePtr inode, std::string path, bool writable)
      : fs_(fs),
        inode_(std::move(inode)),
        path_(std::move(path)),
        writable_(writable),
        epoch_(fs.epoch_) {}

  Status read_at(uint64_t offset, std::span<std::byte> out) override {
    CRU_TRY(alive());
    CRU_TRY(fs_.check(Op::kRead, path_));
    const auto& bytes = inode_->current;
    if (offset > bytes.size() || out.size() > bytes.size() - offset)
      return fail(ErrorCode::kIo, fmt::format("read {}: {} bytes at {} run past the end ({} bytes)",
                                              path_, out.size(), offset, bytes.size()));
    if (!out.empty()) std::memcpy(out.data(), bytes.data() + offset, out.size());
    return {};
  }

  Status write_at(uint64_t offset, std::span<const std::byte> data) override {
    CRU_TRY(writable());
    CRU_TRY(fs_.check(Op::kWrite, path_));
    if (data.empty()) return {};
    LogOp op{LogOp::Kind::kWrite, offset, data.size(),
             std::vector<std::byte>(data.begin(), data.end())};
    apply_to(inode_->current, op, op.offset, op.len);
    inode_->log.push_back(std::move(op));
    return {};
  }

  Status sync() override {
    CRU_TRY(alive());
    CRU_TRY(fs_.check(Op::kSync, path_));
    // fdatasync covers every write to the file, through any descriptor.
    inode_->durable = inode_->current;
    inode_->log.clear();
    return {};
  }

  // Either space mode: the same contents (the model has no allocation).
  Status zero_range(uint64_t offset, uint64_t len, downstairs::Space) override {
    CRU_TRY(writable());
    CRU_TRY(fs_.check(Op::kPunch, path_));
    if (len == 0) return {};
    LogOp op{LogOp::Kind::kPunch, offset, len, {}};
    apply_to(inode_->current, op, op.offset, op.len);
    inode_->log.push_back(std::move(op));
    return {};
  }

  // Allocation changes no contents; extending the file is a truncate.
  Status reserve(uint64_t bytes) override {
    CRU_TRY(writable());
    CRU_TRY(fs_.check(Op::kTruncate, path_));
    if (bytes > inode_->current.size()) log_truncate(bytes);
    return {};
  }

  Result<uint64_t> size() override {
    CRU_TRY(alive());
    if (fs_.power_cut_)
      return fail(ErrorCode::kIo, fmt::format("stat {}: injected power cut", path_));
    return inode_->current.size();
  }

  Status truncate(uint64_t size) override {
    CRU_TRY(writable());
    CRU_TRY(fs_.check(Op::kTruncate, path_));
    log_truncate(size);
    return {};
  }

 private:
  void log_truncate(uint64_t size) {
    LogOp op{LogOp::Kind::kTruncate, size, 0, {}};
    apply_to(inode_->current, op, 0, 0);
    inode_->log.push_back(std::move(op));
  }
  Status alive() const {
    if (epoch_ != fs_.epoch_)
      return fail(ErrorCode::kIo, fmt::format("{}: file handle opened before a crash", path_));
    return {};
  }
  Status writable() const {
    CRU_TRY(alive());
    if (!writable_) return fail(ErrorCode::kIo, fmt::format("{} is open read-only", path_));
    return {};
  }

  FaultFs& fs_;
  InodePtr inode_;
  std::string path_;
  bool writable_;
  uint64_t epoch_;
};

void FaultFs::apply_to(std::vector<std::byte>& bytes, const LogOp& op, uint64_t offset,
                       uint64_t len) {
  switch (op.kind) {
    case LogOp::Kind::kWrite:
      if (bytes.size() < offset + len) bytes.resize(offset + len);
      std::memcpy(bytes.data() + offset, op.data.data() + (offset - op.offset), len);
      break;
    case LogOp::Kind::kPunch:
      // KEEP_SIZE: a hole past the end changes nothing.
      if (offset < bytes.size()) {
        uint64_t end = std::min<uint64_t>(bytes.size(), offset + len);
        std::fill(bytes.begin() + static_cast<ptrdiff_t>(offset),
                  bytes.begin() + static_cast<ptrdiff_t>(end), std::byte{0});
      }
      break;
    case LogOp::Kind::kTruncate:
      bytes.resize(op.offset);
      break;
  }
}

// ---- the file system ---------------------------------------------------------------------

FaultFs::FaultFs(size_t atomic_unit, uint64_t fault_seed)
    : atomic_unit_(atomic_unit), fault_rng_(fault_seed) {
  CRU_ASSERT(atomic_unit > 0);
}

FaultFs::~FaultFs() = default;

Status FaultFs::check(Op op, const std::string& path) {
  auto& f = faults_[static_cast<size_t>(op)];
  ++stats_.calls[static_cast<size_t>(op)];
  auto injected = [&](std::string_view what) {
    ++stats_.injected;
    return fail(ErrorCode::kIo, fmt::format("{} {}: {}", op_name(op), path, what));
  };
  if (power_cut_) return injected("injected power cut");
  if (f.fail > 0) {
    if (f.after > 0) {
      --f.after;
    } else {
      --f.fail;
      return injected("injected error");
    }
  }
  if (f.probability > 0 && std::uniform_real_distribution<double>(0, 1)(fault_rng_) < f.probability)
    return injected("injected error");
  if (mutating(op) && power_cut_after_) {
    if (*power_cut_after_ == 0) {
      power_cut_ = true;
      power_cut_after_.reset();
      return injected("injected power cut");
    }
    --*power_cut_after_;
  }
  return {};
}

bool FaultFs::dir_exists(const std::string& dir) const {
  return dir == "." || dir == "/" || dirs_.contains(dir);
}

void FaultFs::log_ns(NsOp op) {
  op.seq = ns_seq_++;
  ns_log_[parent_dir(op.to.empty() ? op.from : op.to)].push_back(std::move(op));
}

void FaultFs::apply_ns(std::map<std::string, InodePtr>& names, const NsOp& op) {
  if (!op.from.empty()) {
    auto it = names.find(op.from);
    if (it != names.end() && it->second == op.inode) names.erase(it);
  }
  if (!op.to.empty()) names[op.to] = op.inode;
}

Result<std::unique_ptr<File>> FaultFs::open(const std::string& raw_path, OpenMode mode) {
  std::string path = normalize(raw_path);
  const bool create = mode == OpenMode::kCreateExclusive;
  // An exclusive create changes the namespace; counted as a mutation for power cuts.
  CRU_TRY(check(Op::kOpen, path));
  if (create && power_cut_after_) {
    if (*power_cut_after_ == 0) {
      power_cut_ = true;
      power_cut_after_.reset();
      ++stats_.injected;
      return fail(ErrorCode::kIo, fmt::format("open {}: injected power cut", path));
    }
    --*power_cut_after_;
  }
  auto it = names_.find(path);
  if (create) {
    if (it != names_.end() || dirs_.contains(path))
      return fail(ErrorCode::kAlreadyExists, fmt::format("{} already exists", path));
    if (!dir_exists(parent_dir(path)))
      return fail(ErrorCode::kNotFound,
                  fmt::format("{}: directory {} does not exist", path, parent_dir(path)));
    auto inode = std::make_shared<Inode>();
    names_[path] = inode;
    log_ns(NsOp{0, "", path, inode});
    return std::unique_ptr<File>(new FaultFile(*this, std::move(inode), path, true));
  }
  if (it == names_.end()) return fail(ErrorCode::kNotFound, fmt::format("{} does not exist", path));
  return std::unique_ptr<File>(
      new FaultFile(*this, it->second, path, mode == OpenMode::kReadWrite));
}

Result<bool> FaultFs::exists(const std::string& raw_path) {
  std::string path = normalize(raw_path);
  if (power_cut_) return fail(ErrorCode::kIo, fmt::format("stat {}: injected power cut", path));
  return names_.contains(path) || dir_exists(path);
}

Status FaultFs::rename(const std::string& raw_from, const std::string& raw_to) {
  std::string from = normalize(raw_from), to = normalize(raw_to);
  CRU_TRY(check(Op::kRename, from));
  if (dirs_.contains(from)) return rename_dir(from, to);
  auto it = names_.find(from);
  if (it == names_.end())
    return fail(ErrorCode::kIo, fmt::format("rename {}: does not exist", from));
  if (dirs_.contains(to))
    return fail(ErrorCode::kIo, fmt::format("rename to {}: is a directory", to));
  if (!dir_exists(parent_dir(to)))
    return fail(ErrorCode::kIo,
                fmt::format("rename to {}: directory {} does not exist", to, parent_dir(to)));
  if (from == to) return {};
  InodePtr inode = it->second;
  names_.erase(it);
  names_[to] = inode;
  log_ns(NsOp{0, from, to, std::move(inode)});
  return {};
}

Status FaultFs::rename_dir(const std::string& from, const std::string& to) {
  if (names_.contains(to) || dirs_.contains(to))
    return fail(ErrorCode::kIo, fmt::format("rename {} to {}: the target exists", from, to));
  if (!dir_exists(parent_dir(to)))
    return fail(ErrorCode::kIo,
                fmt::format("rename to {}: directory {} does not exist", to, parent_dir(to)));
  const std::string prefix = from + "/";
  auto under = [&](const std::string& p) { return p == from || p.starts_with(prefix); };
  auto moved = [&](const std::string& p) { return to + p.substr(from.size()); };
  for (const auto& [dir, ops] : ns_log_)
    if (under(dir) && !ops.empty())
      return fail(ErrorCode::kIo,
                  fmt::format("rename {}: FaultFs models directory renames only once every "
                              "entry under it is synced ({} is not)",
                              from, dir));
  for (auto* names : {&names_, &durable_}) {
    std::map<std::string, InodePtr> out;
    for (auto& [p, inode] : *names) out[under(p) ? moved(p) : p] = inode;
    *names = std::move(out);
  }
  std::set<std::string> dirs;
  for (const auto& d : dirs_) dirs.insert(under(d) ? moved(d) : d);
  dirs_ = std::move(dirs);
  return {};
}

Status FaultFs::remove_dir(const std::string& raw_path) {
  std::string path = normalize(raw_path);
  CRU_TRY(check(Op::kRemove, path));
  if (!dirs_.contains(path)) return {};
  for (const auto& [name, inode] : names_)
    if (parent_dir(name) == path)
      return fail(ErrorCode::kIo, fmt::format("remove directory {}: not empty", path));
  for (const auto& d : dirs_)
    if (d != path && parent_dir(d) == path)
      return fail(ErrorCode::kIo, fmt::format("remove directory {}: not empty", path));
  // Unsynced removals of its entries must not resurrect them in a crash.
  for (const auto& [dir, ops] : ns_log_)
    if (dir == path && !ops.empty())
      return fail(ErrorCode::kIo,
                  fmt::format("remove directory {}: FaultFs needs its removals synced", path));
  dirs_.erase(path);
  return {};
}

Result<bool> FaultFs::clone_file(const std::string& raw_from, const std::string& raw_to) {
  if (!reflink_) return false;
  std::string from = normalize(raw_from), to = normalize(raw_to);
  CRU_TRY_ASSIGN(auto src, open(from, OpenMode::kReadOnly));
  CRU_TRY_ASSIGN(auto dst, open(to, OpenMode::kCreateExclusive));
  const auto bytes = names_.at(from)->current;
  CRU_TRY(dst->write_at(0, bytes));
  return true;
}

Status FaultFs::remove(const std::string& raw_path) {
  std::string path = normalize(raw_path);
  CRU_TRY(check(Op::kRemove, path));
  if (dirs_.contains(path))
    return fail(ErrorCode::kIo, fmt::format("remove {}: is a directory", path));
  auto it = names_.find(path);
  if (it == names_.end()) return {};
  InodePtr inode = it->second;
  names_.erase(it);
  log_ns(NsOp{0, path, "", std::move(inode)});
  return {};
}

Status FaultFs::make_dirs(const std::string& raw_path) {
  std::string path = normalize(raw_path);
  if (power_cut_) return fail(ErrorCode::kIo, fmt::format("mkdir {}: injected power cut", path));
  for (std::string d = path; !dir_exists(d); d = parent_dir(d)) {
    if (names_.contains(d))
      return fail(ErrorCode::kIo, fmt::format("mkdir {}: {} is a file", path, d));
    dirs_.insert(d);
  }
  return {};
}

Status FaultFs::sync_dir(const std::string& raw_path) {
  std::string path = normalize(raw_path);
  CRU_TRY(check(Op::kSyncDir, path));
  if (!dir_exists(path))
    return fail(ErrorCode::kIo, fmt::format("open directory {}: does not exist", path));
  auto it = ns_log_.find(path);
  if (it == ns_log_.end()) return {};
  for (const auto& op : it->second) apply_ns(durable_, op);
  ns_log_.erase(it);
  return {};
}

Result<std::vector<std::string>> FaultFs::list_dir(const std::string& raw_path) {
  std::string path = normalize(raw_path);
  if (power_cut_) return fail(ErrorCode::kIo, fmt::format("list {}: injected power cut", path));
  if (!dir_exists(path))
    return fail(ErrorCode::kIo, fmt::format("list {}: no such directory", path));
  std::set<std::string> names;
  for (const auto& [name, inode] : names_)
    if (parent_dir(name) == path) names.insert(base_name(name));
  for (const auto& d : dirs_)
    if (d != path && parent_dir(d) == path) names.insert(base_name(d));
  return std::vector<std::string>(names.begin(), names.end());
}

// ---- power cuts --------------------------------------------------------------------------

void FaultFs::crash(std::mt19937_64& rng) { do_crash(CrashMode::kRandom, &rng); }
void FaultFs::crash_drop_all() { do_crash(CrashMode::kDropAll, nullptr); }
void FaultFs::crash_keep_all() { do_crash(CrashMode::kKeepAll, nullptr); }

void FaultFs::do_crash(CrashMode mode, std::mt19937_64* rng) {
  // Namespace: each directory keeps a prefix of its unsynced operations; replayed in
  // their original order onto the durable view.
  std::vector<NsOp> kept;
  for (auto& [dir, ops] : ns_log_) {
    size_t n = ops.size();
    if (mode == CrashMode::kDropAll) n = 0;
    if (mode == CrashMode::kRandom) n = std::uniform_int_distribution<size_t>(0, ops.size())(*rng);
    kept.insert(kept.end(), ops.begin(), ops.begin() + static_cast<ptrdiff_t>(n));
  }
  std::sort(kept.begin(), kept.end(), [](const NsOp& a, const NsOp& b) { return a.seq < b.seq; });
  for (const auto& op : kept) apply_ns(durable_, op);
  ns_log_.clear();
  names_ = durable_;

  // Data: per file, a keep probability (none, all, or anything between) so that runs
  // see both the extremes and every mixture.
  std::unordered_set<Inode*> done;
  for (auto& [path, inode] : names_) {
    if (!done.insert(inode.get()).second) continue;
    double keep = mode == CrashMode::kKeepAll ? 1.0 : 0.0;
    if (mode == CrashMode::kRandom) {
      switch (std::uniform_int_distribution<int>(0, 3)(*rng)) {
        case 0:
          keep = 0;
          break;
        case 1:
          keep = 1;
          break;
        default:
          keep = std::uniform_real_distribution<double>(0, 1)(*rng);
          break;
      }
    }
    auto keep_piece = [&] {
      if (keep <= 0) return false;
      if (keep >= 1) return true;
      return std::uniform_real_distribution<double>(0, 1)(*rng) < keep;
    };
    std::vector<std::byte> bytes = std::move(inode->durable);
    for (const auto& op : inode->log) {
      if (op.kind == LogOp::Kind::kTruncate) {
        if (keep_piece()) apply_to(bytes, op, 0, 0);
        continue;
      }
      // Torn at atomic-unit boundaries of the file: each piece lands or not.
      uint64_t end = op.offset + op.len;
      for (uint64_t at = op.offset; at < end;) {
        uint64_t piece_end = std::min<uint64_t>(end, (at / atomic_unit_ + 1) * atomic_unit_);
        if (keep_piece()) apply_to(bytes, op, at, piece_end - at);
        at = piece_end;
      }
    }
    inode->current = bytes;
    inode->durable = std::move(bytes);
    inode->log.clear();
  }
  ++epoch_;
  ++stats_.crashes;
  clear_faults();
}

// ---- fault injection ---------------------------------------------------------------------

void FaultFs::fail_next(Op op, int n, uint64_t after) {
  auto& f = faults_[static_cast<size_t>(op)];
  f.fail = n;
  f.after = after;
}

void FaultFs::set_failure_probability(Op op, double probability) {
  faults_[static_cast<size_t>(op)].probability = probability;
}

void FaultFs::cut_power_after(uint64_t mutating_calls) { power_cut_after_ = mutating_calls; }

void FaultFs::clear_faults() {
  faults_ = {};
  power_cut_after_.reset();
  power_cut_ = false;
}

// ---- inspection --------------------------------------------------------------------------

std::optional<std::vector<std::byte>> FaultFs::contents(const std::string& path) const {
  auto it = names_.find(normalize(path));
  if (it == names_.end()) return std::nullopt;
  return it->second->current;
}

std::optional<std::vector<std::byte>> FaultFs::durable_contents(const std::string& path) const {
  auto it = durable_.find(normalize(path));
  if (it == durable_.end()) return std::nullopt;
  return it->second->durable;
}

bool FaultFs::has_unsynced_data(const std::string& path) const {
  auto it = names_.find(normalize(path));
  return it != names_.end() && !it->second->log.empty();
}

std::vector<std::string> FaultFs::files() const {
  std::vector<std::string> out;
  for (const auto& [name, inode] : names_) out.push_back(name);
  return out;
}

void FaultFs::corrupt(const std::string& path, uint64_t offset, uint8_t xor_mask) {
  auto it = names_.find(normalize(path));
  CRU_ASSERT(it != names_.end(), "corrupt(): no such file");
  for (auto* bytes : {&it->second->current, &it->second->durable})
    if (offset < bytes->size()) (*bytes)[offset] ^= std::byte{xor_mask};
}

}  // namespace cru::test
