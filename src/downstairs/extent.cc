#include "downstairs/extent.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "common/hash.h"
#include "common/log.h"
#include "proto/integrity.h"

namespace cru::downstairs {

namespace {

// ---- little-endian fields ----------------------------------------------------------

void put_u64(std::span<std::byte> b, size_t at, uint64_t v) {
  for (size_t i = 0; i < 8; ++i) b[at + i] = static_cast<std::byte>(v >> (8 * i));
}
void put_u32(std::span<std::byte> b, size_t at, uint32_t v) {
  for (size_t i = 0; i < 4; ++i) b[at + i] = static_cast<std::byte>(v >> (8 * i));
}
uint64_t get_u64(std::span<const std::byte> b, size_t at) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i)
    v |= static_cast<uint64_t>(std::to_integer<uint8_t>(b[at + i])) << (8 * i);
  return v;
}
uint32_t get_u32(std::span<const std::byte> b, size_t at) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i)
    v |= static_cast<uint32_t>(std::to_integer<uint8_t>(b[at + i])) << (8 * i);
  return v;
}

bool all_zero(std::span<const std::byte> data) {
  return std::all_of(data.begin(), data.end(), [](std::byte b) { return b == std::byte{0}; });
}

// ---- slot layout (64 bytes) ----------------------------------------------------------
// 0 seq u64 | 8 hash u64 | 16 flags u8 | 17 nonce[24] | 41 tag[16] | 57 zero[3] |
// 60 check u32 = low half of XXH64(bytes 0..60)
constexpr size_t kSlotSeq = 0, kSlotHash = 8, kSlotFlags = 16, kSlotNonce = 17, kSlotTag = 41,
                 kSlotCheck = 60;
constexpr uint8_t kFlagEncrypted = 1, kFlagDiscarded = 2,
                  kKnownFlags = kFlagEncrypted | kFlagDiscarded;

// ---- metadata copy layout --------------------------------------------------------------
// 0 magic[8] | 8 format u32 | 12 block_size u32 | 16 blocks u64 | 24 meta_seq u64 |
// 32 generation u64 | 40 flush u64 | 48 dirty u8 | 56 next_slot_seq u64 | 64 XXH64(0..64)
constexpr std::string_view kMetaMagic = "CRUEXTNT";
constexpr size_t kMetaBytesUsed = 72;

struct Meta {
  uint32_t format = kExtentFormatVersion;
  uint64_t meta_seq = 0;
  uint64_t generation = 0;
  uint64_t flush = 0;
  bool dirty = false;
  uint64_t next_slot_seq = 1;
};

std::vector<std::byte> encode_meta(const ExtentLayout& layout, const Meta& m) {
  std::vector<std::byte> b(kMetaCopyBytes);
  std::memcpy(b.data(), kMetaMagic.data(), kMetaMagic.size());
  put_u32(b, 8, kExtentFormatVersion);
  put_u32(b, 12, layout.block_size);
  put_u64(b, 16, layout.blocks);
  put_u64(b, 24, m.meta_seq);
  put_u64(b, 32, m.generation);
  put_u64(b, 40, m.flush);
  b[48] = std::byte{m.dirty ? uint8_t{1} : uint8_t{0}};
  put_u64(b, 56, m.next_slot_seq);
  put_u64(b, 64, integrity_hash(std::span(b).first(64)));
  return b;
}

// Why a copy is unusable, or the metadata.
Result<Meta> decode_meta(const ExtentLayout& layout, std::span<const std::byte> b) {
  auto bad = [](std::string why) { return fail(ErrorCode::kCorrupt, std::move(why)); };
  if (std::memcmp(b.data(), kMetaMagic.data(), kMetaMagic.size()) != 0)
    return bad("no metadata magic");
  if (get_u64(b, 64) != integrity_hash(b.first(64))) return bad("metadata checksum mismatch");
  const uint32_t format = get_u32(b, 8);
  if (format != kExtentFormatVersion && format != kOldestExtentFormatVersion)
    return bad(fmt::format("format version {}, this build reads versions {} and {}", format,
                           kOldestExtentFormatVersion, kExtentFormatVersion));
  if (get_u32(b, 12) != layout.block_size || get_u64(b, 16) != layout.blocks)
    return bad(fmt::format("geometry {} blocks of {} bytes, region says {} of {}", get_u64(b, 16),
                           get_u32(b, 12), layout.blocks, layout.block_size));
  uint8_t dirty = std::to_integer<uint8_t>(b[48]);
  if (dirty > 1) return bad("dirty flag is not 0 or 1");
  return Meta{format, get_u64(b, 24), get_u64(b, 32), get_u64(b, 40), dirty == 1, get_u64(b, 56)};
}

