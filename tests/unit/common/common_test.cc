#include <gtest/gtest.h>

#include "common/bytes.h"
#include "common/hash.h"
#include "common/ids.h"
#include "common/result.h"
#include "common/tls_files.h"
#include "common/units.h"
#include "common/uuid.h"

namespace cru {
namespace {

TEST(Uuid, ParsesAndPrintsRoundTrip) {
  auto u = Uuid::parse("12345678-9abc-DEF0-1234-56789abcdef0");
  ASSERT_TRUE(u) << u.error().to_string();
  EXPECT_EQ(u->to_string(), "12345678-9abc-def0-1234-56789abcdef0");
}

TEST(Uuid, RejectsMalformedText) {
  for (const char* bad :
       {"", "1234", "12345678-9abc-def0-1234-56789abcdef", "12345678x9abc-def0-1234-56789abcdef0",
        "g2345678-9abc-def0-1234-56789abcdef0"}) {
    auto u = Uuid::parse(bad);
    ASSERT_FALSE(u) << bad;
    EXPECT_EQ(u.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(u.error().message.find("not a UUID"), std::string::npos);
  }
}

TEST(Uuid, RandomIsVersion4AndDistinct) {
  Uuid a = Uuid::random(), b = Uuid::random();
  EXPECT_NE(a, b);
  EXPECT_EQ(a.bytes[6] >> 4, 4);
  EXPECT_FALSE(a.is_nil());
  EXPECT_TRUE(Uuid{}.is_nil());
}

TEST(Units, ParsesSizesWithBinaryUnits) {
  EXPECT_EQ(parse_size("4096").value(), 4096u);
  EXPECT_EQ(parse_size("75MiB").value(), 75 * kMiB);
  EXPECT_EQ(parse_size("1G").value(), kGiB);
  EXPECT_EQ(parse_size("64 kb").value(), 64 * kKiB);
  EXPECT_EQ(parse_size("2T").value(), 2 * kTiB);
}

TEST(Units, RejectsBadSizesNamingTheText) {
  for (const char* bad : {"", "MiB", "12 furlongs", "-5", "99999999999999999999", "17179869184T"}) {
    auto r = parse_size(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_NE(r.error().message.find(std::string("'") + bad + "'"), std::string::npos);
  }
}

TEST(Units, FormatsSizes) {
  EXPECT_EQ(format_size(512), "512 B");
  EXPECT_EQ(format_size(64 * kMiB), "64 MiB");
  EXPECT_EQ(format_size(kGiB + kGiB / 2), "1.5 GiB");
}

TEST(Hash, MatchesKnownXxh64Vectors) {
  // Vectors from the original project's tests (checked with an independent XXH64).
  std::vector<std::byte> zeros512(512), zeros4k(4096);
  EXPECT_EQ(integrity_hash(zeros512), 10069907380382185596ull);
  EXPECT_EQ(integrity_hash(zeros4k), 12431794723299572699ull);
  std::vector<std::byte> nonce(12), tag(16), data(512, std::byte{9});
  for (int i = 0; i < 12; ++i) nonce[i] = std::byte(i + 1);
  for (int i = 0; i < 16; ++i) tag[i] = std::byte(i + 4);
  EXPECT_EQ(integrity_hash({nonce, tag, data}), 14137680576404864188ull);
}

TEST(Bytes, SlicesShareAndCompareByContent) {
  auto b = Bytes::copy_of(as_bytes("hello world"));
  auto s = b.slice(6, 5);
  EXPECT_EQ(s, Bytes::copy_of(as_bytes("world")));
  EXPECT_EQ(s.data(), b.data() + 6);
  EXPECT_NE(b, s);
}

TEST(ClientData, IndexesByClientId) {
  ClientData<int> d(7);
  d[ClientId{2}] = 9;
  EXPECT_EQ(d[ClientId{0}], 7);
  EXPECT_EQ(d[ClientId{2}], 9);
}

TEST(Error, ToStringNamesCodeAndMessage) {
  Error e{ErrorCode::kHashMismatch, "block 7"};
  EXPECT_EQ(e.to_string(), "hash mismatch: block 7");
}

TEST(TlsFiles, NoFlagsMeanPlainTcpAllThreeMeanTls) {
  auto none = tls_files_from_flags("", "", "");
  ASSERT_TRUE(none);
  EXPECT_FALSE(*none);
  EXPECT_TRUE(tls_flags(*none).empty());
  auto all = tls_files_from_flags("c.pem", "k.pem", "a.pem");
  ASSERT_TRUE(all && *all);
  EXPECT_EQ(**all, (TlsFiles{"c.pem", "k.pem", "a.pem"}));
  EXPECT_EQ(tls_flags(*all), (std::vector<std::string>{"--tls-cert", "c.pem", "--tls-key", "k.pem",
                                                       "--tls-ca", "a.pem"}));
}

TEST(TlsFiles, PartialFlagsAreRefusedNamingTheMissingOnes) {
  auto only_cert = tls_files_from_flags("c.pem", "", "");
  ASSERT_FALSE(only_cert);
  EXPECT_EQ(only_cert.error().message,
            "TLS needs --tls-cert, --tls-key and --tls-ca together; missing --tls-key, --tls-ca");
  auto no_ca = tls_files_from_flags("c.pem", "k.pem", "");
  ASSERT_FALSE(no_ca);
  EXPECT_NE(no_ca.error().message.find("missing --tls-ca"), std::string::npos);
}

}  // namespace
}  // namespace cru
