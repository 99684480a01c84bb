// Mutual TLS between real processes (issue 10): a downstairs run with --tls-* refuses,
// at the handshake, a peer speaking plain TCP, a peer whose certificate comes from a
// foreign CA and a TLS peer with no certificate; it logs OpenSSL's reason for each and
// keeps serving a peer with a certificate from its CA. The certificates are made by
// common/pki (what crucible-dsc create --tls uses) in each test's temp dir.
#include <arpa/inet.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>

#include "common/pki.h"
#include "common/uuid.h"
#include "support/cluster.h"
#include "support/process.h"

namespace cru::test {
namespace {

constexpr Millis kCommandTimeout{60000};
constexpr Millis kLogTimeout{15000};
// How long a refused client may take to notice: well above the handshake itself.
constexpr Millis kRefusalTimeout{15000};

ClusterOptions small_cluster(bool tls) {
  ClusterOptions o;
  o.extent_count = 4;
  o.tls = tls;
  return o;
}

// `crucible` (one write, flush, read back) against the cluster with `extra` arguments.
CommandResult run_crucible(const Cluster& c, const std::vector<std::string>& extra,
                           int activate_timeout_s) {
  std::vector<std::string> args = {bin("crucible"),
                                   "-t",
                                   c.target(0),
                                   "-t",
                                   c.target(1),
                                   "-t",
                                   c.target(2),
                                   "--activate-timeout",
                                   std::to_string(activate_timeout_s)};
  args.insert(args.end(), extra.begin(), extra.end());
  return run_command(args, kCommandTimeout);
}

// A TLS 1.3 client that trusts `ca` and presents no certificate. Returns whether the
// server let it exchange data: it writes a byte and waits for one (the server never sends
// anything first, so a refusal shows as the alert or the connection closing).
bool certless_client_gets_through(uint16_t port, const std::string& ca) {
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()),
                                                        SSL_CTX_free);
  EXPECT_TRUE(ctx);
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION);
  EXPECT_EQ(SSL_CTX_load_verify_locations(ctx.get(), ca.c_str(), nullptr), 1);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  EXPECT_GE(fd, 0);
  timeval tv{static_cast<time_t>(kRefusalTimeout.count() / 1000), 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(ctx.get()), SSL_free);
  SSL_set_fd(ssl.get(), fd);
  bool through = false;
  // In TLS 1.3 the client finishes its side before the server checks its certificate:
  // the refusal arrives on the first read.
  if (SSL_connect(ssl.get()) == 1) {
    char byte = 0;
    if (SSL_write(ssl.get(), &byte, 1) == 1) through = SSL_read(ssl.get(), &byte, 1) > 0;
  }
  ERR_clear_error();
  ::close(fd);
  return through;
}