std::span<const std::byte, kSlotBytes> slot_bytes(std::span<const std::byte> pairs, size_t block,
                                                  int slot) {
  return pairs.subspan(block * kSlotPairBytes + static_cast<size_t>(slot) * kSlotBytes)
      .first<kSlotBytes>();
}
std::span<std::byte, kSlotBytes> slot_bytes(std::span<std::byte> pairs, size_t block, int slot) {
  return pairs.subspan(block * kSlotPairBytes + static_cast<size_t>(slot) * kSlotBytes)
      .first<kSlotBytes>();
}

uint64_t zero_block_hash(uint32_t block_size) {
  static thread_local std::vector<std::byte> zeros;
  if (zeros.size() < block_size) zeros.resize(block_size);
  return integrity_hash(std::span<const std::byte>(zeros).first(block_size));
}

// Reads at most this many blocks at a time when scanning a whole extent.
constexpr uint64_t kScanChunkBlocks = 256;

}  // namespace

// ---- slots ---------------------------------------------------------------------------

std::optional<proto::BlockContext> Slot::context() const {
  if (empty() || discarded) return std::nullopt;
  return proto::BlockContext{hash, encryption};
}

void encode_slot(const Slot& slot, std::span<std::byte, kSlotBytes> out) {
  std::memset(out.data(), 0, out.size());
  if (slot.empty()) return;
  put_u64(out, kSlotSeq, slot.seq);
  put_u64(out, kSlotHash, slot.hash);
  uint8_t flags = (slot.encryption ? kFlagEncrypted : 0) | (slot.discarded ? kFlagDiscarded : 0);
  out[kSlotFlags] = std::byte{flags};
  if (slot.encryption) {
    std::memcpy(out.data() + kSlotNonce, slot.encryption->nonce.data(), proto::kNonceBytes);
    std::memcpy(out.data() + kSlotTag, slot.encryption->tag.data(), proto::kTagBytes);
  }
  put_u32(out, kSlotCheck, static_cast<uint32_t>(integrity_hash(std::span(out).first(kSlotCheck))));
}

Slot decode_slot(std::span<const std::byte, kSlotBytes> in) {
  Slot s;
  uint64_t seq = get_u64(in, kSlotSeq);
  if (seq == 0) return s;
  if (get_u32(in, kSlotCheck) != static_cast<uint32_t>(integrity_hash(in.first(kSlotCheck))))
    return s;
  uint8_t flags = std::to_integer<uint8_t>(in[kSlotFlags]);
  if ((flags & ~kKnownFlags) != 0) return s;
  s.seq = seq;
  s.hash = get_u64(in, kSlotHash);
  s.discarded = (flags & kFlagDiscarded) != 0;
  if (flags & kFlagEncrypted) {
    proto::EncryptionContext e;
    std::memcpy(e.nonce.data(), in.data() + kSlotNonce, proto::kNonceBytes);
    std::memcpy(e.tag.data(), in.data() + kSlotTag, proto::kTagBytes);
    s.encryption = e;
  }
  return s;
}

uint64_t expected_hash(const Slot& slot, std::span<const std::byte> data) {
  return proto::block_hash(slot.encryption, data);
}

// ---- create / open -------------------------------------------------------------------

