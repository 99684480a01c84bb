// Expected failures as values. An Error carries a typed code (the same codes travel on the
// wire, see proto/codec) and a human message naming what was wrong. Result<T> is
// tl::expected<T, Error>; functions that can fail for operating reasons return it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <tl/expected.hpp>
#include <utility>

namespace cru {

// Wire-visible: values are part of the protocol. Append only; bump kProtocolVersion
// when a code changes meaning.
enum class ErrorCode : uint16_t {
  kOk = 0,
  kIo = 1,                 // the disk failed (EIO, ENOSPC, ...)
  kOffsetInvalid = 2,      // IO outside the region
  kOffsetUnaligned = 3,    // byte offset not a multiple of the block size
  kDataLenUnaligned = 4,   // byte length not a multiple of the block size
  kBlockSizeMismatch = 5,  // message block size differs from the region's
  kInvalidExtent = 6,      // extent id out of range
  kExtentClosed = 7,       // IO to an extent closed for repair
  kHashMismatch = 8,       // block data does not match its integrity hash
  kReadOnly = 9,           // modifying a read-only region or volume
  kUuidMismatch = 10,      // wrong upstairs/session/region id
  kGenerationTooLow = 11,  // a generation lower than the current one
  kVersionMismatch = 12,   // protocol version differs
  kEncryptionMismatch = 13,
  kReadOnlyMismatch = 14,
  kNotActive = 15,       // request needs an active session/volume
  kNoLongerActive = 16,  // a newer upstairs took over
  kProtocol = 17,        // malformed or out-of-order message
  kRepair = 18,          // extent repair failed
  kInjected = 19,        // an error injected by a test flag
  kDecrypt = 20,         // AEAD authentication failed
  kTimeout = 21,
  kDisconnected = 22,
  kQuorumLost = 23,       // fewer than two downstairs can take the IO
  kInvalidArgument = 24,  // bad flag, config value or API argument
  kUnsupported = 25,
  kCorrupt = 26,        // on-disk data failed validation
  kAlreadyExists = 27,  // e.g. creating a region where one exists
  kNotFound = 28,
  kBusy = 29,  // refused now, may succeed later (e.g. repair while degraded)
  kShutdown = 30,
  kIoTooLarge = 31,  // one IO whose reply (or request) could not fit in one frame
  // A flush carrying a snapshot name was made durable, but its snapshot was not taken
  // (bad or duplicate name, extents under repair, no space): the replica is still whole.
  kSnapshotFailed = 32,
};
inline constexpr uint16_t kErrorCodeMax = 32;

std::string_view error_code_name(ErrorCode code);

struct Error {
  ErrorCode code = ErrorCode::kIo;
  std::string message;

  std::string to_string() const;
  friend bool operator==(const Error&, const Error&) = default;
};

template <typename T>
using Result = tl::expected<T, Error>;
using Status = Result<void>;

inline tl::unexpected<Error> fail(ErrorCode code, std::string message) {
  return tl::unexpected<Error>(Error{code, std::move(message)});
}

}  // namespace cru

// The one try helper: `if (!x) return tl::unexpected(x.error());` in one line.
//
// CRU_TRY(expr): evaluates a Result (usually a Status); on error returns the error from the
// enclosing function, which returns some Result<U>. Any value is discarded.
#define CRU_TRY(expr)                                                        \
  do {                                                                       \
    if (auto&& cru_try_result_ = (expr); !cru_try_result_)                   \
      return ::tl::unexpected<::cru::Error>(                                 \
          std::forward<decltype(cru_try_result_)>(cru_try_result_).error()); \
  } while (0)

// CRU_TRY_ASSIGN(decl, expr): evaluates a Result<T>; on error returns the error as CRU_TRY
// does, otherwise moves the value into `decl`, a declaration (`auto f`, `uint64_t n`) or an
// lvalue. It expands to several statements in the enclosing scope: use it as a statement of
// its own (never as the body of an unbraced if or loop), at most once per line.
#define CRU_TRY_ASSIGN(decl, expr) CRU_TRY_ASSIGN_(CRU_TRY_NAME_(__LINE__), decl, expr)
// NOLINTBEGIN(bugprone-macro-parentheses): decl is a declaration and tmp a name.
#define CRU_TRY_ASSIGN_(tmp, decl, expr)                                   \
  auto tmp = (expr);                                                       \
  if (!tmp) return ::tl::unexpected<::cru::Error>(std::move(tmp.error())); \
  decl = std::move(*tmp)
// NOLINTEND(bugprone-macro-parentheses)
#define CRU_TRY_NAME_(line) CRU_TRY_CONCAT_(cru_try_value_, line)
#define CRU_TRY_CONCAT_(a, b) a##b
