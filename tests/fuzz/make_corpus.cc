// make_corpus DIR: writes the fuzzer's seed corpus, one file per valid frame: every
// sample message of the unit tests (every message type, small data, edge values), plus
// one file holding all of them back to back for the stream reader. Fails if a message
// type has no sample.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <variant>
#include <vector>

#include "proto/codec.h"
#include "proto/messages.h"

// The same samples as the unit tests (tests/unit/proto/samples.cc), compiled in here so
// the corpus and the tests cannot drift apart. It has no dependencies beyond src/.
#include "../unit/proto/samples.cc"

namespace {

bool write_file(const std::filesystem::path& path, const std::vector<std::byte>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) {
    std::fprintf(stderr, "make_corpus: cannot write %s\n", path.c_str());
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_corpus DIR\n");
    return 2;
  }
  const std::filesystem::path dir = argv[1];
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    std::fprintf(stderr, "make_corpus: cannot create %s: %s\n", dir.c_str(), ec.message().c_str());
    return 1;
  }

  using cru::proto::Message;
  const std::vector<Message> samples = cru::proto::testing::small_samples();
  std::vector<bool> covered(std::variant_size_v<Message>, false);
  std::vector<std::byte> stream;
  for (size_t i = 0; i < samples.size(); ++i) {
    const Message& m = samples[i];
    covered[m.index()] = true;
    std::vector<std::byte> frame = cru::proto::encode_flat(m);
    stream.insert(stream.end(), frame.begin(), frame.end());
    std::string name =
        std::to_string(i) + "-" + std::string(cru::proto::tag_name(cru::proto::tag_of(m)));
    if (!write_file(dir / name, frame)) return 1;
  }
  if (!write_file(dir / "all-frames", stream)) return 1;
  for (size_t i = 0; i < covered.size(); ++i) {
    if (!covered[i]) {
      std::fprintf(stderr, "make_corpus: no sample for Message alternative %zu\n", i);
      return 1;
    }
  }
  std::printf("make_corpus: wrote %zu frames to %s\n", samples.size() + 1, dir.c_str());
  return 0;
}