Status Extent::create(FileSystem& fs, const std::string& path, const ExtentLayout& layout,
                      Space space) {
  std::string tmp = path + ".new";
  CRU_TRY(fs.remove(tmp));
  CRU_TRY_ASSIGN(auto f, fs.open(tmp, OpenMode::kCreateExclusive));
  // Data and slots read as zeros, i.e. unwritten and empty, allocated or not.
  Status made =
      space == Space::kKeep ? f->reserve(layout.file_bytes()) : f->truncate(layout.file_bytes());
  if (!made) {
    f.reset();
    if (auto s = fs.remove(tmp); !s) log::warn("removing {}: {}", tmp, s.error().message);
    if (space == Space::kKeep)
      return fail(made.error().code,
                  fmt::format("{} (extent files are allocated whole at create; create --sparse "
                              "allocates on write)",
                              made.error().message));
    return made;
  }
  Meta m;
  m.meta_seq = 1;
  CRU_TRY(f->write_at(layout.meta_offset(1), encode_meta(layout, m)));
  CRU_TRY(f->sync());
  f.reset();
  CRU_TRY(fs.rename(tmp, path));
  return fs.sync_dir(parent_dir(path));
}

Result<std::unique_ptr<Extent>> Extent::open(FileSystem& fs, const std::string& path,
                                             const ExtentLayout& layout, ExtentId id,
                                             bool read_only, bool encrypted, Space space) {
  if (!read_only) {
    // An interrupted repair leaves its staging file behind; the extent file itself is
    // only ever replaced by an atomic rename, so it is whole: old or new.
    for (const auto& leftover : {staging_path(path), path + ".new"}) {
      CRU_TRY_ASSIGN(bool there, fs.exists(leftover));
      if (there) {
        log::info("extent {}: removing {} left by an interrupted repair or create", id, leftover);
        CRU_TRY(fs.remove(leftover));
      }
    }
  }
  CRU_TRY_ASSIGN(auto f, fs.open(path, read_only ? OpenMode::kReadOnly : OpenMode::kReadWrite));
  CRU_TRY_ASSIGN(uint64_t size, f->size());
  if (size != layout.file_bytes())
    return fail(ErrorCode::kCorrupt, fmt::format("extent {} ({}) is {} bytes, expected {}", id,
                                                 path, size, layout.file_bytes()));
  std::unique_ptr<Extent> e(new Extent(std::move(f), layout, id, read_only, encrypted, space));
  CRU_TRY(e->load_meta());
  // Read-only, the scan only decides whether the extent is dirty; it changes nothing.
  if (e->dirty_) CRU_TRY(e->recover(/*repair=*/!read_only));
  return e;
}

Status Extent::load_meta() {
  std::vector<std::byte> buf(2 * kMetaCopyBytes);
  CRU_TRY(file_->read_at(layout_.meta_offset(0), buf));
  auto a = decode_meta(layout_, std::span(buf).first(kMetaCopyBytes));
  auto b = decode_meta(layout_, std::span(buf).subspan(kMetaCopyBytes));
  if (!a && !b)
    return fail(ErrorCode::kCorrupt, fmt::format("extent {}: no valid metadata ({}; {})", id_,
                                                 a.error().message, b.error().message));
  const Meta& m = !a ? *b : !b ? *a : (a->meta_seq > b->meta_seq ? *a : *b);
  meta_seq_ = m.meta_seq;
  generation_ = Generation{m.generation};
  flush_ = FlushNumber{m.flush};
  dirty_ = dirty_on_disk_ = m.dirty;
  next_slot_seq_ = std::max<uint64_t>(m.next_slot_seq, 1);
  meta_format_ = m.format;
  return {};
}

Status Extent::write_meta(Generation generation, FlushNumber flush, bool dirty,
                          uint64_t next_slot_seq) {
  Meta m{kExtentFormatVersion, meta_seq_ + 1, generation.value, flush.value, dirty, next_slot_seq};
  // Alternate copies: the one holding the current state is never overwritten.
  CRU_TRY(file_->write_at(layout_.meta_offset(static_cast<int>(m.meta_seq % 2)),
                          encode_meta(layout_, m)));
  meta_seq_ = m.meta_seq;
  return {};
}

Status Extent::mark_dirty(uint64_t first_seq) {
  if (dirty_) return {};
  // The dirty flag must be durable before any slot or data write that it covers: after a
  // crash it is what tells open() to check every block. A flush leaves it set on disk, so
  // only the first write after the extent settled pays for this. Recorded with it: every
  // slot written from now on has a seq of at least first_seq (see recover()).
  if (!dirty_on_disk_) {
    CRU_TRY(write_meta(generation_, flush_, true, first_seq));
    CRU_TRY(sync());
    dirty_on_disk_ = true;
  }
  dirty_ = true;
  return {};
}

