#include "downstairs/region.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "common/log.h"
#include "common/units.h"
#include "proto/limits.h"

namespace cru::downstairs {

namespace {

constexpr std::string_view kRegionFile = "region.json";
// region.json is a few hundred bytes; anything larger is not ours.
constexpr size_t kMaxRegionFileBytes = 64 * kKiB;
constexpr std::string_view kPromotionFile = "promotion.json";
// A received extent is checked this many blocks at a time, bounding the memory it takes.
constexpr uint64_t kVerifyStepBlocks = 1024;

Status invalid(std::string msg) { return fail(ErrorCode::kInvalidArgument, std::move(msg)); }

// The blocks of [start, start + count) that fall in each extent.
struct ExtentRun {
  ExtentId extent;
  uint64_t first;  // block within the extent
  uint64_t count;
  uint64_t offset;  // blocks from the start of the whole request
};

std::vector<ExtentRun> split(uint64_t extent_size, BlockIndex start, uint64_t count) {
  std::vector<ExtentRun> runs;
  uint64_t done = 0;
  while (done < count) {
    uint64_t block = start.value + done;
    uint64_t in_extent = block % extent_size;
    uint64_t n = std::min(count - done, extent_size - in_extent);
    runs.push_back({ExtentId{static_cast<uint32_t>(block / extent_size)}, in_extent, n, done});
    done += n;
  }
  return runs;
}

}  // namespace

Status validate_geometry(const proto::RegionDefinition& def) {
  if (!proto::valid_block_size(def.block_size))
    return invalid(fmt::format("--block-size {} is not a power of two from {} to {}",
                               def.block_size, proto::kMinBlockSize, proto::kMaxBlockSize));
  if (def.extent_size == 0) return invalid("--extent-size must be at least 1 block");
  if (def.extent_size > kMaxExtentBytes / def.block_size)  // no overflow in extent_bytes()
    return invalid(fmt::format(
        "--extent-size {} blocks of {} bytes is {}; the limit is {} per extent", def.extent_size,
        def.block_size, format_size(def.extent_bytes()), format_size(kMaxExtentBytes)));
  if (def.extent_count == 0) return invalid("--extent-count must be at least 1");
  if (def.extent_count > proto::kMaxExtents)
    return invalid(fmt::format("--extent-count {} exceeds the limit {}", def.extent_count,
                               proto::kMaxExtents));
  return {};
}

// ---- region.json -----------------------------------------------------------------------

static std::string encode_options(const RegionOptions& o) {
  nlohmann::ordered_json j;
  j["format_version"] = kRegionFormatVersion;
  j["uuid"] = o.def.uuid.to_string();
  j["block_size"] = o.def.block_size;
  j["extent_size"] = o.def.extent_size;
  j["extent_count"] = o.def.extent_count;
  j["encrypted"] = o.def.encrypted;
  j["default_port"] = o.default_port;
  j["sparse"] = o.space == Space::kRelease;
  return j.dump(2) + "\n";
}

Result<RegionOptions> Region::read_options(FileSystem& fs, const std::string& dir) {
  std::string path = join_path(dir, std::string(kRegionFile));
  CRU_TRY_ASSIGN(bool there, fs.exists(path));
  if (!there)
    return fail(ErrorCode::kNotFound, fmt::format("{} is not a region: no {}", dir, kRegionFile));
  CRU_TRY_ASSIGN(std::string text, read_whole_file(fs, path, kMaxRegionFileBytes));
  auto bad = [&](std::string why) {
    return fail(ErrorCode::kCorrupt, fmt::format("{}: {}", path, why));
  };
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  RegionOptions o;
  try {
    auto version = j.at("format_version").get<uint32_t>();
    if (version != kRegionFormatVersion)
      return bad(fmt::format("format version {}, this build reads version {}", version,
                             kRegionFormatVersion));
    auto uuid = Uuid::parse(j.at("uuid").get<std::string>());
    if (!uuid) return bad(uuid.error().message);
    o.def.uuid = *uuid;
    o.def.block_size = j.at("block_size").get<uint32_t>();
    o.def.extent_size = j.at("extent_size").get<uint64_t>();
    o.def.extent_count = j.at("extent_count").get<uint32_t>();
    o.def.encrypted = j.at("encrypted").get<bool>();
    o.default_port = j.at("default_port").get<uint16_t>();
    o.space = j.value("sparse", true) ? Space::kRelease : Space::kKeep;
  } catch (const nlohmann::json::exception& e) {
    return bad(e.what());
  }
  if (auto s = validate_geometry(o.def); !s) return bad(s.error().message);
  return o;
}

// ---- promotion.json ----------------------------------------------------------------------

static Result<std::optional<Promotion>> read_promotion(FileSystem& fs, const std::string& dir) {
  const std::string path = join_path(dir, std::string(kPromotionFile));
  CRU_TRY_ASSIGN(bool there, fs.exists(path));
  if (!there) return std::optional<Promotion>{};  // never promoted read-write (or older build)
  CRU_TRY_ASSIGN(std::string text, read_whole_file(fs, path, kMaxRegionFileBytes));
  auto bad = [&](std::string why) {
    return fail(ErrorCode::kCorrupt, fmt::format("{}: {}", path, why));
  };
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  try {
    auto up = Uuid::parse(j.at("upstairs_id").get<std::string>());
    auto session = Uuid::parse(j.at("session_id").get<std::string>());
    if (!up) return bad(up.error().message);
    if (!session) return bad(session.error().message);
    return Promotion{Generation{j.at("generation").get<uint64_t>()}, *up, *session};
  } catch (const nlohmann::json::exception& e) {
    return bad(e.what());
  }
}

Status Region::record_promotion(const Promotion& p) {
  if (read_only_) return fail(ErrorCode::kReadOnly, "the region is open read-only");
  nlohmann::ordered_json j;
  j["generation"] = p.generation.value;
  j["upstairs_id"] = p.upstairs_id.to_string();
  j["session_id"] = p.session_id.to_string();
  CRU_TRY(write_file_atomic(fs_, join_path(dir_, std::string(kPromotionFile)), j.dump(2) + "\n"));
  promotion_ = p;
  return {};
}

// ---- create / open ---------------------------------------------------------------------

Region::Region(FileSystem& fs, std::string dir, RegionOptions options, bool read_only)
    : fs_(fs), dir_(std::move(dir)), options_(options), read_only_(read_only) {
  layout_ = ExtentLayout{options_.def.block_size, options_.def.extent_size};
}

std::string Region::extent_path(ExtentId e) const {
  // As in the original: XX/YYY/ZZZ in hex, so no directory holds more than 4096 files.
  uint32_t n = e.value;
  return join_path(
      dir_, fmt::format("{:02X}/{:03X}/{:03X}", (n >> 24) & 0xff, (n >> 12) & 0xfff, n & 0xfff));
}

Result<std::unique_ptr<Region>> Region::create(FileSystem& fs, const std::string& dir,
                                               const RegionOptions& options) {
  CRU_TRY(validate_geometry(options.def));
  CRU_TRY_ASSIGN(bool there, fs.exists(join_path(dir, std::string(kRegionFile))));
  if (there) return fail(ErrorCode::kAlreadyExists, fmt::format("{} already holds a region", dir));
  CRU_TRY(fs.make_dirs(dir));
  std::unique_ptr<Region> r(new Region(fs, dir, options, false));
  r->options_.def.extent_count = 0;
  CRU_TRY(r->extend(options.def.extent_count));
  return r;
}

Status Region::extend(uint32_t extent_count) {
  if (read_only_) return fail(ErrorCode::kReadOnly, "the region is open read-only");
  if (extent_count <= options_.def.extent_count) return {};
  RegionOptions grown = options_;
  grown.def.extent_count = extent_count;
  CRU_TRY(validate_geometry(grown.def));
  for (uint32_t i = options_.def.extent_count; i < extent_count; ++i) {
    std::string path = extent_path(ExtentId{i});
    Status made = fs_.make_dirs(parent_dir(path));
    if (made) made = Extent::create(fs_, path, layout_, options_.space);
    if (!made) {
      // Not part of the region yet: give back the space of those made so far (a full disk
      // must not be left fuller by a create that failed).
      for (uint32_t k = options_.def.extent_count; k < i; ++k)
        if (auto s = fs_.remove(extent_path(ExtentId{k})); !s)
          log::warn("removing {}: {}", extent_path(ExtentId{k}), s.error().message);
      return made;
    }
  }
  // region.json last: until it names them, the new extents are not part of the region.
  CRU_TRY(write_file_atomic(fs_, join_path(dir_, std::string(kRegionFile)), encode_options(grown)));
  for (uint32_t i = options_.def.extent_count; i < extent_count; ++i) {
    CRU_TRY_ASSIGN(auto e, Extent::open(fs_, extent_path(ExtentId{i}), layout_, ExtentId{i}, false,
                                        grown.def.encrypted, grown.space));
    extents_.push_back(std::move(e));
    closed_versions_.emplace_back();
    epochs_.push_back(0);
    broken_.emplace_back();
  }
  options_ = grown;
  return {};
}

Result<std::unique_ptr<Region>> Region::open(FileSystem& fs, const std::string& dir,
                                             bool read_only) {
  CRU_TRY_ASSIGN(const RegionOptions options, read_options(fs, dir));
  std::unique_ptr<Region> r(new Region(fs, dir, options, read_only));
  CRU_TRY_ASSIGN(r->promotion_, read_promotion(fs, dir));
  r->closed_versions_.resize(options.def.extent_count);
  r->epochs_.assign(options.def.extent_count, 0);
  r->broken_.resize(options.def.extent_count);
  for (uint32_t i = 0; i < options.def.extent_count; ++i) {
    auto e = Extent::open(fs, r->extent_path(ExtentId{i}), r->layout_, ExtentId{i}, read_only,
                          options.def.encrypted, options.space);
    // One bad extent file must not keep the replica from serving the others: the upstairs
    // repairs it from a peer.
    if (e) {
      r->extents_.push_back(std::move(*e));
    } else {
      r->extents_.emplace_back();
      r->mark_broken(ExtentId{i}, e.error());
    }
  }
  return r;
}

// ---- checks ----------------------------------------------------------------------------

Status Region::check_range(BlockIndex start, uint64_t count) const {
  uint64_t total = def().total_blocks();
  if (count == 0 || start.value >= total || count > total - start.value)
    return fail(ErrorCode::kOffsetInvalid,
                fmt::format("blocks [{}, {}) are outside the region's {} blocks", start.value,
                            start.value + count, total));
  return {};
}

Status Region::check_extent(ExtentId e) const {
  if (e.value >= def().extent_count)
    return fail(ErrorCode::kInvalidExtent,
                fmt::format("extent {} does not exist (the region has {})", e, def().extent_count));
  return {};
}

Status Region::check_open(ExtentId e) const {
  CRU_TRY(check_extent(e));
  if (!broken_[e.value].empty())
    return fail(
        ErrorCode::kCorrupt,
        fmt::format("extent {} is damaged ({}); awaiting repair from a peer", e, broken_[e.value]));
  if (extents_[e.value] == nullptr)
    return fail(ErrorCode::kExtentClosed, fmt::format("extent {} is closed for repair", e));
  return {};
}

Result<Extent*> Region::open_extent(ExtentId e) {
  CRU_TRY(check_open(e));
  return extents_[e.value].get();
}

void Region::mark_broken(ExtentId e, const Error& why) {
  log::error("extent {} ({}) is damaged: {}; it is served by the other replicas until repaired", e,
             extent_path(e), why.to_string());
  broken_[e.value] = why.message.empty() ? std::string(error_code_name(why.code)) : why.message;
  extents_[e.value].reset();
  closed_versions_[e.value] = proto::ExtentVersion{Generation{0}, FlushNumber{0}, false, true};
}

std::optional<std::string> Region::damage(ExtentId e) const {
  CRU_ASSERT(e.value < extents_.size());
  if (!broken_[e.value].empty()) return broken_[e.value];
  const Extent* x = extents_[e.value].get();
  if (x != nullptr ? x->damaged_blocks().empty() : !closed_versions_[e.value].damaged)
    return std::nullopt;
  if (x == nullptr) return "blocks that match none of their contexts";
  return fmt::format("{} blocks match none of their contexts (first: block {})",
                     x->damaged_blocks().size(), *x->damaged_blocks().begin());
}

// ---- IO ----------------------------------------------------------------------------------

Result<ReadResult> Region::read(BlockIndex start, uint64_t count) {
  CRU_TRY(check_range(start, count));
  auto runs = split(def().extent_size, start, count);
  for (const auto& run : runs) CRU_TRY(check_open(run.extent));
  const uint32_t bs = def().block_size;
  ReadResult out;
  out.contexts.resize(count);
  out.data = ByteBuffer(count * bs);
  for (const auto& run : runs) {
    CRU_TRY_ASSIGN(Extent * x, open_extent(run.extent));
    CRU_TRY(x->read(run.first, std::span(out.contexts).subspan(run.offset, run.count),
                    out.data.span().subspan(run.offset * bs, run.count * bs)));
  }
  return out;
}

Status Region::write(BlockIndex start, uint32_t block_size,
                     std::span<const proto::BlockContext> contexts, std::span<const std::byte> data,
                     bool only_unwritten) {
  if (read_only_) return fail(ErrorCode::kReadOnly, "write to a read-only region");
  if (block_size != def().block_size)
    return fail(ErrorCode::kBlockSizeMismatch,
                fmt::format("write uses {}-byte blocks, the region {}-byte blocks", block_size,
                            def().block_size));
  CRU_ASSERT(data.size() == contexts.size() * block_size, "the codec checks data against contexts");
  CRU_TRY(check_range(start, contexts.size()));
  auto runs = split(def().extent_size, start, contexts.size());
  for (const auto& run : runs) CRU_TRY(check_open(run.extent));
  // Every block is checked before any is written, so a bad request writes nothing.
  for (size_t i = 0; i < contexts.size(); ++i) {
    const auto& ctx = contexts[i];
    if (ctx.encryption.has_value() != def().encrypted)
      return fail(ErrorCode::kEncryptionMismatch,
                  fmt::format("block {} is {} but the region is {}", start.value + i,
                              ctx.encryption ? "encrypted" : "not encrypted",
                              def().encrypted ? "encrypted" : "not encrypted"));
    Slot as_stored{1, ctx.hash, false, ctx.encryption};
    if (expected_hash(as_stored, data.subspan(i * block_size, block_size)) != ctx.hash)
      return fail(
          ErrorCode::kHashMismatch,
          fmt::format("block {}: data does not match its hash {:016x}", start.value + i, ctx.hash));
  }
  for (const auto& run : runs) {
    CRU_TRY_ASSIGN(Extent * x, open_extent(run.extent));
    CRU_TRY(x->write(run.first, contexts.subspan(run.offset, run.count),
                     data.subspan(run.offset * block_size, run.count * block_size),
                     only_unwritten));
  }
  return {};
}

Status Region::discard(BlockIndex start, uint64_t count) {
  if (read_only_) return fail(ErrorCode::kReadOnly, "discard on a read-only region");
  CRU_TRY(check_range(start, count));
  auto runs = split(def().extent_size, start, count);
  for (const auto& run : runs) CRU_TRY(check_open(run.extent));
  for (const auto& run : runs) {
    CRU_TRY_ASSIGN(Extent * x, open_extent(run.extent));
    CRU_TRY(x->discard(run.first, run.count));
  }
  return {};
}

Status Region::flush(FlushNumber flush, Generation generation,
                     std::optional<ExtentId> extent_limit) {
  uint32_t end = def().extent_count;
  if (extent_limit) {
    CRU_TRY(check_extent(*extent_limit));
    end = extent_limit->value + 1;
  }
  std::vector<Extent*> dirty;
  for (uint32_t i = 0; i < end; ++i)
    if (Extent* x = extents_[i].get(); x != nullptr && x->dirty()) dirty.push_back(x);
  if (dirty.empty()) return {};
  // Each extent's data before its new numbers (see Extent::flush), every extent at once.
  CRU_TRY(sync_all(dirty));
  for (Extent* x : dirty) CRU_TRY(x->write_flush_meta(flush, generation));
  CRU_TRY(sync_all(dirty));
  for (Extent* x : dirty) x->flushed(flush, generation);
  return {};
}

Status Region::sync_all(const std::vector<Extent*>& extents) {
  std::vector<File*> files;
  files.reserve(extents.size());
  for (Extent* x : extents) files.push_back(&x->file());
  CRU_TRY(fs_.sync_all(files));
  for (Extent* x : extents) x->synced();
  return {};
}

Status Region::settle() {
  for (auto& x : extents_)
    if (x) CRU_TRY(x->settle());
  return {};
}

// ---- extents -------------------------------------------------------------------------------

std::vector<proto::ExtentVersion> Region::versions() const {
  std::vector<proto::ExtentVersion> v;
  v.reserve(extents_.size());
  for (size_t i = 0; i < extents_.size(); ++i)
    v.push_back(extents_[i] ? extents_[i]->version() : closed_versions_[i]);
  return v;
}

bool Region::is_open(ExtentId e) const {
  return e.value < extents_.size() && extents_[e.value] != nullptr;
}

Result<proto::ExtentVersion> Region::close_extent(ExtentId e) {
  CRU_TRY(check_extent(e));
  if (!broken_[e.value].empty()) return closed_versions_[e.value];  // nothing open to close
  CRU_TRY_ASSIGN(Extent * x, open_extent(e));
  CRU_TRY(x->settle());
  proto::ExtentVersion v = x->version();
  closed_versions_[e.value] = v;
  extents_[e.value].reset();
  return v;
}

Status Region::flush_extent(ExtentId e, FlushNumber flush, Generation generation) {
  CRU_TRY_ASSIGN(Extent * x, open_extent(e));
  return x->flush(flush, generation);
}

Status Region::reopen_extent(ExtentId e) {
  CRU_TRY(check_extent(e));
  if (extents_[e.value])
    return fail(ErrorCode::kInvalidArgument, fmt::format("extent {} is already open", e));
  if (repairing_.contains(e))
    return fail(ErrorCode::kBusy, fmt::format("extent {} is still being repaired", e));
  ++epochs_[e.value];
  auto x =
      Extent::open(fs_, extent_path(e), layout_, e, read_only_, def().encrypted, options_.space);
  if (!x) {
    // Damaged from now on (versions() says so, IO is refused), so that the upstairs, told
    // of the failure, repairs it rather than retrying a reopen of the same file.
    mark_broken(e, x.error());
    return tl::unexpected(x.error());
  }
  if (!broken_[e.value].empty()) log::info("extent {} is whole again", e);
  broken_[e.value].clear();
  extents_[e.value] = std::move(*x);
  return {};
}

Status Region::reopen_all() {
  for (uint32_t i = 0; i < extents_.size(); ++i) {
    if (extents_[i]) continue;
    const bool damaged = !broken_[i].empty();
    Status s = reopen_extent(ExtentId{i});
    // A damaged extent gets another try (the error may have passed); if it still cannot be
    // opened it stays damaged, reported to the new session, which repairs it.
    if (!s && !damaged) return s;
  }
  return {};
}

Result<std::vector<BlockReport>> Region::inspect(ExtentId e, uint64_t first, uint64_t count) {
  CRU_TRY_ASSIGN(Extent * x, open_extent(e));
  if (first + count > def().extent_size)
    return fail(ErrorCode::kOffsetInvalid,
                fmt::format("blocks [{}, {}) are outside extent {}", first, first + count, e));
  return x->inspect(first, count);
}

// ---- repair ----------------------------------------------------------------------------------

Result<std::unique_ptr<File>> Region::open_for_transfer(ExtentId e) {
  CRU_TRY(check_extent(e));
  if (is_open(e))
    return fail(ErrorCode::kRepair,
                fmt::format("extent {} is open; only a closed extent can be copied", e));
  if (auto why = damage(e))
    return fail(ErrorCode::kCorrupt,
                fmt::format("extent {} is damaged ({}); it cannot be a repair source", e, *why));
  return fs_.open(extent_path(e), OpenMode::kReadOnly);
}

uint64_t Region::extent_epoch(ExtentId e) const {
  CRU_ASSERT(e.value < epochs_.size());
  return epochs_[e.value];
}

Result<std::unique_ptr<RepairStaging>> Region::begin_repair(ExtentId e) {
  if (read_only_) return fail(ErrorCode::kReadOnly, "cannot repair a read-only region");
  CRU_TRY(check_extent(e));
  if (is_open(e))
    return fail(ErrorCode::kRepair,
                fmt::format("extent {} must be closed before it is repaired", e));
  if (repairing_.contains(e))
    return fail(ErrorCode::kBusy, fmt::format("extent {} is already being repaired", e));
  std::string path = Extent::staging_path(extent_path(e));
  CRU_TRY(fs_.make_dirs(parent_dir(path)));  // a damaged region may have lost the directory
  CRU_TRY(fs_.remove(path));
  CRU_TRY_ASSIGN(auto f, fs_.open(path, OpenMode::kCreateExclusive));
  repairing_.insert(e);
  return std::unique_ptr<RepairStaging>(new RepairStaging(*this, e, std::move(f), std::move(path)));
}

RepairStaging::RepairStaging(Region& region, ExtentId extent, std::unique_ptr<File> file,
                             std::string path)
    : region_(region), extent_(extent), file_(std::move(file)), path_(std::move(path)) {}

RepairStaging::~RepairStaging() {
  if (!committed_) {
    file_.reset();
    if (auto s = region_.fs_.remove(path_); !s)
      log::warn("removing {}: {}", path_, s.error().message);
  }
  region_.end_repair(extent_);
}

Status RepairStaging::append(uint64_t offset, std::span<const std::byte> data) {
  if (offset != received_)
    return fail(ErrorCode::kRepair, fmt::format("extent {}: chunk at offset {}, expected {}",
                                                extent_, offset, received_));
  if (received_ + data.size() > region_.extent_file_bytes())
    return fail(ErrorCode::kRepair,
                fmt::format("extent {}: more than the {} bytes of an extent file", extent_,
                            region_.extent_file_bytes()));
  CRU_TRY(file_->write_at(offset, data));
  hash_.update(data);
  received_ += data.size();
  return {};
}

Status RepairStaging::commit(uint64_t file_bytes, uint64_t file_hash) {
  CRU_ASSERT(!committed_);
  if (file_bytes != region_.extent_file_bytes() || received_ != file_bytes)
    return fail(ErrorCode::kRepair,
                fmt::format("extent {}: received {} bytes, source sent {}, an extent file is {}",
                            extent_, received_, file_bytes, region_.extent_file_bytes()));
  if (hash_.digest() != file_hash)
    return fail(
        ErrorCode::kRepair,
        fmt::format("extent {}: transfer checksum mismatch ({:016x} received, {:016x} sent)",
                    extent_, hash_.digest(), file_hash));
  CRU_TRY(file_->sync());
  file_.reset();
  // Check the file opens as an extent, and every block against its context, before it
  // replaces a good one: a latent error on the source must not spread to this replica.
  {
    auto probe = Extent::open(region_.fs_, path_, region_.layout_, extent_, true,
                              region_.def().encrypted, region_.options_.space);
    if (!probe)
      return fail(ErrorCode::kRepair,
                  fmt::format("extent {}: received file is not a valid extent: {}", extent_,
                              probe.error().message));
    const uint64_t blocks = region_.layout_.blocks;
    for (uint64_t first = 0; first < blocks; first += kVerifyStepBlocks) {
      uint64_t n = std::min(kVerifyStepBlocks, blocks - first);
      auto report = (*probe)->inspect(first, n);
      if (!report)
        return fail(ErrorCode::kRepair, fmt::format("extent {}: checking the received copy: {}",
                                                    extent_, report.error().message));
      for (uint64_t i = 0; i < n; ++i)
        // kHashMismatch, not kRepair: it tells the upstairs the source's copy is damaged.
        if (!(*report)[i].data_matches)
          return fail(ErrorCode::kHashMismatch,
                      fmt::format("extent {}: block {} of the received copy does not match its "
                                  "hash (the source's copy is damaged); not taken",
                                  extent_, first + i));
    }
  }
  std::string target = region_.extent_path(extent_);
  CRU_TRY(region_.fs_.rename(path_, target));
  committed_ = true;
  return region_.fs_.sync_dir(parent_dir(target));
}

}  // namespace cru::downstairs
