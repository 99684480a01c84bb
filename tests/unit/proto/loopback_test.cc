// FrameSource and FrameSink over real TCP sockets on 127.0.0.1: 10,000 random messages
// arrive intact and in order; garbage from the peer is a protocol error; a closed peer
// makes next() throw. One io_context on the test's thread; every test body races a hard
// timeout so it can never hang. CRU_SEED=<n> replays one seed of the random exchange.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <asio/buffer.hpp>
#include <asio/co_spawn.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/multiple_exceptions.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/use_future.hpp>
#include <asio/write.hpp>
#include <chrono>
#include <cstdlib>
#include <future>
#include <iostream>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "common/units.h"
#include "proto/codec.h"
#include "proto/framed_socket.h"
#include "proto/messages.h"

namespace cru::proto {

namespace testing {
// Defined in samples.cc.
std::vector<Message> small_samples();
Bytes pattern_bytes(size_t size, uint64_t seed);
}  // namespace testing

namespace {

using asio::ip::tcp;
using namespace asio::experimental::awaitable_operators;

// Far above what any test here needs (about a second); a stuck test fails instead of hanging.
constexpr auto kTimeout = std::chrono::seconds(45);
constexpr uint64_t kDefaultSeed = 0x5eed'c0de'2024;
// Small enough that the sender regularly waits for room (back-pressure is exercised).
constexpr size_t kOutboxFrames = 32;

uint64_t test_seed() {
  if (const char* s = std::getenv("CRU_SEED")) return std::strtoull(s, nullptr, 0);
  return kDefaultSeed;
}

// A deterministic stream of random messages: the sender and the receiver each run one
// from the same seed, so the receiver knows what must arrive without sharing state.
class MessageGenerator {
 public:
  explicit MessageGenerator(uint64_t seed) : rng_(seed), samples_(testing::small_samples()) {}

  Message next() {
    switch (below(10)) {
      case 0:
      case 1:
      case 2:
        return write<Write>();
      case 3:
        return write<WriteUnwritten>();
      case 4:
      case 5:
        return read_response();
      case 6:
        return chunk();
      default:
        return sample();
    }
  }

 private:
  uint64_t below(uint64_t n) { return rng_() % n; }

  // Mostly small: 85% up to 4 KiB, 13% up to 128 KiB, 2% up to 1 MiB.
  size_t data_bytes() {
    uint64_t r = below(100);
    uint64_t max = r < 85 ? 4 * kKiB : r < 98 ? 128 * kKiB : kMiB;
    return below(max + 1);
  }
  uint32_t block_size() { return below(2) ? 4096 : 512; }
  uint32_t block_count(uint32_t block_size) {
    return static_cast<uint32_t>(std::max<size_t>(1, data_bytes() / block_size));
  }
  BlockContext context() {
    BlockContext c{rng_(), std::nullopt};
    if (below(2)) {
      EncryptionContext e;
      for (auto& b : e.nonce) b = static_cast<uint8_t>(rng_());
      for (auto& b : e.tag) b = static_cast<uint8_t>(rng_());
      c.encryption = e;
    }
    return c;
  }
  std::vector<JobId> deps() {
    std::vector<JobId> d(below(5));
    for (auto& j : d) j = JobId{rng_()};
    return d;
  }

  template <typename T>
  Message write() {
    T w;
    w.job_id = JobId{rng_()};
    w.deps = deps();
    w.start = BlockIndex{rng_()};
    w.block_size = block_size();
    uint32_t blocks = block_count(w.block_size);
    for (uint32_t i = 0; i < blocks; ++i) w.contexts.push_back(context());
    w.data = testing::pattern_bytes(size_t{blocks} * w.block_size, rng_());
    return w;
  }