Status Extent::settle() {
  // A damaged block breaks invariant C: the flag stays set, so every open scans the extent
  // and finds the block damaged again until a write or a repair replaces it.
  if (dirty_ || !dirty_on_disk_ || !damaged_blocks_.empty()) return {};
  // Nothing was written since the last flush made everything durable: the clean flag is
  // true. Synced so that a region at rest opens without a scan.
  CRU_TRY(write_meta(generation_, flush_, false, next_slot_seq_));
  CRU_TRY(sync());
  dirty_on_disk_ = false;
  return {};
}

// ---- slot selection and recovery -------------------------------------------------------

int Extent::select_slot(std::span<const std::byte> pair, std::span<const std::byte> data,
                        bool check_data) const {
  std::array<Slot, 2> s = {decode_slot(slot_bytes(pair, 0, 0)),
                           decode_slot(slot_bytes(pair, 0, 1))};
  std::array<int, 2> order = s[1].seq > s[0].seq ? std::array{1, 0} : std::array{0, 1};
  for (int i : order) {
    if (s[i].empty()) continue;
    if (!check_data || expected_hash(s[i], data) == s[i].hash) return i;
  }
  return -1;
}

Status Extent::recover(bool repair) {
  const uint32_t bs = layout_.block_size;
  // Every slot written since the metadata was (at the last flush, or when the extent was
  // marked dirty) has at least this seq.
  const uint64_t unflushed_seq = next_slot_seq_;
  uint64_t max_seq = next_slot_seq_ - 1;
  // Whether anything differs from the extent's last flush once recovered: a surviving slot
  // of a later write, or bytes no write since explains. Decided from what recovery leaves,
  // so a power cut right after recovery (which may undo its unsynced fixes) decides alike.
  bool changed_since_flush = false;
  uint64_t rolled_back = 0;
  damaged_blocks_.clear();
  std::vector<std::byte> data(kScanChunkBlocks * bs);
  for (uint64_t first = 0; first < layout_.blocks; first += kScanChunkBlocks) {
    uint64_t n = std::min(kScanChunkBlocks, layout_.blocks - first);
    CRU_TRY_ASSIGN(auto pairs, read_slot_pairs(first, n));
    auto block_data = std::span(data).first(n * bs);
    CRU_TRY(file_->read_at(layout_.data_offset(first), block_data));
    bool changed = false;
    for (uint64_t i = 0; i < n; ++i) {
      auto d = block_data.subspan(i * bs, bs);
      auto pair = std::span(pairs).subspan(i * kSlotPairBytes, kSlotPairBytes);
      std::array<Slot, 2> s = {decode_slot(slot_bytes(pair, 0, 0)),
                               decode_slot(slot_bytes(pair, 0, 1))};
      max_seq = std::max({max_seq, s[0].seq, s[1].seq});
      int newest = select_slot(pair, d, false);
      int match = select_slot(pair, d, true);
      // A slot for bytes that are on disk but that no surviving context since the last
      // flush explains: recorded as of a write since the flush, so that the extent stays
      // dirty even if this recovery's fix is all that survives the next power cut.
      const uint64_t since_flush_seq = std::max({s[0].seq, s[1].seq, unflushed_seq});
      if (match >= 0) {
        if (match != newest) {
          if (s[newest].seq >= unflushed_seq) {
            // The newer context's data never reached the disk: forget that context.
            encode_slot(Slot{}, slot_bytes(pair, 0, newest));
          } else {
            // A context from before the last flush lost its data, which that flush
            // synced: not a crash. Keep the value the disk holds.
            Slot kept = s[match];
            kept.seq = since_flush_seq;
            encode_slot(kept, slot_bytes(pair, 0, newest));
          }
          max_seq = std::max(max_seq, since_flush_seq);
          ++rolled_back;
          changed = true;
        }
      } else if (all_zero(d)) {
        if (newest >= 0 && s[newest].seq >= unflushed_seq) {
          // A first write whose context landed but whose data did not (contexts go
          // first): the block is still unwritten.
          encode_slot(Slot{}, slot_bytes(pair, 0, 0));
          encode_slot(Slot{}, slot_bytes(pair, 0, 1));
          ++rolled_back;
          changed = true;
        } else if (newest >= 0) {
          // Zeros under a context from before the last flush: a discard whose hole
          // landed but whose context did not. The block is discarded.
          encode_slot(Slot{since_flush_seq, zero_block_hash(bs), true, std::nullopt},
                      slot_bytes(pair, 0, 0));
          encode_slot(Slot{}, slot_bytes(pair, 0, 1));
          max_seq = std::max(max_seq, since_flush_seq);
          ++rolled_back;
          changed = true;
        }
      } else {
        // Bytes that no context describes: rot, a block torn by a power cut (larger than
        // the disk's atomic unit), or an unencrypted write whose data landed without its
        // context (not ordered). Which one cannot be told from here, and a new context
        // would make the bytes look valid to every reader and to repair, so the block is
        // damaged: it reads as an error, the extent reports itself damaged and the
        // upstairs repairs it from a healthy copy.
        damaged_blocks_.insert(first + i);
        changed_since_flush = true;
      }
      for (int slot : {0, 1})
        changed_since_flush |= decode_slot(slot_bytes(pair, 0, slot)).seq >= unflushed_seq;
    }
    if (changed && repair) CRU_TRY(file_->write_at(layout_.slots_offset(first), pairs));
  }
  next_slot_seq_ = max_seq + 1;
  // A write of which nothing landed left the extent as its last flush did: then the flush
  // number it holds is true and it is clean (its flag stays set on disk until settled).
  // Version 1 recorded next_slot_seq after the first write's slots, so S proves nothing
  // there: such an extent stays dirty, as version 1 had it.
  dirty_ = changed_since_flush || meta_format_ < 2;
  if (!damaged_blocks_.empty())
    log::error(
        "extent {}: {} blocks match none of their contexts (first: block {}); the extent "
        "is damaged and is repaired from a peer",
        id_, damaged_blocks_.size(), *damaged_blocks_.begin());
  if (!repair) return {};
  if (rolled_back > 0)
    log::info("extent {} recovered after a crash: {} blocks rolled back", id_, rolled_back);
  return {};
}

