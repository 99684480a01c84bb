// The guest API: one replicated volume over three downstairs. Runs the upstairs core on
// its own io thread with real TCP connections (asio, hidden behind a pimpl so users do
// not compile asio). Every call may come from any thread. Asynchronous calls complete
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

struct VolumeOptions {
  std::array<std::string, kClientCount> targets;
  bool read_only = false;
  std::optional<Key> key;
  Limits limits;
  // Mutual TLS to every downstairs (proto/tls.h; each target's certificate must also name
  // its host); none: plain TCP.
  std::shared_ptr<proto::TlsContext> tls;
  // Spans of guest operations and their jobs (upstairs/tracing.h); none: not traced.
  std::shared_ptr<trace::Tracer> tracer;
};

class Volume {
 public:
  using DoneFn = std::function<void(Status)>;
  using ReadFn = std::function<void(Result<Bytes>)>;

  explicit Volume(VolumeOptions options);
  // Stops the io thread and closes every connection (deactivate first to flush).
  ~Volume();
  Volume(const Volume&) = delete;
  Volume& operator=(const Volume&) = delete;

  // Connects, negotiates, reconciles if needed. nullopt generation: 1 + the highest any
  // downstairs has seen. Fails after `timeout` naming the downstairs that did not answer.
  Status activate(std::optional<Generation> generation, std::chrono::milliseconds timeout);
  // Flushes what is outstanding and disconnects.
  Status deactivate(std::chrono::milliseconds timeout);

  // Geometry, known once active.
  uint32_t block_size() const;
  uint64_t total_blocks() const;
  uint64_t size_bytes() const { return total_blocks() * block_size(); }

  void read(BlockIndex start, uint64_t count, ReadFn done);
  void write(BlockIndex start, std::span<const std::byte> data, DoneFn done);
  void write_unwritten(BlockIndex start, std::span<const std::byte> data, DoneFn done);
  void discard(BlockIndex start, uint64_t count, DoneFn done);
  void flush(DoneFn done);
  void replace(std::string old_target, std::string new_target, DoneFn done);

  Result<Bytes> read_sync(BlockIndex start, uint64_t count);
  Status write_sync(BlockIndex start, std::span<const std::byte> data);
  Status discard_sync(BlockIndex start, uint64_t count);
  Status flush_sync();
  Status replace_sync(std::string old_target, std::string new_target);

  // A consistent copy of the core's state, taken on the io thread.
  Snapshot snapshot() const;

  // Serves another source of work on the io thread, so that a front end (the FUSE
  // session) needs no thread of its own and no hand-off per request: `on_readable` runs on
  // the io thread whenever `fd` is readable, and must read until it would block (fd must
  // be non-blocking). The volume's calls made from it complete on the same thread. One
  // watch at a time; the fd stays the caller's (never closed here) and must outlive it.
  void watch(int fd, std::function<void()> on_readable);
  // Ends the watch; once it returns, on_readable is not running and will not run again.
  // Not from the io thread.
  void unwatch();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cru::upstairs
