// TlsContext::load's checks and errors (each names the file and OpenSSL's reason), and
// FramedConnection over mutual TLS on loopback: a served and a connecting connection with
// certificates from one CA exchange frames both ways (TLS records gathered from small
// frames and whole large ones); a client from a foreign CA, a plain-TCP client, and one
// that says nothing are refused at the handshake with the reason. Certificates come from
// common/pki, in a temp dir per test.
#include "proto/tls.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/bytes.h"
#include "common/hash.h"
#include "common/pki.h"
#include "proto/connection.h"
#include "support/process.h"
#include "unit/proto/recording.h"

namespace cru::proto {
namespace {

using asio::ip::tcp;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
using test::Millis;

constexpr Millis kTimeout{20000};

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = "/tmp/cru-tls-test-XXXXXX";
    ASSERT_NE(::mkdtemp(templ.data()), nullptr);
    dir_ = templ;
    ASSERT_TRUE(write_local_pki(dir_ + "/pki", {"server", "client"}));
    ASSERT_TRUE(write_local_pki(dir_ + "/foreign", {"client"}));
  }
  void TearDown() override { fs::remove_all(dir_); }
  TlsFiles files(const std::string& pki, const std::string& name) const {
    return local_pki_files(dir_ + "/" + pki, name);
  }
  std::string write(const std::string& name, const std::string& text) const {
    std::string path = dir_ + "/" + name;
    std::ofstream(path) << text;
    return path;
  }
  std::shared_ptr<TlsContext> load(const TlsFiles& f) const {
    auto t = TlsContext::load(f);
    EXPECT_TRUE(t) << t.error().to_string();
    return t ? *t : nullptr;
  }
  std::string dir_;
};

// ---- loading ----

TEST_F(TlsTest, LoadsACertificateItsKeyAndTheCa) { EXPECT_TRUE(load(files("pki", "server"))); }

TEST_F(TlsTest, LocalPkiKeysAreWrittenWithMode0600) {
  for (const auto& key : {dir_ + "/pki/ca-key.pem", files("pki", "server").key}) {
    auto perms = fs::status(key).permissions();
    EXPECT_EQ(perms, fs::perms::owner_read | fs::perms::owner_write) << key;
  }
  EXPECT_FALSE(write_local_pki(dir_ + "/pki", {"server"})) << "never overwrites";
}

TEST_F(TlsTest, MissingFileIsNamedWithItsRole) {
  TlsFiles f = files("pki", "server");
  f.ca = dir_ + "/nope.pem";
  auto t = TlsContext::load(f);
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().message, "TLS CA file " + f.ca + ": No such file or directory");
}

TEST_F(TlsTest, KeyFileReadableByOthersIsRefused) {
  TlsFiles f = files("pki", "server");
  fs::permissions(f.key, fs::perms::group_read, fs::perm_options::add);
  auto t = TlsContext::load(f);
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().message,
            "TLS key file " + f.key + ": mode 0640 lets others read it; chmod 600 it");
}

TEST_F(TlsTest, NotPemCertificateIsNamedWithOpensslsReason) {
  TlsFiles f = files("pki", "server");
  f.cert = write("junk.pem", "not a certificate\n");
  auto t = TlsContext::load(f);
  ASSERT_FALSE(t);
  const std::string& m = t.error().message;
  EXPECT_EQ(m.rfind("TLS certificate file " + f.cert + ": ", 0), 0u) << m;
  EXPECT_NE(m.find("no start line"), std::string::npos) << m;
}

TEST_F(TlsTest, KeyOfAnotherCertificateIsRefusedNamingBoth) {
  TlsFiles f = files("pki", "server");
  f.key = files("pki", "client").key;
  auto t = TlsContext::load(f);
  ASSERT_FALSE(t);
  const std::string& m = t.error().message;
  EXPECT_EQ(m, "TLS key file " + f.key + " (for certificate file " + f.cert +
                   "): x509 certificate routines::key values mismatch");
}

TEST_F(TlsTest, CaFileWithoutACertificateIsRefused) {
  TlsFiles f = files("pki", "server");
  f.ca = write("empty-ca.pem", "");
  auto t = TlsContext::load(f);
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().message.rfind("TLS CA file " + f.ca + ": ", 0), 0u) << t.error().message;
}

// ---- connections ----

FramedConnection::Options options(std::shared_ptr<TlsContext> tls, bool check_host = false) {
  FramedConnection::Options o;
  o.outbox_frames = 64;
  o.tls = std::move(tls);
  o.tls_check_host = check_host;
  return o;
}

// A listener that serves each accepted socket with `server_options`.
class TlsServer {
 public:
  TlsServer(asio::io_context& io, FramedConnection::Options server_options, Record& r,
            asio::ip::address_v4 address = asio::ip::address_v4::loopback())
      : acceptor_(io, tcp::endpoint(address, 0)), options_(std::move(server_options)), record_(r) {
    acceptor_.async_accept([this](const asio::error_code& ec, tcp::socket s) {
      if (!ec) conn_ = FramedConnection::serve(std::move(s), options_, recording(record_));
    });
  }
  std::string address() const {
    auto ep = acceptor_.local_endpoint();
    return ep.address().to_string() + ":" + std::to_string(ep.port());
  }
  uint16_t port() const { return acceptor_.local_endpoint().port(); }
  FramedConnection::Ptr& conn() { return conn_; }

 private:
  tcp::acceptor acceptor_;
  FramedConnection::Options options_;
  Record& record_;
  FramedConnection::Ptr conn_;
};

