// Sample messages for the protocol tests: at least one instance of every alternative of
// proto::Message, with edge values (zero and maximum integers, empty and full vectors,
// optionals present and absent, encrypted and missing contexts, error statuses).
// Codec.SamplesCoverEveryMessageType fails when a message is added to the variant
// without a sample here. The declarations are repeated in each test file that uses them
// (this directory holds only .cc files).
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "proto/limits.h"
#include "proto/messages.h"

namespace cru::proto::testing {

Bytes pattern_bytes(size_t size, uint64_t seed);

namespace {

constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();
constexpr uint32_t kU32Max = std::numeric_limits<uint32_t>::max();

EncryptionContext encryption(uint8_t seed) {
  EncryptionContext e;
  for (size_t i = 0; i < e.nonce.size(); ++i) e.nonce[i] = static_cast<uint8_t>(seed + i);
  for (size_t i = 0; i < e.tag.size(); ++i) e.tag[i] = static_cast<uint8_t>(0xF0 - seed - i);
  return e;
}

BlockContext plain_context(uint64_t hash) { return BlockContext{hash, std::nullopt}; }
BlockContext encrypted_context(uint64_t hash) {
  return BlockContext{hash, encryption(static_cast<uint8_t>(hash))};
}

WireStatus error_status(ErrorCode code, std::string message) {
  return WireStatus{code, std::move(message)};
}

template <typename T>
T write_like(JobId job, std::vector<JobId> deps, BlockIndex start, uint32_t block_size,
             std::vector<BlockContext> contexts, uint64_t data_seed) {
  T w;
  w.job_id = job;
  w.deps = std::move(deps);
  w.start = start;
  w.block_size = block_size;
  w.data = pattern_bytes(contexts.size() * block_size, data_seed);
  w.contexts = std::move(contexts);
  return w;
}

}  // namespace

Bytes pattern_bytes(size_t size, uint64_t seed) {
  ByteBuffer b(size);
  std::mt19937_64 rng(seed);
  size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    uint64_t v = rng();
    std::memcpy(b.data() + i, &v, 8);
  }
  for (; i < size; ++i) b.data()[i] = static_cast<std::byte>(rng());
  return Bytes(std::move(b));
}

Uuid test_uuid(uint8_t first) {
  Uuid u;
  for (size_t i = 0; i < u.bytes.size(); ++i) u.bytes[i] = static_cast<uint8_t>(first + i);
  return u;
}

