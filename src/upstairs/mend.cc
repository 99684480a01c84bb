#include "upstairs/mend.h"

#include <tuple>

#include "common/assert.h"

namespace cru::upstairs {

std::optional<ExtentMend> mend_extent(ExtentId extent, const ClientData<proto::ExtentVersion>& v,
                                      const std::vector<ClientId>& present) {
  CRU_ASSERT(present.size() >= 2);
  bool needed = false;
  for (ClientId c : present) needed |= v[c].dirty || v[c].damaged || v[c] != v[present.front()];
  if (!needed) return std::nullopt;
  // A damaged copy is never the source: its numbers say nothing about its bytes. With no
  // healthy copy there is nothing to copy from; each replica keeps what it has and a
  // damaged block reads as an error everywhere (EIO to the guest, never wrong data).
  std::vector<ClientId> healthy;
  for (ClientId c : present)
    if (!v[c].damaged) healthy.push_back(c);
  if (healthy.empty()) return std::nullopt;
  // Highest (generation, flush, dirty); `present` is in client order, so a strict '>'
  // leaves ties with the lowest client.
  auto key = [&](ClientId c) { return std::tuple(v[c].generation, v[c].flush, v[c].dirty); };
  ClientId source = healthy.front();
  for (ClientId c : healthy)
    if (key(c) > key(source)) source = c;
  ExtentMend m{extent, source, {}};
  // A damaged copy differs from the healthy source (damaged is part of the version).
  for (ClientId c : present)
    if (c != source && (v[source].dirty || v[c] != v[source])) m.dests.push_back(c);
  CRU_ASSERT(!m.dests.empty());
  return m;
}

std::vector<ExtentMend> plan_mend(const ClientData<std::vector<proto::ExtentVersion>>& versions,
                                  const std::vector<ClientId>& present) {
  CRU_ASSERT(present.size() >= 2);
  size_t n = versions[present.front()].size();
  for (ClientId c : present)
    CRU_ASSERT(versions[c].size() == n, "clients report different extent counts");
  std::vector<ExtentMend> out;
  for (size_t e = 0; e < n; ++e) {
    ClientData<proto::ExtentVersion> v;
    for (ClientId c : present) v[c] = versions[c][e];
    if (auto m = mend_extent(ExtentId{static_cast<uint32_t>(e)}, v, present))
      out.push_back(std::move(*m));
  }
  return out;
}

}  // namespace cru::upstairs