Status Extent::sync() {
  CRU_TRY(file_->sync());
  synced();
  return {};
}

void Extent::synced() { std::fill(unsynced_.begin(), unsynced_.end(), false); }

Status Extent::sync_before_overwriting(uint64_t first, uint64_t count) {
  // Unencrypted, the window is accepted: a block left with no matching context is damaged
  // on this replica and repaired from a peer (recover()).
  if (!encrypted_) return {};
  if (unsynced_.size() != layout_.blocks) unsynced_.assign(layout_.blocks, false);
  auto b = unsynced_.begin() + static_cast<ptrdiff_t>(first);
  if (std::find(b, b + static_cast<ptrdiff_t>(count), true) == b + static_cast<ptrdiff_t>(count))
    return {};
  return sync();
}

Result<std::vector<std::byte>> Extent::read_slot_pairs(uint64_t first, uint64_t count) {
  std::vector<std::byte> pairs(count * kSlotPairBytes);
  CRU_TRY(file_->read_at(layout_.slots_offset(first), pairs));
  return pairs;
}

// ---- IO ------------------------------------------------------------------------------

Status Extent::read(uint64_t first, std::span<std::optional<proto::BlockContext>> contexts,
                    std::span<std::byte> data) {
  const uint32_t bs = layout_.block_size;
  CRU_ASSERT(first + contexts.size() <= layout_.blocks && data.size() == contexts.size() * bs);
  CRU_TRY_ASSIGN(auto pairs, read_slot_pairs(first, contexts.size()));
  CRU_TRY(file_->read_at(layout_.data_offset(first), data));
  if (auto d = damaged_blocks_.lower_bound(first);
      d != damaged_blocks_.end() && *d < first + contexts.size())
    return fail(ErrorCode::kCorrupt,
                fmt::format("extent {} block {}: its data matches none of its contexts (damaged; "
                            "awaiting repair from a peer)",
                            id_, *d));
  // A dirty extent opened read-only was not recovered: pick slots by their data.
  const bool check = read_only_ && dirty_on_disk_;
  for (size_t i = 0; i < contexts.size(); ++i) {
    auto pair = std::span<const std::byte>(pairs).subspan(i * kSlotPairBytes, kSlotPairBytes);
    auto d = data.subspan(i * bs, bs);
    // The branches mirror recover(), so a read-only open sees what a writable one would
    // (a block no slot matches is damaged, refused above).
    int idx = select_slot(pair, d, check);
    contexts[i] = idx >= 0 ? decode_slot(slot_bytes(pair, 0, idx)).context() : std::nullopt;
  }
  return {};
}

