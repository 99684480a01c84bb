#include "proto/stream.h"

#include <fmt/format.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <algorithm>
#include <asio/ssl/host_name_verification.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <stdexcept>

#include "proto/tls.h"

namespace cru::proto {

Stream::Stream(asio::ip::tcp::socket socket) : socket_(std::move(socket)) {}

Stream::~Stream() = default;

asio::ip::tcp::socket& Stream::socket() { return tls_ ? tls_->next_layer() : socket_; }

void Stream::use_tls(TlsContext& context) {
  tls_ = std::make_unique<asio::ssl::stream<asio::ip::tcp::socket>>(std::move(socket_),
                                                                    context.native());
}

asio::awaitable<void> Stream::handshake(asio::ssl::stream_base::handshake_type type,
                                        const std::string& host) {
  if (!host.empty()) {
    // OpenSSL reports a name mismatch only as "unspecified": remember it to say so.
    tls_->set_verify_callback([this, host, check = asio::ssl::host_name_verification(host)](
                                  bool preverified, asio::ssl::verify_context& ctx) mutable {
      bool ok = check(preverified, ctx);
      if (preverified && !ok) host_mismatch_ = true;
      return ok;
    });
  }
  asio::error_code ec;
  try {
    co_await tls_->async_handshake(type, asio::use_awaitable);
    co_return;
  } catch (const asio::system_error& e) {
    ec = e.code();
  }
  // asio's message is OpenSSL's reason ("certificate verify failed"); the verify result
  // says which check the peer's certificate failed.
  std::string why = ec.message();
  long verify = SSL_get_verify_result(tls_->native_handle());
  if (host_mismatch_)
    why += fmt::format(" (the certificate does not name {})", host);
  else if (verify != X509_V_OK)
    why += fmt::format(" ({})", X509_verify_cert_error_string(verify));
  throw std::runtime_error("TLS handshake failed: " + why);
}

asio::awaitable<size_t> Stream::read_some(asio::mutable_buffer buffer) {
  if (tls_) co_return co_await tls_->async_read_some(buffer, asio::use_awaitable);
  co_return co_await socket_.async_read_some(buffer, asio::use_awaitable);
}

void Stream::expect_bytes(size_t bytes) {
  if (tls_ || bytes == low_water_bytes_) return;
  socket_.set_option(asio::socket_base::receive_low_watermark(static_cast<int>(bytes)));
  low_water_bytes_ = bytes;
}

asio::awaitable<void> Stream::write_all(std::span<const asio::const_buffer> buffers) {
  if (!tls_) {
    co_await asio::async_write(socket_, buffers, asio::use_awaitable);
    co_return;
  }
  // asio's TLS stream encrypts one buffer (at most one record) per write: small frames
  // are gathered into whole records first, so each costs a share of a record, not one.
  for (const auto& b : buffers) {
    if (b.size() >= kTlsRecordBytes) {
      co_await flush_staged();
      co_await asio::async_write(*tls_, b, asio::use_awaitable);
      continue;
    }
    const auto* p = static_cast<const std::byte*>(b.data());
    size_t left = b.size();
    while (left > 0) {
      size_t n = std::min(left, kTlsRecordBytes - staged_.size());
      staged_.insert(staged_.end(), p, p + n);
      p += n;
      left -= n;
      if (staged_.size() == kTlsRecordBytes) co_await flush_staged();
    }
  }
  co_await flush_staged();
}

asio::awaitable<void> Stream::flush_staged() {
  if (staged_.empty()) co_return;
  co_await asio::async_write(*tls_, asio::buffer(staged_), asio::use_awaitable);
  staged_.clear();
}

}  // namespace cru::proto
