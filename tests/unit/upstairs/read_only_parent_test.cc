// ParentedVolume (upstairs/read_only_parent.h) over an in-memory volume and parent: reads
// merge the parent under the blocks the volume never wrote, a discard over the parent
// writes zeros (and answers once, even when a write fails), and the scrub copies with
// WriteUnwritten from its resume point, records progress only after a flush, records what
// it copied when stopped, and detaches the parent when complete.
#include "upstairs/read_only_parent.h"

#include <gtest/gtest.h>

#include <condition_variable>
#include <cstring>
#include <mutex>

#include "unit/upstairs/harness.h"

namespace cru::upstairs {
namespace {

using namespace std::chrono_literals;

using test::kBs;  // uniform_blocks() makes blocks of this size

Bytes blocks(size_t n, uint8_t seed) { return test::uniform_blocks(n, seed); }

// A volume in memory, with the downstairs' rule for never-written blocks (no context,
// zeros) and for WriteUnwritten. Completions run inline. Safe from two threads (the test's,
// as the io thread, and the scrub's).
class MemDevice : public BlockDevice {
 public:
  explicit MemDevice(uint64_t blocks) : data_(blocks * kBs), written_(blocks) {}

  uint32_t block_size() const override { return kBs; }
  uint64_t total_blocks() const override { return written_.size(); }

  void read(BlockIndex start, uint64_t count, ReadFn done) override {
    read_masked(start, count, [done = std::move(done)](Result<MaskedRead> r) {
      if (!r) return done(tl::unexpected(r.error()));
      done(r->data);
    });
  }
  void read_masked(BlockIndex start, uint64_t count, MaskedReadFn done) override {
    MaskedRead r;
    {
      std::lock_guard lock(mu_);
      r.data = Bytes::copy_of(std::span(data_).subspan(start.value * kBs, count * kBs));
      r.written.assign(written_.begin() + static_cast<long>(start.value),
                       written_.begin() + static_cast<long>(start.value + count));
    }
    done(std::move(r));
  }
  void write(BlockIndex start, std::span<const std::byte> d, DoneFn done) override {
    done(store(start, d, false));
  }
  void write_unwritten(BlockIndex start, std::span<const std::byte> d, DoneFn done) override {
    done(store(start, d, true));
  }
  void discard(BlockIndex start, uint64_t count, DoneFn done) override {
    {
      std::lock_guard lock(mu_);
      for (uint64_t b = start.value; b < start.value + count; ++b) {
        written_[b] = false;
        std::memset(data_.data() + b * kBs, 0, kBs);
      }
      ++discards_;
    }
    done({});
  }
  void flush(DoneFn done) override {
    {
      std::lock_guard lock(mu_);
      ++flushes_;
      unflushed_ = 0;
    }
    done({});
  }
  void watch(int, std::function<void()>) override {}
  void unwatch() override {}

  void fail_writes(bool f) {
    std::lock_guard lock(mu_);
    fail_writes_ = f;
  }
  // Waits until `pred` holds (under the lock) or `timeout` passes; whether it holds.
  bool wait(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return changed_.wait_for(lock, timeout, pred);
  }
  // Under the lock (for wait predicates and checks).
  uint64_t unwritten_writes() const { return unwritten_writes_; }
  uint64_t lowest_unwritten_write() const { return lowest_unwritten_; }
  uint64_t unflushed() const { return unflushed_; }
  uint64_t discards() const { return discards_; }
  std::mutex& mu() { return mu_; }

 private:
  Status store(BlockIndex start, std::span<const std::byte> d, bool only_unwritten) {
    {
      std::lock_guard lock(mu_);
      if (fail_writes_) return fail(ErrorCode::kIo, "test: injected write failure");
      for (uint64_t i = 0; i < d.size() / kBs; ++i) {
        const uint64_t b = start.value + i;
        if (only_unwritten && written_[b]) continue;
        std::memcpy(data_.data() + b * kBs, d.data() + i * kBs, kBs);
        written_[b] = true;
      }
      if (only_unwritten) {
        ++unwritten_writes_;
        lowest_unwritten_ = std::min(lowest_unwritten_, start.value);
      }
      ++unflushed_;
    }
    changed_.notify_all();
    return {};
  }