// Small enough to be split at every byte offset: data of a few blocks, short lists.
std::vector<Message> small_samples() {
  const Uuid up = test_uuid(0x10), session = test_uuid(0x20), region = test_uuid(0xF0);
  std::vector<Message> s;

  // negotiation
  s.push_back(HereIAm{});
  s.push_back(HereIAm{kU32Max, up, session, Generation{kU64Max}, true, true});
  s.push_back(HereIAm{kProtocolVersion, up, session, Generation{7}, false, true});
  s.push_back(YesItsMe{kProtocolVersion, "127.0.0.1:3801", Generation{3}});
  s.push_back(YesItsMe{0, "", Generation{0}});
  s.push_back(YesItsMe{kU32Max, std::string(kMaxStringBytes, 'a'), Generation{kU64Max}});
  s.push_back(VersionMismatch{0});
  s.push_back(VersionMismatch{kU32Max});
  s.push_back(ReadOnlyMismatch{true});
  s.push_back(ReadOnlyMismatch{false});
  s.push_back(EncryptedMismatch{true});
  s.push_back(EncryptedMismatch{false});
  s.push_back(PromoteToActive{up, session, Generation{kU64Max}});
  s.push_back(PromoteToActive{});
  s.push_back(YouAreNowActive{up, session, Generation{1}});
  s.push_back(YouAreNoLongerActive{session, up, Generation{kU64Max}});
  s.push_back(UuidMismatch{region});
  s.push_back(RegionInfoPlease{});
  s.push_back(RegionInfo{RegionDefinition{4096, 16384, 128, region, false}});
  s.push_back(RegionInfo{RegionDefinition{kU32Max, kU64Max, kU32Max, region, true}});
  s.push_back(ExtentVersionsPlease{});
  s.push_back(ExtentVersions{});
  s.push_back(ExtentVersions{{ExtentVersion{Generation{0}, FlushNumber{0}, false},
                              ExtentVersion{Generation{kU64Max}, FlushNumber{kU64Max}, true},
                              ExtentVersion{Generation{3}, FlushNumber{9}, true},
                              ExtentVersion{Generation{4}, FlushNumber{2}, false, true}}});
  s.push_back(LastFlush{JobId{0}});
  s.push_back(LastFlush{JobId{kU64Max}});

  // IO
  s.push_back(write_like<Write>(JobId{1000}, {}, BlockIndex{0}, 512, {plain_context(1)}, 1));
  s.push_back(write_like<Write>(JobId{kU64Max}, {JobId{1}, JobId{999}, JobId{kU64Max}},
                                BlockIndex{kU64Max}, 4096,
                                {encrypted_context(2), encrypted_context(3)}, 2));
  s.push_back(write_like<Write>(JobId{1001}, {JobId{1000}}, BlockIndex{5}, kMaxBlockSize,
                                {plain_context(kU64Max)}, 3));
  s.push_back(write_like<WriteUnwritten>(JobId{1002}, {}, BlockIndex{7}, 512,
                                         {plain_context(4), encrypted_context(5)}, 4));
  s.push_back(write_like<WriteUnwritten>(JobId{kU64Max}, {JobId{kU64Max}}, BlockIndex{kU64Max},
                                         1024, {encrypted_context(6)}, 5));
  s.push_back(Read{JobId{1003}, {}, BlockIndex{0}, 1});
  s.push_back(Read{JobId{kU64Max}, {JobId{1}, JobId{kU64Max}}, BlockIndex{kU64Max}, kMaxIoBlocks});
  {
    ReadResponse r{JobId{1003},
                   WireStatus::ok(),
                   512,
                   {plain_context(7), std::nullopt, encrypted_context(8)},
                   pattern_bytes(3 * 512, 6)};
    s.push_back(std::move(r));
  }
  s.push_back(ReadResponse{
      JobId{1004}, WireStatus::ok(), 4096, {std::nullopt, std::nullopt}, Bytes::zeros(2 * 4096)});
  s.push_back(
      ReadResponse{JobId{kU64Max}, error_status(ErrorCode::kIo, "pread: EIO"), 512, {}, {}});
  s.push_back(ReadResponse{JobId{1005}, error_status(ErrorCode::kShutdown, ""), 0, {}, {}});
  s.push_back(Discard{JobId{1006}, {JobId{1005}}, BlockIndex{3}, 1});
  s.push_back(Discard{JobId{kU64Max}, {}, BlockIndex{kU64Max}, kMaxDiscardBlocks});
  s.push_back(Flush{JobId{1007},
                    {JobId{1000}, JobId{1006}},
                    FlushNumber{1},
                    Generation{1},
                    std::nullopt,
                    std::nullopt});
  s.push_back(Flush{JobId{kU64Max},
                    {},
                    FlushNumber{kU64Max},
                    Generation{kU64Max},
                    std::string("snapshot-1"),
                    ExtentId{kU32Max}});
  s.push_back(Flush{JobId{1008}, {}, FlushNumber{2}, Generation{1}, std::string(), ExtentId{0}});
  s.push_back(Barrier{JobId{1009}, {}});
  s.push_back(Barrier{JobId{kU64Max}, {JobId{1007}, JobId{1008}}});
  // IO jobs of a sampled trace (protocol 5)
  {
    const TraceContext trace{0x0123456789abcdefULL, 0xfedcba9876543210ULL, 0x1122334455667788ULL,
                             TraceContext::kSampled};
    const TraceContext extremes{kU64Max, kU64Max, kU64Max, TraceContext::kSampled};
    auto w =
        write_like<Write>(JobId{1010}, {JobId{1009}}, BlockIndex{2}, 512, {plain_context(9)}, 7);
    w.trace = trace;
    s.push_back(std::move(w));
    auto wu =
        write_like<WriteUnwritten>(JobId{1011}, {}, BlockIndex{3}, 512, {plain_context(10)}, 8);
    wu.trace = TraceContext{0, 1, 1, TraceContext::kSampled};  // a 64-bit trace id
    s.push_back(std::move(wu));
    s.push_back(Read{JobId{1012}, {}, BlockIndex{4}, 2, trace});
    s.push_back(Discard{JobId{1013}, {}, BlockIndex{5}, 3, extremes});
    s.push_back(
        Flush{JobId{1014}, {}, FlushNumber{3}, Generation{1}, std::nullopt, std::nullopt, trace});
    s.push_back(Barrier{JobId{1015}, {}, TraceContext{1, 0, 1, TraceContext::kSampled}});
  }
  s.push_back(Ack{JobId{1000}, WireStatus::ok()});
  s.push_back(Ack{JobId{kU64Max}, error_status(ErrorCode::kReadOnly, "region is read-only")});

  // reconciliation
  s.push_back(ExtentFlush{RepairId{1}, ExtentId{2}, ClientId{0}, FlushNumber{3}, Generation{4}});
  s.push_back(ExtentFlush{RepairId{kU64Max}, ExtentId{kU32Max}, ClientId{2}, FlushNumber{kU64Max},
                          Generation{kU64Max}});
  s.push_back(ExtentClose{RepairId{5}, ExtentId{6}});
  s.push_back(ExtentRepair{RepairId{7}, ExtentId{8}, ClientId{1}, "10.0.0.1:4000", {ClientId{0}}});
  s.push_back(ExtentRepair{
      RepairId{kU64Max}, ExtentId{kU32Max}, ClientId{2}, "", {ClientId{0}, ClientId{1}}});
  s.push_back(ExtentReopen{RepairId{9}, ExtentId{10}});
  s.push_back(RepairAck{RepairId{11}, WireStatus::ok()});
  s.push_back(RepairAck{RepairId{12}, error_status(ErrorCode::kRepair, "fetch failed")});

  // live repair
  s.push_back(ExtentLiveClose{JobId{1010}, {JobId{1009}}, ExtentId{3}});
  s.push_back(ExtentLiveFlushClose{JobId{1011}, {}, ExtentId{3}, FlushNumber{4}, Generation{2}});
  s.push_back(ExtentLiveRepair{
      JobId{1012}, {JobId{1010}, JobId{1011}}, ExtentId{3}, ClientId{1}, "127.0.0.1:5001"});
  s.push_back(ExtentLiveReopen{JobId{1013}, {JobId{1012}}, ExtentId{kU32Max}});
  s.push_back(ExtentLiveNoOp{JobId{1014}, {}});
  s.push_back(ExtentLiveCloseAck{JobId{1010}, WireStatus::ok(),
                                 ExtentVersion{Generation{2}, FlushNumber{4}, true}});
  s.push_back(ExtentLiveCloseAck{JobId{1011}, error_status(ErrorCode::kExtentClosed, "closed"),
                                 ExtentVersion{}});

  // extent transfer
  s.push_back(RepairHello{});
  s.push_back(RepairHello{kU32Max});
  s.push_back(ExtentFetch{ExtentId{3}, 0, std::nullopt});
  s.push_back(ExtentFetch{ExtentId{kU32Max}, kU64Max, kU64Max});
  s.push_back(ExtentFetch{ExtentId{3}, 1, 0});
  s.push_back(ExtentChunk{ExtentId{3}, 0, false, Bytes{}});
  s.push_back(ExtentChunk{ExtentId{3}, kU64Max, false, pattern_bytes(1000, 7)});
  s.push_back(ExtentChunk{ExtentId{3}, 1u << 20, true, Bytes{}});
  s.push_back(ExtentFetchDone{ExtentId{3}, WireStatus::ok(), 1000, kU64Max});
  s.push_back(
      ExtentFetchDone{ExtentId{4}, error_status(ErrorCode::kNotFound, "no extent 4"), 0, 0});

  // liveness and errors
  s.push_back(Ruok{});
  s.push_back(Imok{});
  s.push_back(ErrorReport{JobId{0}, error_status(ErrorCode::kUuidMismatch, "wrong region")});
  s.push_back(ErrorReport{JobId{kU64Max}, error_status(ErrorCode::kProtocol, "bad frame")});
  return s;
}

