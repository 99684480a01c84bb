// FaultFs: an in-memory downstairs::FileSystem for tests and the simulator. It keeps, per
// file, what reads see now, what a power cut would keep, and the writes in between, so
// crash() can simulate a power cut with POSIX (fdatasync-only) ordering; it can also fail
// chosen calls with kIo. Single-threaded: one FaultFs and its files are used from one
// thread at a time. The FaultFs must outlive every File it opened.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "downstairs/file_io.h"

namespace cru::test {

class FaultFs final : public downstairs::FileSystem {
 public:
  // Kinds of call, for fault injection and counters. Mutating calls are kWrite, kSync,
  // kPunch (zero_range), kTruncate (also reserve), kRename, kRemove, kSyncDir and opens
  // with kCreateExclusive.
  enum class Op : uint8_t {
    kRead,
    kWrite,
    kSync,
    kPunch,
    kTruncate,
    kOpen,
    kRename,
    kRemove,
    kSyncDir
  };
  static constexpr size_t kOpCount = 9;

  struct Stats {
    std::array<uint64_t, kOpCount> calls{};  // every call, failed ones included
    uint64_t injected = 0;                   // calls failed on purpose
    uint64_t crashes = 0;
    uint64_t count(Op op) const { return calls[static_cast<size_t>(op)]; }
  };

  // atomic_unit: a power cut keeps or drops each aligned piece of this many bytes of an
  // unsynced write (or hole punch) independently; the rest of a piece is never torn.
  explicit FaultFs(size_t atomic_unit = 512, uint64_t fault_seed = 0);
  ~FaultFs() override;
  FaultFs(const FaultFs&) = delete;
  FaultFs& operator=(const FaultFs&) = delete;

  // ---- downstairs::FileSystem ------------------------------------------------------
  // Directories exist once make_dirs() names them (and are durable at once); "." and
  // "/" always exist. Creations, renames and removals show at once and become durable
  // when sync_dir() is called on the parent directory of the name they bind (for a
  // rename: the destination's directory). remove() of a missing file succeeds, as
  // posix_fs's does. Renaming a directory (its entries all synced: anything else fails)
  // and removing an empty one are durable at once, like creating one.
  // clone_file() shares nothing (it copies what reads see now, unsynced until synced) and
  // is supported only after set_reflink(true); otherwise it answers false.
  Result<std::unique_ptr<downstairs::File>> open(const std::string& path,
                                                 downstairs::OpenMode mode) override;
  Result<bool> exists(const std::string& path) override;
  Status rename(const std::string& from, const std::string& to) override;
  Status remove(const std::string& path) override;
  Status make_dirs(const std::string& path) override;
  Status sync_dir(const std::string& path) override;
  Result<std::vector<std::string>> list_dir(const std::string& path) override;
  Status remove_dir(const std::string& path) override;
  Result<bool> clone_file(const std::string& from, const std::string& to) override;
  void set_reflink(bool supported) { reflink_ = supported; }

  // ---- power cuts ------------------------------------------------------------------
  // Simulates a power cut and reboot. Each file's new contents are its durable contents
  // plus a random subset of its unsynced writes, punches and truncates applied in order,
  // each write and punch torn at atomic_unit boundaries with each piece kept or dropped
  // independently; each directory keeps a random prefix of its unsynced namespace
  // operations. Afterwards everything is durable, the logs are empty, every File opened
  // before is dead (its calls fail with kIo) and injected faults are cleared.
  void crash(std::mt19937_64& rng);
  // Deterministic extremes: a power cut that keeps no unsynced change, or all of them.
  void crash_drop_all();
  void crash_keep_all();

  // ---- fault injection (each failure is kIo with a message containing "injected") ----
  // The n calls of kind op after the next `after` ones fail.
  void fail_next(Op op, int n = 1, uint64_t after = 0);
  // Each call of kind op fails with this probability (from a generator seeded by the
  // constructor's fault_seed).
  void set_failure_probability(Op op, double probability);
  // After this many more successful mutating calls, every call (reads included) fails
  // until crash(): the power went out in the middle of whatever was running.
  void cut_power_after(uint64_t mutating_calls);
  bool power_cut() const { return power_cut_; }
  void clear_faults();

  // ---- inspection (not counted, never fails) ---------------------------------------
  const Stats& stats() const { return stats_; }
  uint64_t syncs() const { return stats_.count(Op::kSync); }
  size_t atomic_unit() const { return atomic_unit_; }
  // What a read sees now / what a crash_drop_all() would keep; nullopt if no such file.
  std::optional<std::vector<std::byte>> contents(const std::string& path) const;
  std::optional<std::vector<std::byte>> durable_contents(const std::string& path) const;
  // True if the file has writes, punches or truncates not yet covered by a sync.
  bool has_unsynced_data(const std::string& path) const;
  // Every file path in the current view, sorted.
  std::vector<std::string> files() const;
  // Flips bits of a stored byte (current and durable views): media corruption.
  void corrupt(const std::string& path, uint64_t offset, uint8_t xor_mask);

 private:
  struct LogOp {
    enum class Kind { kWrite, kPunch, kTruncate } kind;
    uint64_t offset = 0;  // kTruncate: the new size
    uint64_t len = 0;
    std::vector<std::byte> data;  // kWrite only
  };
  struct Inode {
    std::vector<std::byte> current;
    std::vector<std::byte> durable;
    std::vector<LogOp> log;
  };
  using InodePtr = std::shared_ptr<Inode>;
  // One unsynced namespace change: unbind `from` (if it still names inode) and bind
  // `to` to inode. Create: from empty. Remove: to empty. Rename: both.
  struct NsOp {
    uint64_t seq = 0;
    std::string from;
    std::string to;
    InodePtr inode;
  };
  class FaultFile;
  friend class FaultFile;
  enum class CrashMode { kRandom, kDropAll, kKeepAll };

  Status check(Op op, const std::string& path);
  Status rename_dir(const std::string& from, const std::string& to);
  bool dir_exists(const std::string& dir) const;
  void log_ns(NsOp op);
  static void apply_ns(std::map<std::string, InodePtr>& names, const NsOp& op);
  void do_crash(CrashMode mode, std::mt19937_64* rng);
  static void apply_to(std::vector<std::byte>& bytes, const LogOp& op, uint64_t offset,
                       uint64_t len);

  size_t atomic_unit_;
  std::mt19937_64 fault_rng_;
  uint64_t epoch_ = 0;                     // bumped by every crash; files of older epochs are dead
  std::map<std::string, InodePtr> names_;  // current view
  std::map<std::string, InodePtr> durable_;          // what survives a power cut
  std::map<std::string, std::vector<NsOp>> ns_log_;  // unsynced, per directory
  uint64_t ns_seq_ = 0;
  std::set<std::string> dirs_;
  struct Fault {
    uint64_t after = 0;
    int fail = 0;
    double probability = 0;
  };
  std::array<Fault, kOpCount> faults_{};
  std::optional<uint64_t> power_cut_after_;
  bool power_cut_ = false;
  bool reflink_ = false;
  Stats stats_;
};

}  // namespace cru::test