Status Extent::write(uint64_t first, std::span<const proto::BlockContext> contexts,
                     std::span<const std::byte> data, bool only_unwritten) {
  const uint32_t bs = layout_.block_size;
  const size_t n = contexts.size();
  CRU_ASSERT(first + n <= layout_.blocks && data.size() == n * bs);
  if (read_only_) return fail(ErrorCode::kReadOnly, fmt::format("extent {} is read-only", id_));
  CRU_TRY_ASSIGN(const std::vector<std::byte> old_pairs, read_slot_pairs(first, n));
  std::vector<std::byte> pairs = old_pairs;
  std::vector<bool> skip(n, false);
  size_t writing = 0;
  const uint64_t first_seq = next_slot_seq_;
  for (size_t i = 0; i < n; ++i) {
    auto pair = std::span(pairs).subspan(i * kSlotPairBytes, kSlotPairBytes);
    int active = select_slot(pair, {}, false);
    if (only_unwritten && active >= 0 && !decode_slot(slot_bytes(pair, 0, active)).discarded) {
      skip[i] = true;
      continue;
    }
    ++writing;
    encode_slot(Slot{next_slot_seq_++, contexts[i].hash, false, contexts[i].encryption},
                slot_bytes(pair, 0, active == 0 ? 1 : 0));
  }
  // Dirty even when every block was skipped: a replay runs this job again after a flush
  // replayed before it stamped this extent, and only the dirty flag makes the next flush
  // stamp it again, as the first run had it (see LastFlush in Core).
  CRU_TRY(mark_dirty(first_seq));
  if (writing == 0) return {};
  CRU_TRY(sync_before_overwriting(first, n));
  CRU_TRY(file_->write_at(layout_.slots_offset(first), pairs));
  // Encrypted contexts cannot be rebuilt from the data (the nonce and tag would be lost),
  // so they must be durable before the data they describe. Unencrypted ones are not
  // ordered (a sync per write would cost too much): a crash that keeps the data but not its
  // context leaves the block damaged on this replica, repaired from a peer (recover()).
  if (encrypted_) CRU_TRY(sync());
  for (size_t i = 0; i < n;) {
    if (skip[i]) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < n && !skip[j]) ++j;
    Status s = file_->write_at(layout_.data_offset(first + i), data.subspan(i * bs, (j - i) * bs));
    if (encrypted_)
      std::fill(unsynced_.begin() + static_cast<ptrdiff_t>(first + i),
                unsynced_.begin() + static_cast<ptrdiff_t>(first + j), true);
    if (!s) {
      // Put the old contexts back so the active slots describe the data on disk.
      if (!file_->write_at(layout_.slots_offset(first), old_pairs))
        log::error("extent {}: restoring contexts after a failed write also failed", id_);
      return s;
    }
    i = j;
  }
  // A block written whole again holds bytes its new context describes.
  for (size_t i = 0; i < n; ++i)
    if (!skip[i]) damaged_blocks_.erase(first + i);
  return {};
}