  mutable std::mutex mu_;
  std::condition_variable changed_;
  std::vector<std::byte> data_;
  std::vector<bool> written_;
  bool fail_writes_ = false;
  uint64_t unwritten_writes_ = 0, lowest_unwritten_ = UINT64_MAX, unflushed_ = 0, discards_ = 0;
  uint64_t flushes_ = 0;
};

class MemParent : public ParentSource {
 public:
  explicit MemParent(Bytes data) : data_(std::move(data)) {}
  std::string describe() const override { return "memory"; }
  uint64_t size_bytes() const override { return data_.size(); }
  uint32_t block_size() const override { return 0; }
  void read(BlockIndex start, uint64_t count, BlockDevice::ReadFn done) override {
    done(*read_sync(start, count));
  }
  Result<Bytes> read_sync(BlockIndex start, uint64_t count) override {
    return data_.slice(start.value * kBs, count * kBs);
  }

 private:
  Bytes data_;
};

// What the scrub recorded, in order.
struct Records {
  std::mutex mu;
  std::condition_variable changed;
  std::vector<std::pair<uint64_t, bool>> calls;
  std::vector<uint64_t> unflushed_at_call;  // the volume's writes not yet flushed then
};

ScrubOptions options(Records& rec, MemDevice& dev, uint64_t rate, uint64_t chunk_blocks,
                     uint64_t resume_at = 0) {
  ScrubOptions o;
  o.rate_bytes_per_s = rate;
  o.chunk_bytes = chunk_blocks * kBs;
  o.resume_at = resume_at;
  o.record = [&rec, &dev](uint64_t next, bool complete) {
    uint64_t unflushed = 0;
    {
      std::lock_guard lock(dev.mu());
      unflushed = dev.unflushed();
    }
    {
      std::lock_guard lock(rec.mu);
      rec.calls.emplace_back(next, complete);
      rec.unflushed_at_call.push_back(unflushed);
    }
    rec.changed.notify_all();
    return Status{};
  };
  return o;
}

ParentedVolume::Post inline_post() {
  return [](std::function<void()> fn) { fn(); };
}

Bytes read_all(ParentedVolume& v, uint64_t start, uint64_t count) {
  Bytes out;
  v.read(BlockIndex{start}, count, [&out](Result<Bytes> r) {
    ASSERT_TRUE(r) << r.error().message;
    out = *r;
  });
  return out;
}

uint8_t byte_of(const Bytes& b, uint64_t block) {
  return static_cast<uint8_t>(b.data()[block * kBs]);
}

TEST(ParentedVolume, ReadsTheParentWhereTheVolumeNeverWrote) {
  MemDevice dev(16);
  Records rec;
  ParentedVolume v(dev, inline_post(), std::make_unique<MemParent>(blocks(8, 10)),
                   options(rec, dev, kMiB, 8));
  const Bytes own = blocks(1, 200);
  Status s = fail(ErrorCode::kIo, "not answered");
  v.write(BlockIndex{3}, own.span(), [&s](const Status& r) { s = r; });
  ASSERT_TRUE(s);
  const Bytes got = read_all(v, 0, 16);
  ASSERT_EQ(got.size(), 16 * kBs);
  for (uint64_t b = 0; b < 8; ++b)
    EXPECT_EQ(byte_of(got, b), b == 3 ? 200 : 10 + b) << "block " << b;
  for (uint64_t b = 8; b < 16; ++b) EXPECT_EQ(byte_of(got, b), 0) << "past the parent, block " << b;
  EXPECT_TRUE(v.parent_needed());
}

TEST(ParentedVolume, ADiscardOverTheParentWritesZerosAndDiscardsPastIt) {
  MemDevice dev(16);
  Records rec;
  ParentedVolume v(dev, inline_post(), std::make_unique<MemParent>(blocks(8, 10)),
                   options(rec, dev, kMiB, 8));
  Status s = fail(ErrorCode::kIo, "not answered");
  v.discard(BlockIndex{6}, 4, [&s](const Status& r) { s = r; });
  ASSERT_TRUE(s) << s.error().message;
  const Bytes got = read_all(v, 0, 16);
  for (uint64_t b = 0; b < 6; ++b) EXPECT_EQ(byte_of(got, b), 10 + b);
  for (uint64_t b = 6; b < 10; ++b) EXPECT_EQ(byte_of(got, b), 0) << "discarded block " << b;
  std::lock_guard lock(dev.mu());
  EXPECT_EQ(dev.discards(), 1u) << "past the parent's end: a real discard";
}

TEST(ParentedVolume, ADiscardWhoseZeroWritesFailAnswersOnceWithTheError) {
  // 5000 parent blocks: three 1 MiB zero writes of 2048 blocks.
  MemDevice dev(8192);
  Records rec;
  ParentedVolume v(dev, inline_post(), std::make_unique<MemParent>(blocks(5000, 1)),
                   options(rec, dev, kMiB, 8));
  dev.fail_writes(true);
  int answers = 0;
  Status s;
  v.discard(BlockIndex{0}, 6000, [&](const Status& r) {
    ++answers;
    s = r;
  });
  EXPECT_EQ(answers, 1);
  EXPECT_FALSE(s);
}

TEST(ParentedVolume, TheScrubCopiesAroundTheGuestsDataRecordsAfterFlushesAndDetaches) {
  MemDevice dev(128);
  Records rec;
  ParentedVolume v(dev, inline_post(), std::make_unique<MemParent>(blocks(64, 10)),
                   options(rec, dev, 64 * kMiB, 8));
  const Bytes own = blocks(1, 200);
  v.write(BlockIndex{10}, own.span(), [](const Status& s) { ASSERT_TRUE(s); });
  v.start_scrub();
  {
    std::unique_lock lock(rec.mu);
    ASSERT_TRUE(rec.changed.wait_for(lock, 30s, [&] {
      return !rec.calls.empty() && rec.calls.back().second;
    })) << "the scrub did not complete";
    EXPECT_EQ(rec.calls.back().first, 64u);
    for (size_t i = 0; i < rec.calls.size(); ++i)
      EXPECT_EQ(rec.unflushed_at_call[i], 0u) << "record " << i << " before its flush";
  }
  v.stop_scrub();
  const ScrubStatus st = v.scrub_status();
  EXPECT_TRUE(st.complete);
  EXPECT_EQ(st.durable_block, 64u);
  EXPECT_FALSE(v.parent_needed());
  // The volume alone now holds the parent, and the guest's block.
  Bytes got;
  dev.read(BlockIndex{0}, 64, [&got](Result<Bytes> r) { got = *r; });
  for (uint64_t b = 0; b < 64; ++b)
    EXPECT_EQ(byte_of(got, b), b == 10 ? 200 : 10 + b) << "block " << b;
}

TEST(ParentedVolume, TheScrubStartsAtTheResumePoint) {
  MemDevice dev(64);
  Records rec;
  ParentedVolume v(dev, inline_post(), std::make_unique<MemParent>(blocks(64, 10)),
                   options(rec, dev, 64 * kMiB, 8, 32));
  EXPECT_EQ(v.scrub_status().resumed_from, 32u);
  v.start_scrub();
  {
    std::unique_lock lock(rec.mu);
    ASSERT_TRUE(rec.changed.wait_for(
        lock, 30s, [&] { return !rec.calls.empty() && rec.calls.back().second; }));
  }
  v.stop_scrub();
  std::lock_guard lock(dev.mu());
  EXPECT_EQ(dev.lowest_unwritten_write(), 32u) << "nothing below the recorded point copied again";
  EXPECT_EQ(dev.unwritten_writes(), 4u);
}

TEST(ParentedVolume, StoppingMidwayRecordsWhatWasCopied) {
  MemDevice dev(64);
  Records rec;
  // One block a second: the first goes at once (the burst), the next a second later.
  ParentedVolume v(dev, inline_post(), std::make_unique<MemParent>(blocks(64, 10)),
                   options(rec, dev, kBs, 1));
  v.start_scrub();
  ASSERT_TRUE(dev.wait([&] { return dev.unwritten_writes() >= 1; }, 30s));
  v.stop_scrub();
  const ScrubStatus st = v.scrub_status();
  EXPECT_FALSE(st.complete);
  EXPECT_FALSE(st.running);
  EXPECT_GE(st.next_block, 1u);
  EXPECT_EQ(st.durable_block, st.next_block) << "the stop recorded what was copied";
  std::lock_guard lock(rec.mu);
  ASSERT_FALSE(rec.calls.empty());
  EXPECT_EQ(rec.calls.back(), std::make_pair(st.next_block, false));
  EXPECT_TRUE(v.parent_needed());
}

}  // namespace
}  // namespace cru::upstairs
