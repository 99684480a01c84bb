// The guest API: one replicated volume over three downstairs. Runs the upstairs core on
// an io thread with real TCP connections (asio, hidden behind a pimpl so users do not
// compile asio): its own, or one shared with other volumes (IoThread, for the
// sub-volumes of one volume). Every call may come from any thread. Asynchronous calls complete
// through a callback that runs on the io thread and must not block; the *_sync forms
// wait. Offsets and lengths are in blocks; data lengths must be whole blocks. Large IOs
// are split into jobs of at most kMaxJobBytes; encryption and hashing run on the
// caller's thread.
#pragma once

#include <array>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "common/bytes.h"
#include "common/ids.h"
#include "common/result.h"
#include "proto/limits.h"
#include "upstairs/block_crypto.h"
#include "upstairs/block_device.h"
#include "upstairs/status.h"

namespace cru::proto {
class TlsContext;
}  // namespace cru::proto
namespace cru::trace {
class Tracer;
}  // namespace cru::trace

namespace cru::upstairs {

// One job carries at most this much data: bounds the latency one IO adds in front of
// others and keeps admission (75 MiB per downstairs) fine-grained.
inline constexpr uint64_t kMaxJobBytes = 1 * kMiB;
// The volume splits guest IO into jobs of kMaxJobBytes (at least one block), so no job's
// data or read reply can outgrow a frame; the core refuses one that would (kIoTooLarge).
static_assert(kMaxJobBytes >= proto::kMaxBlockSize && kMaxJobBytes <= proto::kMaxIoBytes);
// Guest calls accepted but not finished; submitters beyond this wait (backpressure for
// callers that do not wait for completions themselves).
inline constexpr int kMaxOutstandingCalls = 4096;

// An io thread (an asio io_context run on one thread) that several volumes may share, so
// that all their calls and completions run on one thread. It ends when the last volume on
// it, and the last other holder, let it go.
class IoThread {
 public:
  IoThread();
  ~IoThread();
  IoThread(const IoThread&) = delete;
  IoThread& operator=(const IoThread&) = delete;

  // Runs `fn` on the io thread, after what was posted before it.
  void post(std::function<void()> fn);
  bool on_this_thread() const;

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

struct VolumeOptions {
  std::array<std::string, kClientCount> targets;
  bool read_only = false;
  std::optional<Key> key;
  Limits limits;
  // Mutual TLS to every downstairs (proto/tls.h; each target's certificate must also name
  // its host); none: plain TCP.
  std::shared_ptr<proto::TlsContext> tls;
  // The io thread to run on; none: the volume starts (and ends) its own.
  std::shared_ptr<IoThread> io_thread;
  // Spans of guest operations and their jobs (upstairs/tracing.h); none: not traced.
  std::shared_ptr<trace::Tracer> tracer;
};

class Volume : public BlockDevice {
 public:
  explicit Volume(VolumeOptions options);
  // Closes every connection (deactivate first to flush) and stops its own io thread. Not
  // from the io thread.
  ~Volume() override;
  Volume(const Volume&) = delete;
  Volume& operator=(const Volume&) = delete;

  // Connects, negotiates, reconciles if needed. nullopt generation: 1 + the highest any
  // downstairs has seen. Fails after `timeout` naming the downstairs that did not answer.
  Status activate(std::optional<Generation> generation, std::chrono::milliseconds timeout);
  // Flushes what is outstanding and disconnects.
  Status deactivate(std::chrono::milliseconds timeout);

  // Geometry, known once active.
  uint32_t block_size() const override;
  uint64_t total_blocks() const override;

  void read(BlockIndex start, uint64_t count, ReadFn done) override;
  void write(BlockIndex start, std::span<const std::byte> data, DoneFn done) override;
  void read_masked(BlockIndex start, uint64_t count, MaskedReadFn done) override;
  void write_unwritten(BlockIndex start, std::span<const std::byte> data, DoneFn done) override;
  void discard(BlockIndex start, uint64_t count, DoneFn done) override;
  void flush(DoneFn done) override;
  // A flush that also takes snapshot `name` on every downstairs (docs/volumes.md): done once
  // two hold both; kSnapshotFailed if they cannot (the flush is then durable all the same).
  void snapshot_flush(std::string name, DoneFn done);
  void replace(std::string old_target, std::string new_target, DoneFn done);

  Result<Bytes> read_sync(BlockIndex start, uint64_t count);
  Status write_sync(BlockIndex start, std::span<const std::byte> data);
  Status discard_sync(BlockIndex start, uint64_t count);
  Status flush_sync();
  Status snapshot_flush_sync(std::string name);
  Status replace_sync(std::string old_target, std::string new_target);

  // A consistent copy of the core's state, taken on the io thread.
  Snapshot snapshot() const;

  // Serves another source of work on the io thread, so that a front end (the FUSE
  // session) needs no thread of its own and no hand-off per request: `on_readable` runs on
  // the io thread whenever `fd` is readable, and must read until it would block (fd must
  // be non-blocking). The volume's calls made from it complete on the same thread. One
  // watch at a time; the fd stays the caller's (never closed here) and must outlive it.
  void watch(int fd, std::function<void()> on_readable) override;
  // Ends the watch; once it returns, on_readable is not running and will not run again.
  // Not from the io thread.
  void unwatch() override;

 private:
  struct Impl;
  // flush() and snapshot_flush(): nullopt, or the snapshot's name.
  void submit_flush(std::optional<std::string> snapshot, DoneFn done);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cru::upstairs
