// Every message of the upstairs <-> downstairs protocol (and downstairs <-> downstairs
// repair transfers), as plain structs. Field order here is wire order: each struct lists
// its fields once in CRU_FIELDS, which the codec walks to encode and decode, so a field
// cannot be encoded and forgotten on decode. Bulk block data (`data`) is not in the field
// list: it travels after the metadata (see docs/protocol.md). Pure, no asio.
#pragma once

#include <array>
#include <concepts>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <variant>
#include <vector>

#include "common/bytes.h"
#include "common/ids.h"
#include "common/result.h"
#include "common/uuid.h"
#include "proto/limits.h"

namespace cru::proto {

// Bump on any change to a message's tag or fields, to the frame layout, or to the meaning
// of an ErrorCode: peers compare versions first and refuse a mismatch with both numbers.
// 2: ExtentFetch.have_hash, ExtentChunk.unchanged; 3: ErrorCode kIoTooLarge;
// 4: ExtentVersion.damaged; 5: IO jobs carry an optional TraceContext, and ErrorCode
// kSnapshotFailed (Flush.snapshot is served).
inline constexpr uint32_t kProtocolVersion = 5;

#define CRU_FIELDS(...)                           \
  auto fields() { return std::tie(__VA_ARGS__); } \
  auto fields() const { return std::tie(__VA_ARGS__); }

// Wire tags. Grouped by family; gaps leave room to add messages without renumbering.
enum class Tag : uint32_t {
  // negotiation
  kHereIAm = 1,
  kYesItsMe = 2,
  kVersionMismatch = 3,
  kReadOnlyMismatch = 4,
  kEncryptedMismatch = 5,
  kPromoteToActive = 6,
  kYouAreNowActive = 7,
  kYouAreNoLongerActive = 8,
  kUuidMismatch = 9,
  kRegionInfoPlease = 10,
  kRegionInfo = 11,
  kExtentVersionsPlease = 12,
  kExtentVersions = 13,
  kLastFlush = 14,
  // IO
  kWrite = 20,
  kWriteUnwritten = 21,
  kRead = 22,
  kReadResponse = 23,
  kDiscard = 24,
  kFlush = 25,
  kBarrier = 26,
  kAck = 27,
  // reconciliation at activation
  kExtentFlush = 40,
  kExtentClose = 41,
  kExtentRepair = 42,
  kExtentReopen = 43,
  kRepairAck = 44,
  // live repair (jobs with dependencies)
  kExtentLiveClose = 50,
  kExtentLiveFlushClose = 51,
  kExtentLiveRepair = 52,
  kExtentLiveReopen = 53,
  kExtentLiveNoOp = 54,
  kExtentLiveCloseAck = 55,
  // extent transfer between downstairs
  kRepairHello = 60,
  kExtentFetch = 61,
  kExtentChunk = 62,
  kExtentFetchDone = 63,
  // liveness and errors
  kRuok = 70,
  kImok = 71,
  kErrorReport = 80,
};

// ---- shared field types ------------------------------------------------------------

// One replica's geometry and identity.
struct RegionDefinition {
  uint32_t block_size = 0;    // bytes
  uint64_t extent_size = 0;   // blocks per extent
  uint32_t extent_count = 0;  // extents in the region
  Uuid uuid;
  bool encrypted = false;
  CRU_FIELDS(block_size, extent_size, extent_count, uuid, encrypted)
  friend bool operator==(const RegionDefinition&, const RegionDefinition&) = default;

