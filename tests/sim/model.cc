#include "sim/model.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "common/assert.h"

namespace cru::sim {

namespace {

uint64_t splitmix(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::string set_text(const std::vector<Value>& values) {
  std::string s = "{";
  for (size_t i = 0; i < values.size(); ++i) s += fmt::format("{}{}", i ? ", " : "", values[i]);
  return s + "}";
}

}  // namespace

void block_bytes(Value seq, uint64_t block, std::span<std::byte> out) {
  CRU_ASSERT(out.size() >= 16 && out.size() % 8 == 0);
  uint64_t state = seq * 0x100000001B3ull ^ block;
  std::memcpy(out.data(), &seq, 8);
  std::memcpy(out.data() + 8, &block, 8);
  for (size_t off = 16; off < out.size(); off += 8) {
    uint64_t v = splitmix(state);
    std::memcpy(out.data() + off, &v, 8);
  }
}

std::optional<Value> decode_block(uint64_t block, std::span<const std::byte> bytes) {
  if (std::all_of(bytes.begin(), bytes.end(), [](std::byte b) { return b == std::byte{0}; }))
    return Value{0};
  Value seq = 0;
  uint64_t stored_block = 0;
  std::memcpy(&seq, bytes.data(), 8);
  std::memcpy(&stored_block, bytes.data() + 8, 8);
  if (seq == 0 || stored_block != block) return std::nullopt;
  std::vector<std::byte> expect(bytes.size());
  block_bytes(seq, block, expect);
  if (std::memcmp(expect.data(), bytes.data(), bytes.size()) != 0) return std::nullopt;
  return seq;
}

Model::Model(uint64_t blocks) : blocks_(blocks) {
  for (Block& b : blocks_) b.history.push_back(Entry{0, {0}});
}

size_t Model::at(const Block& b, uint64_t seq) {
  // The last entry produced by an operation before `seq`.
  auto it = std::lower_bound(b.history.begin(), b.history.end(), seq,
                             [](const Entry& e, uint64_t s) { return e.seq < s; });
  CRU_ASSERT(it != b.history.begin());
  return static_cast<size_t>(it - b.history.begin()) - 1;
}

void Model::add(std::vector<Value>& set, Value v) {
  if (std::find(set.begin(), set.end(), v) == set.end()) set.push_back(v);
}

void Model::write(uint64_t seq, uint64_t start, uint64_t count, bool only_unwritten) {
  for (uint64_t i = start; i < start + count; ++i) {
    Block& b = blocks_[i];
    std::vector<Value> next;
    if (only_unwritten) {
      // Applied to each possible state: only a never-written block takes the write.
      for (Value v : b.history.back().values) add(next, v == 0 ? seq : v);
    } else {
      next = {seq};
    }
    b.history.push_back(Entry{seq, std::move(next)});
  }
}

void Model::discard(uint64_t seq, uint64_t start, uint64_t count) {
  for (uint64_t i = start; i < start + count; ++i) blocks_[i].history.push_back(Entry{seq, {0}});
}

void Model::flush_acked(uint64_t seq) {
  if (seq <= flushed_seq_) return;
  flushed_seq_ = seq;
  for (Block& b : blocks_) b.durable = std::max(b.durable, at(b, seq));
}

void Model::upstairs_crash(uint64_t seq) {
  for (Block& b : blocks_) {
    std::vector<Value> possible;
    for (size_t i = b.durable; i < b.history.size(); ++i)
      for (Value v : b.history[i].values) add(possible, v);
    b.history.push_back(Entry{seq, std::move(possible)});
    // The union holds the durable state and everything since: a later crash without a
    // flush in between can produce no more than it.
    b.durable = b.history.size() - 1;
  }
}

void Model::write_failed(uint64_t seq, uint64_t start, uint64_t count) {
  for (uint64_t i = start; i < start + count; ++i) {
    Block& b = blocks_[i];
    size_t own = at(b, seq + 1);
    if (own == 0 || b.history[own].seq != seq) continue;
    std::vector<Value> before = b.history[own - 1].values;
    // Loose for what came after (a later write hides it again), but never wrong.
    for (size_t j = own; j < b.history.size(); ++j)
      for (Value v : before) add(b.history[j].values, v);
  }
}

std::vector<Value> Model::legal(uint64_t block, uint64_t seq, uint64_t last_seq) const {
  const Block& b = blocks_[block];
  std::vector<Value> out;
  for (size_t i = at(b, seq), last = at(b, last_seq + 1); i <= last; ++i)
    for (Value v : b.history[i].values) add(out, v);
  return out;
}

std::optional<std::string> Model::check_read(uint64_t block, uint64_t seq, uint64_t last_seq,
                                             std::optional<Value> got, bool strict) {
  Block& b = blocks_[block];
  size_t first = at(b, seq);
  size_t last = strict ? first : at(b, last_seq + 1);
  std::vector<Value> legal;
  for (size_t i = first; i <= last; ++i)
    for (Value v : b.history[i].values) add(legal, v);
  if (got && std::find(legal.begin(), legal.end(), *got) != legal.end()) {
    // The replicas agree from now on: later reads must see the same (or newer) value.
    if (strict && b.history[first].values.size() > 1) b.history[first].values = {*got};
    return std::nullopt;
  }
  return fmt::format(
      "block {}: read (op {}, {}) returned {} but the legal values are {}", block, seq,
      strict ? "strict" : fmt::format("may see ops up to {}", last_seq),
      got ? fmt::format("the data of write op {}", *got) : std::string("data no write stored"),
      set_text(legal));
}

std::string Model::describe(uint64_t block) const {
  const Block& b = blocks_[block];
  return fmt::format("block {}: now {}, durable {} (op {})", block,
                     set_text(b.history.back().values), set_text(b.history[b.durable].values),
                     b.history[b.durable].seq);
}

}  // namespace cru::sim