// The largest legal messages: a full dependency list, the largest IO (kMaxIoBlocks blocks
// of 512 bytes, 64 MiB, with encrypted contexts) and the largest repair chunk.
std::vector<Message> huge_samples() {
  std::vector<JobId> max_deps(kMaxDependencies);
  for (uint32_t i = 0; i < kMaxDependencies; ++i) max_deps[i] = JobId{kU64Max - i};
  std::vector<Message> s;
  s.push_back(Barrier{JobId{kU64Max}, max_deps});
  s.push_back(Flush{JobId{2000}, max_deps, FlushNumber{kU64Max}, Generation{kU64Max},
                    std::string(kMaxStringBytes, 's'), ExtentId{kU32Max}});
  {
    std::vector<BlockContext> contexts(kMaxIoBlocks);
    for (uint32_t i = 0; i < kMaxIoBlocks; ++i) contexts[i] = encrypted_context(kU64Max - i);
    s.push_back(write_like<Write>(JobId{kU64Max}, max_deps, BlockIndex{kU64Max - kMaxIoBlocks},
                                  kMinBlockSize, std::move(contexts), 8));
  }
  {
    ReadResponse r{JobId{kU64Max}, WireStatus::ok(), kMinBlockSize, {}, {}};
    r.contexts.resize(kMaxIoBlocks);
    for (uint32_t i = 0; i < kMaxIoBlocks; ++i)
      if (i % 3 != 0) r.contexts[i] = encrypted_context(i);
    r.data = pattern_bytes(uint64_t{kMaxIoBlocks} * kMinBlockSize, 9);
    s.push_back(std::move(r));
  }
  s.push_back(ExtentChunk{ExtentId{kU32Max}, kU64Max - kRepairChunkBytes, false,
                          pattern_bytes(kRepairChunkBytes, 10)});
  return s;
}

}  // namespace cru::proto::testing
