// Encoding and decoding of protocol frames. Pure functions over bytes, no asio: the
// socket side lives in framed_socket.h. A frame is
//   u32 frame_bytes (whole frame, including this header) | u32 tag | u32 meta_bytes |
//   metadata (meta_bytes) | bulk data (the rest)
// with every integer little-endian. See docs/protocol.md for each message's fields.
// Decoding never throws, never reads past its input and never allocates more than the
// input's length; every failure is an Error with code kProtocol naming what was wrong.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "common/bytes.h"
#include "common/result.h"
#include "proto/limits.h"
#include "proto/messages.h"

namespace cru::proto {

// An encoded frame ready for one gather write: the header and metadata, then the data
// (shared, not copied).
struct EncodedFrame {
  std::vector<std::byte> head;
  Bytes data;
  size_t size() const { return head.size() + data.size(); }
};

// Precondition: m satisfies validate(m) (messages are built by this program; a message
// breaking a protocol limit is a bug).
EncodedFrame encode(const Message& m);
// encode() flattened into one buffer (tests, fuzz corpus).
std::vector<std::byte> encode_flat(const Message& m);

struct FrameHeader {
  uint32_t frame_bytes = 0;
  uint32_t tag = 0;
  uint32_t meta_bytes = 0;
  uint64_t data_bytes() const { return frame_bytes - kFrameHeaderBytes - meta_bytes; }
};

// Checks the fixed header: lengths within limits, a known tag, and no bulk data on a
// message that has none.
Result<FrameHeader> parse_header(std::span<const std::byte, kFrameHeaderBytes> bytes);
// Decodes a message from its metadata and bulk data (header already parsed). Rejects
// truncated or trailing metadata and any field or length out of range (validate()).
Result<Message> decode(const FrameHeader& header, std::span<const std::byte> meta, Bytes data);
// One whole frame in a contiguous buffer, which must hold exactly one frame.
Result<Message> decode_frame(std::span<const std::byte> frame);

// The semantic limits of a message: block sizes, block counts, data length equal to
// block count times block size, dependency counts, client ids.
Status validate(const Message& m);

// A region's geometry as a peer reports it (RegionInfo): a valid block size, 1 to
// kMaxExtentBytes per extent, 1 to kMaxExtents extents. Within these no size computed from
// it overflows. The error (kProtocol) names the field.
Status check_region(const RegionDefinition& def);

// The downstairs' check of a HereIAm's version, naming both versions on a mismatch.
Status check_version(uint32_t peer_version);

}  // namespace cru::proto