TEST(Tls, DownstairsRefusesPlainForeignAndCertlessPeersAndServesOneFromItsCa) {
  auto cr = Cluster::start(small_cluster(true));
  ASSERT_TRUE(cr) << cr.error().to_string();
  Cluster& c = **cr;
  Process& ds0 = *c.downstairs_process(0);

  // Plain TCP: the HereIAm frame is not a TLS ClientHello.
  {
    auto p = Peer::connect(c.port(0), kRefusalTimeout);
    ASSERT_TRUE(p) << p.error().to_string();
    ASSERT_TRUE(p->send(proto::HereIAm{proto::kProtocolVersion, Uuid::random(), Uuid::random(),
                                       Generation{1}, false, false}));
    EXPECT_TRUE(p->wait_closed(kRefusalTimeout));
    auto line = ds0.wait_for_line("TLS handshake failed: wrong version number", kLogTimeout);
    EXPECT_TRUE(line) << line.error().to_string();
  }

  // A certificate from another CA (the client does trust the server's CA).
  ASSERT_TRUE(write_local_pki(c.dir() + "/foreign", {"upstairs"}));
  {
    TlsFiles foreign = local_pki_files(c.dir() + "/foreign", "upstairs");
    auto r = run_crucible(c,
                          {"--tls-cert", foreign.cert, "--tls-key", foreign.key, "--tls-ca",
                           c.tls_files("upstairs").ca},
                          3);
    EXPECT_NE(r.exit_code(), 0) << r.describe();
    EXPECT_NE(r.err.find("not ready"), std::string::npos) << r.describe();
    auto line = ds0.wait_for_line(
        "TLS handshake failed: certificate verify failed (SSL routines) (unable to get local "
        "issuer certificate)",
        kLogTimeout);
    EXPECT_TRUE(line) << line.error().to_string();
  }

  // TLS without a client certificate.
  EXPECT_FALSE(certless_client_gets_through(c.port(0), c.tls_files("upstairs").ca));
  {
    auto line =
        ds0.wait_for_line("TLS handshake failed: peer did not return a certificate", kLogTimeout);
    EXPECT_TRUE(line) << line.error().to_string();
  }

  // Still serving: an upstairs with the cluster's certificate writes, flushes, reads back.
  for (int i = 0; i < kDownstairsCount; ++i) EXPECT_TRUE(c.downstairs_running(i)) << i;
  auto ok = run_crucible(c, c.upstairs_tls_args(), 30);
  EXPECT_EQ(ok.exit_code(), 0) << ok.describe();
  EXPECT_NE(ok.out.find("verified"), std::string::npos) << ok.describe();
}

TEST(Tls, UpstairsRefusesADownstairsWithoutTlsAndOneWithAForeignCertificate) {
  // The cluster's downstairs speak plain TCP: the upstairs's handshake fails.
  auto plain = Cluster::start(small_cluster(false));
  ASSERT_TRUE(plain) << plain.error().to_string();
  ASSERT_TRUE(write_local_pki((*plain)->dir() + "/tls", {"upstairs"}));
  TlsFiles up = local_pki_files((*plain)->dir() + "/tls", "upstairs");
  auto r = run_crucible(**plain, tls_flags(up), 3);
  EXPECT_NE(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.err.find("not ready"), std::string::npos) << r.describe();

  // Downstairs with certificates from their CA; the upstairs trusts only another CA.
  auto tls = Cluster::start(small_cluster(true));
  ASSERT_TRUE(tls) << tls.error().to_string();
  TlsFiles mixed = (*tls)->tls_files("upstairs");
  mixed.ca = up.ca;
  auto f = run_crucible(**tls, tls_flags(mixed), 3);
  EXPECT_NE(f.exit_code(), 0) << f.describe();
  EXPECT_NE(f.err.find("certificate verify failed"), std::string::npos) << f.describe();
}

TEST(Tls, DownstairsRunRefusesPartialTlsFlagsAndUnreadableFilesNamingThem) {
  auto c = Cluster::start(small_cluster(false));
  ASSERT_TRUE(c) << c.error().to_string();
  const std::string region = (*c)->region_dir(0);
  auto partial = run_command(
      {bin("crucible-downstairs"), "run", "-d", region, "-p", "0", "--tls-cert", "x.pem"},
      kCommandTimeout);
  EXPECT_NE(partial.exit_code(), 0);
  EXPECT_NE(partial.err.find("missing --tls-key, --tls-ca"), std::string::npos)
      << partial.describe();
  ASSERT_TRUE(write_local_pki((*c)->dir() + "/tls", {"downstairs-0"}));
  TlsFiles files = local_pki_files((*c)->dir() + "/tls", "downstairs-0");
  files.key = (*c)->dir() + "/no-such-key.pem";
  std::vector<std::string> args = {bin("crucible-downstairs"), "run", "-d", region, "-p", "0"};
  auto flags = tls_flags(files);
  args.insert(args.end(), flags.begin(), flags.end());
  auto missing = run_command(args, kCommandTimeout);
  EXPECT_NE(missing.exit_code(), 0);
  EXPECT_NE(missing.err.find(fmt::format("TLS key file {}: No such file or directory", files.key)),
            std::string::npos)
      << missing.describe();
}

}  // namespace
}  // namespace cru::test
