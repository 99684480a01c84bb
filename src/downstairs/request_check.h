// Validation of a request from an upstairs against the region it addresses, before the
// core queues it, allocates for it or touches the disk. The codec's checks (proto::validate)
// bound what a frame may hold; these bound what it may ask of this region. Pure; used by
// the downstairs core on its thread.
#pragma once

#include "common/result.h"
#include "proto/messages.h"

namespace cru::downstairs {

// Ok, or the typed error the request is answered with, naming the offending field:
//   kProtocol        the message breaks a protocol limit (proto::validate), names job 0, or
//                    depends on itself or a later job (it could never run);
//   kOffsetInvalid   blocks outside the region;
//   kBlockSizeMismatch a write with blocks of another size than the region's;
//   kIoTooLarge      an IO whose data, or for a Read whose reply, exceeds kMaxIoBytes;
//   kInvalidExtent   an extent number (repair, live repair, a flush's extent_limit) that
//                    the region does not have;
//   kInvalidArgument a repair source address that is not host:port.
// Messages that are not requests (negotiation, replies) are ok here.
Status check_request(const proto::Message& m, const proto::RegionDefinition& def);

// The reply that carries `error` for request `m` (an Ack, ReadResponse,
// ExtentLiveCloseAck or RepairAck, as the request would have been answered), or nullopt
// if `m` is not answered that way.
std::optional<proto::Message> error_reply(const proto::Message& m, const Error& error);

}  // namespace cru::downstairs