Status Extent::discard(uint64_t first, uint64_t count) {
  const uint32_t bs = layout_.block_size;
  CRU_ASSERT(first + count <= layout_.blocks);
  if (read_only_) return fail(ErrorCode::kReadOnly, fmt::format("extent {} is read-only", id_));
  const uint64_t zero_hash = zero_block_hash(bs);
  // Dirty even when every block is already zeros, for a replay (see write()).
  CRU_TRY(mark_dirty(next_slot_seq_));
  for (uint64_t chunk = first; chunk < first + count; chunk += kScanChunkBlocks) {
    uint64_t n = std::min(kScanChunkBlocks, first + count - chunk);
    CRU_TRY_ASSIGN(const std::vector<std::byte> old_pairs, read_slot_pairs(chunk, n));
    std::vector<std::byte> pairs = old_pairs;
    std::vector<bool> change(n, false);
    bool any = false;
    for (uint64_t i = 0; i < n; ++i) {
      auto pair = std::span(pairs).subspan(i * kSlotPairBytes, kSlotPairBytes);
      int active = select_slot(pair, {}, false);
      if (active < 0 || decode_slot(slot_bytes(pair, 0, active)).discarded)
        continue;  // already zeros
      encode_slot(Slot{next_slot_seq_++, zero_hash, true, std::nullopt},
                  slot_bytes(pair, 0, active == 0 ? 1 : 0));
      change[i] = any = true;
    }
    if (!any) continue;
    CRU_TRY(sync_before_overwriting(chunk, n));
    CRU_TRY(file_->write_at(layout_.slots_offset(chunk), pairs));
    if (encrypted_) CRU_TRY(sync());  // as in write(): contexts before data
    for (uint64_t i = 0; i < n;) {
      if (!change[i]) {
        ++i;
        continue;
      }
      uint64_t j = i;
      while (j < n && change[j]) ++j;
      Status s = file_->zero_range(layout_.data_offset(chunk + i), (j - i) * bs, space_);
      if (encrypted_)
        std::fill(unsynced_.begin() + static_cast<ptrdiff_t>(chunk + i),
                  unsynced_.begin() + static_cast<ptrdiff_t>(chunk + j), true);
      if (!s) {
        if (!file_->write_at(layout_.slots_offset(chunk), old_pairs))
          log::error("extent {}: restoring contexts after a failed discard also failed", id_);
        return s;
      }
      i = j;
    }
    for (uint64_t i = 0; i < n; ++i)
      if (change[i]) damaged_blocks_.erase(chunk + i);
  }
  return {};
}

Status Extent::flush(FlushNumber flush, Generation generation) {
  if (!dirty_) return {};
  CRU_TRY(sync());
  CRU_TRY(write_flush_meta(flush, generation));
  CRU_TRY(sync());
  flushed(flush, generation);
  return {};
}

Status Extent::write_flush_meta(FlushNumber flush, Generation generation) {
  CRU_ASSERT(dirty_, "only a dirty extent is flushed");
  if (read_only_)
    return fail(ErrorCode::kReadOnly, fmt::format("extent {} is dirty but opened read-only", id_));
  // The new numbers with the dirty flag still set: the next write then needs no sync to
  // set it (settle() clears it once the extent is at rest).
  return write_meta(generation, flush, true, next_slot_seq_);
}

void Extent::flushed(FlushNumber flush, Generation generation) {
  generation_ = generation;
  flush_ = flush;
  dirty_ = false;
}

Result<std::vector<BlockReport>> Extent::inspect(uint64_t first, uint64_t count) {
  const uint32_t bs = layout_.block_size;
  CRU_ASSERT(first + count <= layout_.blocks);
  std::vector<BlockReport> out;
  out.reserve(count);
  std::vector<std::byte> data(kScanChunkBlocks * bs);
  for (uint64_t chunk = first; chunk < first + count; chunk += kScanChunkBlocks) {
    uint64_t n = std::min(kScanChunkBlocks, first + count - chunk);
    CRU_TRY_ASSIGN(auto pairs, read_slot_pairs(chunk, n));
    auto block_data = std::span(data).first(n * bs);
    CRU_TRY(file_->read_at(layout_.data_offset(chunk), block_data));
    for (uint64_t i = 0; i < n; ++i) {
      auto pair = std::span<const std::byte>(pairs).subspan(i * kSlotPairBytes, kSlotPairBytes);
      auto d = block_data.subspan(i * bs, bs);
      BlockReport r;
      r.slots = {decode_slot(slot_bytes(pair, 0, 0)), decode_slot(slot_bytes(pair, 0, 1))};
      r.data_hash = integrity_hash(d);
      // A clean extent's active slot is the newest; a dirty one's is the newest that
      // matches (what recovery would keep).
      r.active = select_slot(pair, d, dirty_on_disk_);
      if (r.active < 0 && dirty_on_disk_) r.active = select_slot(pair, d, false);
      r.data_matches = r.active >= 0 ? expected_hash(r.slots[r.active], d) == r.slots[r.active].hash
                                     : all_zero(d);
      out.push_back(r);
    }
  }
  return out;
}

}  // namespace cru::downstairs