  uint64_t extent_bytes() const { return extent_size * block_size; }
  uint64_t total_blocks() const { return extent_size * extent_count; }
  uint64_t total_bytes() const { return total_blocks() * block_size; }
};

inline constexpr size_t kNonceBytes = 24;  // XChaCha20-Poly1305
inline constexpr size_t kTagBytes = 16;

struct EncryptionContext {
  std::array<uint8_t, kNonceBytes> nonce{};
  std::array<uint8_t, kTagBytes> tag{};
  CRU_FIELDS(nonce, tag)
  friend bool operator==(const EncryptionContext&, const EncryptionContext&) = default;
};

// A block's context: the integrity hash of the bytes as stored (for encrypted blocks,
// over nonce, tag and ciphertext) and, when encrypted, the AEAD nonce and tag.
struct BlockContext {
  uint64_t hash = 0;
  std::optional<EncryptionContext> encryption;
  CRU_FIELDS(hash, encryption)
  friend bool operator==(const BlockContext&, const BlockContext&) = default;
};

// An extent's metadata as reported by ExtentVersions and the close acks.
struct ExtentVersion {
  Generation generation;
  FlushNumber flush;
  bool dirty = false;
  // The downstairs cannot vouch for this copy: its file is missing, truncated or has no
  // valid metadata, or a block's bytes match none of its contexts. Never a repair source;
  // always repaired from a healthy copy.
  bool damaged = false;
  CRU_FIELDS(generation, flush, dirty, damaged)
  friend auto operator<=>(const ExtentVersion&, const ExtentVersion&) = default;
};

// A sampled trace a job belongs to (W3C trace context's fields): the downstairs' spans for
// the job are children of parent_span_id, the upstairs' span for this job on this
// downstairs. Present only when sampled; an unsampled job carries none (one byte).
struct TraceContext {
  static constexpr uint8_t kSampled = 1;  // the only flag; other bits must be zero
  uint64_t trace_id_high = 0;             // the 128-bit trace id, never zero
  uint64_t trace_id_low = 0;
  uint64_t parent_span_id = 0;  // never zero
  uint8_t flags = kSampled;
  CRU_FIELDS(trace_id_high, trace_id_low, parent_span_id, flags)
  friend bool operator==(const TraceContext&, const TraceContext&) = default;
};

// A result on the wire: code kOk with an empty message, or an error.
struct WireStatus {
  ErrorCode code = ErrorCode::kOk;
  std::string message;
  CRU_FIELDS(code, message)
  friend bool operator==(const WireStatus&, const WireStatus&) = default;

