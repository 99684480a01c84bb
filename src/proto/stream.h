// The byte stream under a framed connection: a TCP socket, optionally wrapped in TLS.
// FrameSource and FrameSink read and write through it without knowing which. Owned by
// one connection and used on its io thread only; one read and one write may be in
// flight at once (as with a socket).
#pragma once

#include <asio/awaitable.hpp>
#include <asio/buffer.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/ssl/stream.hpp>
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/units.h"

namespace cru::proto {

class TlsContext;

// The largest TLS record's payload: OpenSSL encrypts at most this much per write.
inline constexpr size_t kTlsRecordBytes = 16 * kKiB;

class Stream {
 public:
  explicit Stream(asio::ip::tcp::socket socket);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  // The TCP layer: options, endpoints, connect, close.
  asio::ip::tcp::socket& socket();
  bool tls() const { return tls_ != nullptr; }

  // Wraps the socket in TLS; before any handshake or IO. `context` must outlive this.
  void use_tls(TlsContext& context);
  // The TLS handshake (tls() only). A client given a `host` (an IP address or DNS name)
  // also checks that the server's certificate names it. Throws std::runtime_error
  // "TLS handshake failed: " + OpenSSL's reason, and why the peer's certificate was
  // refused if it was.
  asio::awaitable<void> handshake(asio::ssl::stream_base::handshake_type type,
                                  const std::string& host);

  // Throw asio::system_error on EOF and errors, as the socket's own operations do.
  asio::awaitable<size_t> read_some(asio::mutable_buffer buffer);
  // Asks the kernel not to report the socket readable before `bytes` have arrived
  // (SO_RCVLOWAT), for a reader that knows that many are on their way (the rest of a
  // frame): one wake-up per large piece instead of one per loopback packet. 1 restores
  // the default. Plain TCP only (TLS ciphertext is not the caller's byte count): a no-op
  // with TLS. Throws asio::system_error if the socket refuses.
  void expect_bytes(size_t bytes);
  asio::awaitable<void> write_all(std::span<const asio::const_buffer> buffers);

 private:
  asio::awaitable<void> flush_staged();

  asio::ip::tcp::socket socket_;  // moved into tls_ by use_tls()
  std::unique_ptr<asio::ssl::stream<asio::ip::tcp::socket>> tls_;
  std::vector<std::byte> staged_;  // small buffers gathered into one record (TLS only)
  bool host_mismatch_ = false;     // the server's certificate did not name the host
  size_t low_water_bytes_ = 1;     // SO_RCVLOWAT as last set (1: the kernel's default)
};

}  // namespace cru::proto