  Message read_response() {
    ReadResponse r;
    r.job_id = JobId{rng_()};
    r.block_size = block_size();
    if (below(20) == 0) {
      r.status = WireStatus{ErrorCode::kIo, fmt::format("injected {}", rng_())};
      return r;
    }
    uint32_t blocks = block_count(r.block_size);
    for (uint32_t i = 0; i < blocks; ++i) {
      if (below(3) == 0) {
        r.contexts.emplace_back(std::nullopt);
      } else {
        r.contexts.emplace_back(context());
      }
    }
    r.data = testing::pattern_bytes(size_t{blocks} * r.block_size, rng_());
    return r;
  }

  Message chunk() {
    ExtentChunk c;
    c.extent = ExtentId{static_cast<uint32_t>(rng_())};
    c.offset = rng_();
    c.data = testing::pattern_bytes(data_bytes(), rng_());
    return c;
  }

  // Any message type: a sample with a fresh job id where it has one.
  Message sample() {
    Message m = samples_[below(samples_.size())];
    std::visit(
        [this](auto& v) {
          if constexpr (requires { v.job_id; }) v.job_id = JobId{rng_()};
        },
        m);
    return m;
  }

  std::mt19937_64 rng_;
  std::vector<Message> samples_;
};

// ---- running a test body ---------------------------------------------------------------

std::string explain(const std::exception& e) {
  if (const auto* multi = dynamic_cast<const asio::multiple_exceptions*>(&e)) {
    try {
      std::rethrow_exception(multi->first_exception());
    } catch (const std::exception& first) {
      return std::string("multiple exceptions, first: ") + first.what();
    }
  }
  return e.what();
}

// A body's value, or why there is none (an exception's text, or "timed out").
template <typename T>
struct Ran {
  std::optional<T> value;
  std::string error;
};

// Never throws: `||` below waits for the first success, so a body that threw would
// otherwise be reported only when the timer fires.
template <typename T>
asio::awaitable<Ran<T>> guarded(asio::awaitable<T> body) {
  Ran<T> out;
  try {
    out.value.emplace(co_await std::move(body));
  } catch (const std::exception& e) {
    out.error = explain(e);
  }
  co_return out;
}

template <typename T>
asio::awaitable<Ran<T>> with_timeout(asio::awaitable<T> body) {
  asio::steady_timer timer(co_await asio::this_coro::executor, kTimeout);
  auto guarded_body = guarded(std::move(body));
  auto timed_out = timer.async_wait(asio::use_awaitable);
  auto r = co_await (std::move(guarded_body) || std::move(timed_out));
  if (r.index() == 0) co_return std::move(std::get<0>(r));
  Ran<T> out;
  out.error = "timed out";
  co_return out;
}

// Runs `body` on a fresh io_context on this thread. run_for() is a second, coarser
// limit in case a cancelled operation did not finish.
template <typename T>
Ran<T> run(asio::awaitable<T> body) {
  asio::io_context ctx;
  std::future<Ran<T>> done = asio::co_spawn(ctx, with_timeout(std::move(body)), asio::use_future);
  ctx.run_for(kTimeout + std::chrono::seconds(10));
  if (done.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
    Ran<T> out;
    out.error = "io_context stopped with the test unfinished";
    return out;
  }
  return done.get();
}

asio::awaitable<std::pair<tcp::socket, tcp::socket>> connected_pair() {
  auto ex = co_await asio::this_coro::executor;
  tcp::acceptor acceptor(ex, tcp::endpoint(asio::ip::address_v4::loopback(), 0));
  tcp::socket client(ex);
  co_await client.async_connect(acceptor.local_endpoint(), asio::use_awaitable);
  tcp::socket server = co_await acceptor.async_accept(asio::use_awaitable);
  tune_socket(client);
  tune_socket(server);
  co_return std::pair<tcp::socket, tcp::socket>(std::move(client), std::move(server));
}

// ---- the random exchange ---------------------------------------------------------------

struct ExchangeStats {
  size_t messages = 0;
  size_t data_bytes = 0;    // bulk data, all messages
  size_t largest_data = 0;  // bulk data of the largest message
};

size_t data_size(const Message& m) {
  return std::visit(
      [](const auto& v) -> size_t {
        if constexpr (HasData<std::decay_t<decltype(v)>>) {
          return v.data.size();
        } else {
          return 0;
        }
      },
      m);
}

// Checks `count` messages against the generator, then answers Imok so the sender knows
// every frame arrived and can close its outbox.
asio::awaitable<ExchangeStats> receive_messages(tcp::socket socket, uint64_t seed, size_t count) {
  Stream stream(std::move(socket));
  FrameSource source(stream);
  MessageGenerator expected(seed);
  ExchangeStats stats;
  for (size_t i = 0; i < count; ++i) {
    Result<Message> got = co_await source.next();
    if (!got) throw std::runtime_error(fmt::format("message {}: {}", i, got.error().to_string()));
    Message want = expected.next();
    if (!(*got == want))
      throw std::runtime_error(
          fmt::format("message {}: got {}, want {}", i, describe(*got), describe(want)));
    ++stats.messages;
    stats.data_bytes += data_size(*got);
    stats.largest_data = std::max(stats.largest_data, data_size(*got));
  }
  std::vector<std::byte> imok = encode_flat(Imok{});
  co_await asio::async_write(stream.socket(), asio::buffer(imok), asio::use_awaitable);
  co_return stats;
}

asio::awaitable<void> produce(FrameSink& sink, FrameSource& replies, uint64_t seed, size_t count) {
  MessageGenerator gen(seed);
  for (size_t i = 0; i < count; ++i) co_await sink.push(gen.next());
  // close_after_drain() would drop the queue when it is full; wait for the receiver instead.
  Result<Message> reply = co_await replies.next();
  sink.close();
  if (!reply || !std::holds_alternative<Imok>(*reply))
    throw std::runtime_error("sender: expected Imok after the last message");
}

asio::awaitable<void> send_messages(tcp::socket socket, uint64_t seed, size_t count) {
  Stream stream(std::move(socket));
  FrameSink sink(stream.socket().get_executor(), kOutboxFrames);
  FrameSource replies(stream);
  auto writer = sink.run(stream);
  auto producer = produce(sink, replies, seed, count);
  co_await (std::move(writer) && std::move(producer));
}

asio::awaitable<ExchangeStats> exchange(uint64_t seed, size_t count) {
  auto [client, server] = co_await connected_pair();
  // The receiver first: if both fail, asio reports the first operand's exception.
  auto rx = receive_messages(std::move(server), seed, count);
  auto tx = send_messages(std::move(client), seed, count);
  co_return co_await (std::move(rx) && std::move(tx));
}

TEST(Loopback, TenThousandRandomMessagesArriveIntactAndInOrder) {
  const uint64_t seed = test_seed();
  constexpr size_t kCount = 10'000;
  Ran<ExchangeStats> r = run(exchange(seed, kCount));
  ASSERT_TRUE(r.value) << r.error << " (seed " << seed << "; replay with CRU_SEED=" << seed << ")";
  EXPECT_EQ(r.value->messages, kCount);
  // The mix really had bulk data, some of it large enough for FrameSource's direct reads.
  EXPECT_GT(r.value->data_bytes, 10 * kMiB) << "seed " << seed;
  EXPECT_GT(r.value->largest_data, kMiB / 2) << "seed " << seed;
  std::cout << "[ seed     ] " << seed << ": " << r.value->messages << " messages, "
            << r.value->data_bytes / kMiB << " MiB of data\n";
}

// ---- a misbehaving peer ------------------------------------------------------------------

struct Received {
  std::vector<Message> messages;
  std::optional<Error> protocol_error;     // next() returned an error
  std::optional<asio::error_code> thrown;  // next() threw asio::system_error
};

// Reads until next() fails one way or the other.
asio::awaitable<Received> receive_until_failure(tcp::socket socket) {
  Stream stream(std::move(socket));
  FrameSource source(stream);
  Received out;
  try {
    for (;;) {
      Result<Message> m = co_await source.next();
      if (!m) {
        out.protocol_error = m.error();
        break;
      }
      out.messages.push_back(std::move(*m));
    }
  } catch (const asio::system_error& e) {
    out.thrown = e.code();
  }
  co_return out;
}

// Writes `bytes` and hangs up.
asio::awaitable<void> send_raw(tcp::socket socket, std::vector<std::byte> bytes) {
  co_await asio::async_write(socket, asio::buffer(bytes), asio::use_awaitable);
}

asio::awaitable<Received> peer_sends(std::vector<std::byte> bytes) {
  auto [client, server] = co_await connected_pair();
  auto rx = receive_until_failure(std::move(server));
  auto tx = send_raw(std::move(client), std::move(bytes));
  co_return co_await (std::move(rx) && std::move(tx));
}

std::vector<std::byte> text_bytes(std::string_view s) {
  auto b = as_bytes(s);
  return {b.begin(), b.end()};
}

TEST(Loopback, GarbageFromPeerIsAProtocolError) {
  // "GET " read as a frame length is 542393671, far over the limit.
  Ran<Received> r = run(peer_sends(text_bytes("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")));
  ASSERT_TRUE(r.value) << r.error;
  EXPECT_TRUE(r.value->messages.empty());
  ASSERT_TRUE(r.value->protocol_error) << "next() did not return an error";
  EXPECT_EQ(r.value->protocol_error->code, ErrorCode::kProtocol);
  EXPECT_NE(r.value->protocol_error->message.find("exceeds the limit"), std::string::npos)
      << r.value->protocol_error->message;
}

TEST(Loopback, GarbageAfterAValidFrameIsAProtocolError) {
  std::vector<std::byte> bytes = encode_flat(Ruok{});
  // A plausible header with an unknown tag.
  for (int b : {16, 0, 0, 0, 0x63, 0, 0, 0, 4, 0, 0, 0, 1, 2, 3, 4}) bytes.push_back(std::byte(b));
  Ran<Received> r = run(peer_sends(bytes));
  ASSERT_TRUE(r.value) << r.error;
  ASSERT_EQ(r.value->messages.size(), 1u);
  EXPECT_TRUE(std::holds_alternative<Ruok>(r.value->messages[0]));
  ASSERT_TRUE(r.value->protocol_error);
  EXPECT_EQ(r.value->protocol_error->code, ErrorCode::kProtocol);
  EXPECT_NE(r.value->protocol_error->message.find("unknown message tag 99"), std::string::npos)
      << r.value->protocol_error->message;
}

TEST(Loopback, ClosedPeerMakesNextThrow) {
  Ran<Received> r = run(peer_sends({}));
  ASSERT_TRUE(r.value) << r.error;
  EXPECT_TRUE(r.value->messages.empty());
  EXPECT_FALSE(r.value->protocol_error);
  ASSERT_TRUE(r.value->thrown) << "next() neither threw nor failed";
  EXPECT_EQ(*r.value->thrown, asio::error::eof) << r.value->thrown->message();
}

// A write of `blocks` 4 KiB blocks of patterned data (contexts left empty).
Write bulk_write(size_t blocks) {
  Write w;
  w.job_id = JobId{1};
  w.block_size = 4096;
  w.contexts.resize(blocks);
  w.data = testing::pattern_bytes(blocks * 4096, 1);
  return w;
}

TEST(Loopback, PeerClosingMidFrameMakesNextThrow) {
  std::vector<std::byte> bytes = encode_flat(bulk_write(64));
  bytes.resize(bytes.size() / 2);  // most of the data never comes
  Ran<Received> r = run(peer_sends(bytes));
  ASSERT_TRUE(r.value) << r.error;
  EXPECT_TRUE(r.value->messages.empty());
  EXPECT_FALSE(r.value->protocol_error);
  ASSERT_TRUE(r.value->thrown);
  EXPECT_EQ(*r.value->thrown, asio::error::eof) << r.value->thrown->message();
}

// ---- waking the reader ---------------------------------------------------------------------

// Reads `count` frames, answering Imok after each; the peer sends the next only then, so
// each read starts on an empty socket.
asio::awaitable<size_t> read_each_then_answer(tcp::socket socket, size_t count) {
  Stream stream(std::move(socket));
  FrameSource source(stream);
  const std::vector<std::byte> imok = encode_flat(Imok{});
  for (size_t i = 0; i < count; ++i) {
    Result<Message> m = co_await source.next();
    if (!m) throw std::runtime_error(fmt::format("frame {}: {}", i, m.error().to_string()));
    co_await asio::async_write(stream.socket(), asio::buffer(imok), asio::use_awaitable);
  }
  co_return count;
}

asio::awaitable<void> send_each_after_answer(tcp::socket socket, std::vector<Message> messages) {
  Stream stream(std::move(socket));
  FrameSource answers(stream);
  for (const auto& m : messages) {
    const std::vector<std::byte> bytes = encode_flat(m);
    co_await asio::async_write(stream.socket(), asio::buffer(bytes), asio::use_awaitable);
    Result<Message> answer = co_await answers.next();
    if (!answer || !std::holds_alternative<Imok>(*answer))
      throw std::runtime_error("sender: expected Imok");
  }
}

asio::awaitable<size_t> exchange_one_by_one(std::vector<Message> messages) {
  auto [client, server] = co_await connected_pair();
  auto rx = read_each_then_answer(std::move(server), messages.size());
  auto tx = send_each_after_answer(std::move(client), std::move(messages));
  co_return co_await (std::move(rx) && std::move(tx));
}

TEST(Loopback, ASmallFrameAfterALargeOneWakesTheReader) {
  // A large frame's payload is read with the socket's low-water mark raised (one wake-up
  // per piece); it must be back at one byte before the next frame, or a frame smaller
  // than the mark arriving on an empty socket would never be reported.
  const Write large = bulk_write(256);
  Ran<size_t> r = run(exchange_one_by_one({large, Ruok{}, large, Ruok{}}));
  ASSERT_TRUE(r.value) << r.error;
  EXPECT_EQ(*r.value, 4u);
}

// try_push() queues; close_after_drain() writes what is queued, then the sink stops.
asio::awaitable<void> push_and_hang_up(tcp::socket socket, std::vector<Message> messages) {
  Stream stream(std::move(socket));
  FrameSink sink(stream.socket().get_executor(), messages.size() + 1);
  for (const auto& m : messages)
    if (!sink.try_push(m)) throw std::runtime_error("try_push refused with room left");
  if (sink.queued_frames() != messages.size()) throw std::runtime_error("queued_frames() is wrong");
  sink.close_after_drain();
  co_await sink.run(stream);
}

asio::awaitable<Received> sink_drains_then_closes(std::vector<Message> messages) {
  auto [client, server] = co_await connected_pair();
  auto rx = receive_until_failure(std::move(server));
  auto tx = push_and_hang_up(std::move(client), std::move(messages));
  co_return co_await (std::move(rx) && std::move(tx));
}

TEST(Loopback, SinkWritesQueuedFramesBeforeClosingAfterDrain) {
  std::vector<Message> sent = testing::small_samples();
  Ran<Received> r = run(sink_drains_then_closes(sent));
  ASSERT_TRUE(r.value) << r.error;
  ASSERT_EQ(r.value->messages.size(), sent.size());
  for (size_t i = 0; i < sent.size(); ++i)
    EXPECT_TRUE(r.value->messages[i] == sent[i]) << i << ": " << describe(sent[i]);
  EXPECT_FALSE(r.value->protocol_error);
  ASSERT_TRUE(r.value->thrown);
  EXPECT_EQ(*r.value->thrown, asio::error::eof);
}

}  // namespace
}  // namespace cru::proto