  static WireStatus ok() { return {}; }
  // Long messages (paths, nested causes) are cut to the wire limit, never refused.
  static WireStatus from(const Error& e) { return {e.code, e.message.substr(0, kMaxStringBytes)}; }
  static WireStatus from(const Status& s) { return s ? ok() : from(s.error()); }
  bool is_ok() const { return code == ErrorCode::kOk; }
  Status to_status() const {
    if (is_ok()) return {};
    return fail(code, message);
  }
};

// ---- negotiation -------------------------------------------------------------------

struct HereIAm {
  static constexpr Tag kTag = Tag::kHereIAm;
  uint32_t version = kProtocolVersion;
  Uuid upstairs_id;
  Uuid session_id;
  Generation generation;
  bool read_only = false;
  bool encrypted = false;
  CRU_FIELDS(version, upstairs_id, session_id, generation, read_only, encrypted)
  friend bool operator==(const HereIAm&, const HereIAm&) = default;
};

struct YesItsMe {
  static constexpr Tag kTag = Tag::kYesItsMe;
  uint32_t version = kProtocolVersion;
  // host:port where this downstairs serves extent files to repairing peers.
  std::string repair_addr;
  // The highest generation this downstairs has seen (promoted, or stamped on an extent):
  // an activation must use a higher one; `generation: auto` takes the maximum + 1.
  Generation highest_generation;
  CRU_FIELDS(version, repair_addr, highest_generation)
  friend bool operator==(const YesItsMe&, const YesItsMe&) = default;
};

struct VersionMismatch {
  static constexpr Tag kTag = Tag::kVersionMismatch;
  uint32_t version = kProtocolVersion;  // the sender's version
  CRU_FIELDS(version)
  friend bool operator==(const VersionMismatch&, const VersionMismatch&) = default;
};

struct ReadOnlyMismatch {
  static constexpr Tag kTag = Tag::kReadOnlyMismatch;
  bool expected = false;  // the downstairs' mode
  CRU_FIELDS(expected)
  friend bool operator==(const ReadOnlyMismatch&, const ReadOnlyMismatch&) = default;
};

struct EncryptedMismatch {
  static constexpr Tag kTag = Tag::kEncryptedMismatch;
  bool expected = false;  // the region's flag
  CRU_FIELDS(expected)
  friend bool operator==(const EncryptedMismatch&, const EncryptedMismatch&) = default;
};

struct PromoteToActive {
  static constexpr Tag kTag = Tag::kPromoteToActive;
  Uuid upstairs_id;
  Uuid session_id;
  Generation generation;
  CRU_FIELDS(upstairs_id, session_id, generation)
  friend bool operator==(const PromoteToActive&, const PromoteToActive&) = default;
};

struct YouAreNowActive {
  static constexpr Tag kTag = Tag::kYouAreNowActive;
  Uuid upstairs_id;
  Uuid session_id;
  Generation generation;
  CRU_FIELDS(upstairs_id, session_id, generation)
  friend bool operator==(const YouAreNowActive&, const YouAreNowActive&) = default;
};

// Sent to a displaced connection before it is dropped: who took over.
struct YouAreNoLongerActive {
  static constexpr Tag kTag = Tag::kYouAreNoLongerActive;
  Uuid new_upstairs_id;
  Uuid new_session_id;
  Generation new_generation;
  CRU_FIELDS(new_upstairs_id, new_session_id, new_generation)
  friend bool operator==(const YouAreNoLongerActive&, const YouAreNoLongerActive&) = default;
};

struct UuidMismatch {
  static constexpr Tag kTag = Tag::kUuidMismatch;
  Uuid expected;
  CRU_FIELDS(expected)
  friend bool operator==(const UuidMismatch&, const UuidMismatch&) = default;
};

struct RegionInfoPlease {
  static constexpr Tag kTag = Tag::kRegionInfoPlease;
  CRU_FIELDS()
  friend bool operator==(const RegionInfoPlease&, const RegionInfoPlease&) = default;
};

struct RegionInfo {
  static constexpr Tag kTag = Tag::kRegionInfo;
  RegionDefinition region;
  CRU_FIELDS(region)
  friend bool operator==(const RegionInfo&, const RegionInfo&) = default;
};

struct ExtentVersionsPlease {
  static constexpr Tag kTag = Tag::kExtentVersionsPlease;
  CRU_FIELDS()
  friend bool operator==(const ExtentVersionsPlease&, const ExtentVersionsPlease&) = default;
};

struct ExtentVersions {
  static constexpr Tag kTag = Tag::kExtentVersions;
  std::vector<ExtentVersion> extents;  // one per extent, in extent order
  CRU_FIELDS(extents)
  friend bool operator==(const ExtentVersions&, const ExtentVersions&) = default;
};

// Sent instead of ExtentVersionsPlease by a reconnecting (Offline) upstairs: the last job
// id this downstairs completed a flush for. The downstairs seeds its completed set with it
// and the upstairs replays everything after. No reply.
struct LastFlush {
  static constexpr Tag kTag = Tag::kLastFlush;
  JobId last_flushed;
  CRU_FIELDS(last_flushed)
  friend bool operator==(const LastFlush&, const LastFlush&) = default;
};

// ---- IO ----------------------------------------------------------------------------

struct WriteFields {
  JobId job_id;
  std::vector<JobId> deps;
  BlockIndex start;  // absolute block; the IO may span extents
  uint32_t block_size = 0;
  std::vector<BlockContext> contexts;  // one per block
  Bytes data;                          // contexts.size() * block_size bytes
  std::optional<TraceContext> trace{};
  CRU_FIELDS(job_id, deps, start, block_size, contexts, trace)
  friend bool operator==(const WriteFields&, const WriteFields&) = default;
};

struct Write : WriteFields {
  static constexpr Tag kTag = Tag::kWrite;
};

// Writes only the blocks that have never been written (used to fill from a parent
// without overwriting newer guest writes).
struct WriteUnwritten : WriteFields {
  static constexpr Tag kTag = Tag::kWriteUnwritten;
};

struct Read {
  static constexpr Tag kTag = Tag::kRead;
  JobId job_id;
  std::vector<JobId> deps;
  BlockIndex start;
  uint32_t block_count = 0;
  std::optional<TraceContext> trace{};
  CRU_FIELDS(job_id, deps, start, block_count, trace)
  friend bool operator==(const Read&, const Read&) = default;
};

// A read's answer: on success one optional context per block (nullopt: never written,
// data is zeros) and the blocks' bytes; on error, no contexts and no data.
struct ReadResponse {
  static constexpr Tag kTag = Tag::kReadResponse;
  JobId job_id;
  WireStatus status;
  uint32_t block_size = 0;
  std::vector<std::optional<BlockContext>> contexts;
  Bytes data;
  CRU_FIELDS(job_id, status, block_size, contexts)
  friend bool operator==(const ReadResponse&, const ReadResponse&) = default;
};

// Discard (TRIM) / write-zeroes: the blocks read back as zeros and unwritten afterwards,
// and their space is released.
struct Discard {
  static constexpr Tag kTag = Tag::kDiscard;
  JobId job_id;
  std::vector<JobId> deps;
  BlockIndex start;
  uint32_t block_count = 0;
  std::optional<TraceContext> trace{};
  CRU_FIELDS(job_id, deps, start, block_count, trace)
  friend bool operator==(const Discard&, const Discard&) = default;
};

struct Flush {
  static constexpr Tag kTag = Tag::kFlush;
  JobId job_id;
  std::vector<JobId> deps;
  FlushNumber flush_number;
  Generation generation;
  std::optional<std::string> snapshot;
  // During live repair, the repairing downstairs flushes only extents <= this.
  std::optional<ExtentId> extent_limit;
  std::optional<TraceContext> trace{};
  CRU_FIELDS(job_id, deps, flush_number, generation, snapshot, extent_limit, trace)
  friend bool operator==(const Flush&, const Flush&) = default;
};

// Orders like a flush (and resets the completed set) but makes nothing durable.
struct Barrier {
  static constexpr Tag kTag = Tag::kBarrier;
  JobId job_id;
  std::vector<JobId> deps;
  std::optional<TraceContext> trace{};
  CRU_FIELDS(job_id, deps, trace)
  friend bool operator==(const Barrier&, const Barrier&) = default;
};

// The answer to every job without data of its own: Write, WriteUnwritten, Discard, Flush,
// Barrier, ExtentLiveRepair, ExtentLiveReopen, ExtentLiveNoOp.
struct Ack {
  static constexpr Tag kTag = Tag::kAck;
  JobId job_id;
  WireStatus status;
  CRU_FIELDS(job_id, status)
  friend bool operator==(const Ack&, const Ack&) = default;
};

// ---- reconciliation at activation (no dependencies; one step at a time) -------------

// To the source only: stamp the extent with these numbers if it is dirty.
struct ExtentFlush {
  static constexpr Tag kTag = Tag::kExtentFlush;
  RepairId repair_id;
  ExtentId extent;
  ClientId source;
  FlushNumber flush_number;
  Generation generation;
  CRU_FIELDS(repair_id, extent, source, flush_number, generation)
  friend bool operator==(const ExtentFlush&, const ExtentFlush&) = default;
};

struct ExtentClose {
  static constexpr Tag kTag = Tag::kExtentClose;
  RepairId repair_id;
  ExtentId extent;
  CRU_FIELDS(repair_id, extent)
  friend bool operator==(const ExtentClose&, const ExtentClose&) = default;
};

// To destinations only: fetch the closed extent from source_addr and swap it in.
struct ExtentRepair {
  static constexpr Tag kTag = Tag::kExtentRepair;
  RepairId repair_id;
  ExtentId extent;
  ClientId source;
  std::string source_addr;
  std::vector<ClientId> dests;
  CRU_FIELDS(repair_id, extent, source, source_addr, dests)
  friend bool operator==(const ExtentRepair&, const ExtentRepair&) = default;
};

struct ExtentReopen {
  static constexpr Tag kTag = Tag::kExtentReopen;
  RepairId repair_id;
  ExtentId extent;
  CRU_FIELDS(repair_id, extent)
  friend bool operator==(const ExtentReopen&, const ExtentReopen&) = default;
};

struct RepairAck {
  static constexpr Tag kTag = Tag::kRepairAck;
  RepairId repair_id;
  WireStatus status;
  CRU_FIELDS(repair_id, status)
  friend bool operator==(const RepairAck&, const RepairAck&) = default;
};

// ---- live repair: jobs in the normal job stream --------------------------------------

// To the downstairs under repair: close without flushing.
struct ExtentLiveClose {
  static constexpr Tag kTag = Tag::kExtentLiveClose;
  JobId job_id;
  std::vector<JobId> deps;
  ExtentId extent;
  CRU_FIELDS(job_id, deps, extent)
  friend bool operator==(const ExtentLiveClose&, const ExtentLiveClose&) = default;
};

// To healthy downstairs: flush the extent (if dirty) with these numbers, then close it.
struct ExtentLiveFlushClose {
  static constexpr Tag kTag = Tag::kExtentLiveFlushClose;
  JobId job_id;
  std::vector<JobId> deps;
  ExtentId extent;
  FlushNumber flush_number;
  Generation generation;
  CRU_FIELDS(job_id, deps, extent, flush_number, generation)
  friend bool operator==(const ExtentLiveFlushClose&, const ExtentLiveFlushClose&) = default;
};

struct ExtentLiveRepair {
  static constexpr Tag kTag = Tag::kExtentLiveRepair;
  JobId job_id;
  std::vector<JobId> deps;
  ExtentId extent;
  ClientId source;
  std::string source_addr;
  CRU_FIELDS(job_id, deps, extent, source, source_addr)
  friend bool operator==(const ExtentLiveRepair&, const ExtentLiveRepair&) = default;
};

struct ExtentLiveReopen {
  static constexpr Tag kTag = Tag::kExtentLiveReopen;
  JobId job_id;
  std::vector<JobId> deps;
  ExtentId extent;
  CRU_FIELDS(job_id, deps, extent)
  friend bool operator==(const ExtentLiveReopen&, const ExtentLiveReopen&) = default;
};

// Completes a reserved job id with no work, so later jobs that depend on it can run.
struct ExtentLiveNoOp {
  static constexpr Tag kTag = Tag::kExtentLiveNoOp;
  JobId job_id;
  std::vector<JobId> deps;
  CRU_FIELDS(job_id, deps)
  friend bool operator==(const ExtentLiveNoOp&, const ExtentLiveNoOp&) = default;
};

// Answer to ExtentLiveClose and ExtentLiveFlushClose: the extent's metadata at close.
struct ExtentLiveCloseAck {
  static constexpr Tag kTag = Tag::kExtentLiveCloseAck;
  JobId job_id;
  WireStatus status;
  ExtentVersion version;
  CRU_FIELDS(job_id, status, version)
  friend bool operator==(const ExtentLiveCloseAck&, const ExtentLiveCloseAck&) = default;
};

// ---- extent transfer between downstairs ----------------------------------------------

// First frame of a repair connection (instead of HereIAm). Answered with RegionInfo (the
// source's geometry), or VersionMismatch.
struct RepairHello {
  static constexpr Tag kTag = Tag::kRepairHello;
  uint32_t version = kProtocolVersion;
  CRU_FIELDS(version)
  friend bool operator==(const RepairHello&, const RepairHello&) = default;
};

// Asks for the next chunk of a closed extent's file, starting at offset 0; the receiver
// may ask for a few chunks ahead. Each is answered with an ExtentChunk; the last chunk is
// followed by ExtentFetchDone. An error is answered with ExtentFetchDone alone.
// have_hash: XXH64 of the receiver's own bytes at this place, so a chunk that already
// matches is not sent again (only what differs crosses the network).
struct ExtentFetch {
  static constexpr Tag kTag = Tag::kExtentFetch;
  ExtentId extent;
  uint64_t offset = 0;
  std::optional<uint64_t> have_hash;
  CRU_FIELDS(extent, offset, have_hash)
  friend bool operator==(const ExtentFetch&, const ExtentFetch&) = default;
};

// unchanged: the source's bytes hash to the fetch's have_hash; no data follows and the
// receiver keeps its own (ExtentFetchDone's whole-file hash still checks them).
struct ExtentChunk {
  static constexpr Tag kTag = Tag::kExtentChunk;
  ExtentId extent;
  uint64_t offset = 0;  // byte offset of data in the extent file
  bool unchanged = false;
  Bytes data;
  CRU_FIELDS(extent, offset, unchanged)
  friend bool operator==(const ExtentChunk&, const ExtentChunk&) = default;
};

// End of a transfer: the file's size and XXH64 over all its bytes, which the receiver
// checks end to end before swapping the file in.
struct ExtentFetchDone {
  static constexpr Tag kTag = Tag::kExtentFetchDone;
  ExtentId extent;
  WireStatus status;
  uint64_t file_bytes = 0;
  uint64_t file_hash = 0;
  CRU_FIELDS(extent, status, file_bytes, file_hash)
  friend bool operator==(const ExtentFetchDone&, const ExtentFetchDone&) = default;
};

// ---- liveness and errors -------------------------------------------------------------

struct Ruok {
  static constexpr Tag kTag = Tag::kRuok;
  CRU_FIELDS()
  friend bool operator==(const Ruok&, const Ruok&) = default;
};

struct Imok {
  static constexpr Tag kTag = Tag::kImok;
  CRU_FIELDS()
  friend bool operator==(const Imok&, const Imok&) = default;
};

// An error the peer must see that is not the answer to a job (job_id 0), e.g. why a
// negotiation step was refused, sent before the connection is closed.
struct ErrorReport {
  static constexpr Tag kTag = Tag::kErrorReport;
  JobId job_id;
  WireStatus status;
  CRU_FIELDS(job_id, status)
  friend bool operator==(const ErrorReport&, const ErrorReport&) = default;
};

using Message =
    std::variant<HereIAm, YesItsMe, VersionMismatch, ReadOnlyMismatch, EncryptedMismatch,
                 PromoteToActive, YouAreNowActive, YouAreNoLongerActive, UuidMismatch,
                 RegionInfoPlease, RegionInfo, ExtentVersionsPlease, ExtentVersions, LastFlush,
                 Write, WriteUnwritten, Read, ReadResponse, Discard, Flush, Barrier, Ack,
                 ExtentFlush, ExtentClose, ExtentRepair, ExtentReopen, RepairAck, ExtentLiveClose,
                 ExtentLiveFlushClose, ExtentLiveRepair, ExtentLiveReopen, ExtentLiveNoOp,
                 ExtentLiveCloseAck, RepairHello, ExtentFetch, ExtentChunk, ExtentFetchDone, Ruok,
                 Imok, ErrorReport>;

// Messages that carry bulk data after their metadata.
template <typename T>
concept HasData = requires(T t) {
  { t.data } -> std::convertible_to<Bytes>;
};

Tag tag_of(const Message& m);
std::string_view tag_name(Tag tag);
// "Write job 1042 (8 blocks at 4096)"-style one-liner for logs; never prints data.
std::string describe(const Message& m);

}  // namespace cru::proto