TEST_F(TlsTest, PeersFromOneCaExchangeSmallAndLargeFramesBothWays) {
  asio::io_context io;
  Record sr, cr;
  TlsServer server(io, options(load(files("pki", "server"))), sr);
  auto client =
      FramedConnection::connect(io.get_executor(), server.address(),
                                options(load(files("pki", "client")), true), recording(cr));
  // Many small frames (gathered into records) and one larger than a record.
  for (int i = 0; i < 40; ++i) ASSERT_TRUE(client->send(Ruok{}));
  constexpr uint32_t kBlockBytes = 4096;
  constexpr int kBlocks = 16;
  ByteBuffer data = ByteBuffer::zeros(size_t{kBlockBytes} * kBlocks);
  for (size_t i = 0; i < data.size(); ++i) data.data()[i] = static_cast<std::byte>(i * 13);
  Write w;
  w.job_id = JobId{1};
  w.start = BlockIndex{0};
  w.block_size = kBlockBytes;
  for (int b = 0; b < kBlocks; ++b)
    w.contexts.push_back(
        {integrity_hash(data.span().subspan(size_t{kBlockBytes} * b, kBlockBytes)), std::nullopt});
  w.data = Bytes(std::move(data));
  ASSERT_TRUE(client->send(w));
  ASSERT_TRUE(run_until(io, [&] { return sr.messages.size() == 41; }));
  ASSERT_TRUE(std::holds_alternative<Write>(sr.messages[40]));
  EXPECT_EQ(std::get<Write>(sr.messages[40]).data, w.data);
  EXPECT_EQ(cr.connected, 1);
  ASSERT_TRUE(server.conn());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(server.conn()->send(Imok{}));
  ASSERT_TRUE(run_until(io, [&] { return cr.messages.size() == 3; }));
  EXPECT_TRUE(sr.closed.empty());
  EXPECT_TRUE(cr.closed.empty());
  client->close("done");
  ASSERT_TRUE(run_until(io, [&] { return !sr.closed.empty() && !cr.closed.empty(); }));
}

TEST_F(TlsTest, ServerRefusesAClientFromAForeignCaNamingTheReason) {
  asio::io_context io;
  Record sr, cr;
  TlsServer server(io, options(load(files("pki", "server"))), sr);
  TlsFiles foreign = files("foreign", "client");
  foreign.ca = files("pki", "client").ca;  // trusts the server; the server does not trust it
  auto client = FramedConnection::connect(io.get_executor(), server.address(),
                                          options(load(foreign), true), recording(cr));
  ASSERT_TRUE(client->send(Ruok{}));
  ASSERT_TRUE(run_until(io, [&] { return !sr.closed.empty() && !cr.closed.empty(); }));
  EXPECT_TRUE(sr.messages.empty());
  EXPECT_EQ(sr.closed[0],
            "TLS handshake failed: certificate verify failed (SSL routines) (unable to get local "
            "issuer certificate)");
}

TEST_F(TlsTest, ClientRefusesAServerFromAForeignCa) {
  asio::io_context io;
  Record sr, cr;
  TlsFiles server_files = files("foreign", "client");
  server_files.ca = files("pki", "client").ca;
  TlsServer server(io, options(load(server_files)), sr);
  auto client =
      FramedConnection::connect(io.get_executor(), server.address(),
                                options(load(files("pki", "client")), true), recording(cr));
  ASSERT_TRUE(run_until(io, [&] { return !cr.closed.empty(); }));
  EXPECT_EQ(cr.connected, 0);
  EXPECT_NE(cr.closed[0].find("TLS handshake failed: certificate verify failed"), std::string::npos)
      << cr.closed[0];
}

TEST_F(TlsTest, ClientRefusesAServerWhoseCertificateDoesNotNameTheHost) {
  asio::io_context io;
  Record sr, cr;
  // Linux routes all of 127/8 to loopback; the certificates name 127.0.0.1 only.
  TlsServer server(io, options(load(files("pki", "server"))), sr,
                   asio::ip::make_address_v4("127.0.0.2"));
  auto client =
      FramedConnection::connect(io.get_executor(), server.address(),
                                options(load(files("pki", "client")), true), recording(cr));
  ASSERT_TRUE(run_until(io, [&] { return !cr.closed.empty(); }));
  EXPECT_EQ(cr.connected, 0);
  EXPECT_EQ(cr.closed[0],
            "TLS handshake failed: certificate verify failed (SSL routines) (the certificate does "
            "not name 127.0.0.2)");
}

TEST_F(TlsTest, ServerRefusesPlainTcpAndTimesOutASilentPeer) {
  asio::io_context io;
  Record sr;
  TlsServer server(io, options(load(files("pki", "server"))), sr);
  auto plain = test::Peer::connect(server.port(), kTimeout);
  ASSERT_TRUE(plain);
  ASSERT_TRUE(plain->send(Ruok{}));
  ASSERT_TRUE(run_until(io, [&] { return !sr.closed.empty(); }));
  EXPECT_TRUE(sr.messages.empty());
  EXPECT_EQ(sr.closed[0].rfind("TLS handshake failed: wrong version number", 0), 0u)
      << sr.closed[0];

  Record silent_record;
  TlsServer silent_server(io, options(load(files("pki", "server"))), silent_record);
  auto silent = test::Peer::connect(silent_server.port(), kTimeout);
  ASSERT_TRUE(silent);
  ASSERT_TRUE(run_until(
      io, [&] { return !silent_record.closed.empty(); }, kTlsHandshakeTimeout + kTimeout));
  EXPECT_EQ(silent_record.closed[0], "TLS handshake timed out after 10 s");
}

}  // namespace
}  // namespace cru::proto
