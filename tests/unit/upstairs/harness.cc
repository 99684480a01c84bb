#include "unit/upstairs/harness.h"

#include <cstdlib>

#include "common/log.h"
#include "common/overloaded.h"

namespace cru::upstairs::test {

namespace {
// The tests provoke many expected warnings; CRU_TEST_LOG=info shows them.
const bool kQuietLogs = [] {
  const char* level = std::getenv("CRU_TEST_LOG");
  log::set_level(level != nullptr && log::valid_level(level) ? level : "critical");
  return true;
}();

}  // namespace

std::optional<Message> Harness::sent(ClientId c, JobId id) const {
  for (const Message& m : jobs_sent_[c])
    if (job_view(m)->id == id) return m;
  return std::nullopt;
}

std::vector<JobId> Harness::deps(ClientId c, JobId id) const {
  auto m = sent(c, id);
  EXPECT_TRUE(m) << "job " << id.value << " was not sent to downstairs " << int(c.value);
  return m ? job_view(*m)->deps : std::vector<JobId>{};
}

JobId Harness::newest(ClientId c) const {
  EXPECT_FALSE(jobs_sent_[c].empty()) << "downstairs " << int(c.value) << " was sent no job";
  return jobs_sent_[c].empty() ? JobId{} : job_view(jobs_sent_[c].back())->id;
}

std::optional<JobView> job_view(const Message& m) {
  return std::visit(
      [](const auto& x) -> std::optional<JobView> {
        using T = std::decay_t<decltype(x)>;
        if constexpr (requires {
                        x.job_id;
                        x.deps;
                      }) {
          return JobView{x.job_id, x.deps};
        } else {
          (void)sizeof(T);
          return std::nullopt;
        }
      },
      m);
}

std::optional<JobId> Harness::answered_job(const Message& m) {
  if (auto* a = std::get_if<Ack>(&m)) return a->job_id;
  if (auto* r = std::get_if<ReadResponse>(&m)) return r->job_id;
  if (auto* k = std::get_if<ExtentLiveCloseAck>(&m)) return k->job_id;
  return std::nullopt;
}

bool Harness::precedes(ClientId c, JobId x, JobId y) const {
  std::map<JobId, std::vector<JobId>> graph;
  for (const Message& m : jobs_sent_[c])
    if (auto v = job_view(m); v && !graph.contains(v->id)) graph[v->id] = v->deps;
  auto answered = answered_at_[c].find(x);
  // Depth-first over y's dependencies; each reached job z counts if it is x or if x was
  // answered before z was sent.
  std::set<JobId> seen;
  std::vector<JobId> stack = {y};
  while (!stack.empty()) {
    JobId z = stack.back();
    stack.pop_back();
    if (!seen.insert(z).second) continue;
    if (z == x && z != y) return true;
    auto zs = sent_at_[c].find(z);
    if (answered != answered_at_[c].end() && zs != sent_at_[c].end() &&
        answered->second < zs->second)
      return true;
    for (JobId d : graph[z]) stack.push_back(d);
  }
  return false;
}

void Harness::absorb(Action& a) {
  std::visit(Overloaded{
                 [&](SendTo& s) {
                   EXPECT_EQ(s.conn, conn_[s.client])
                       << "a message to an old connection: " << describe(s.message);
                   if (auto v = job_view(s.message)) {
                     sent_at_[s.client].try_emplace(v->id, seq_++);
                     jobs_sent_[s.client].push_back(s.message);
                   }
                   inbox_[s.client].push_back(std::move(s.message));
                 },
                 [&](ConnectTo& c) {
                   conn_[c.client] = c.conn;
                   pending_connect_[c.client] = true;
                   inbox_[c.client].clear();  // a new connection starts empty
                   connects_.push_back(c);
                 },
                 [&](Disconnect& d) {
                   if (d.conn == conn_[d.client]) pending_connect_[d.client] = false;
                   disconnects_.push_back(d);
                 },
                 [&](GuestDone& g) {
                   ++reply_count_[g.id.value];
                   done_.insert_or_assign(g.id.value, std::move(g));
                 },
             },
             a);
}

JobId Harness::ack_next(ClientId c) {
  auto& q = inbox_[c];
  if (q.empty()) {
    ADD_FAILURE() << "downstairs " << int(c.value) << " has no job to ack";
    return JobId{};
  }
  auto v = job_view(q.front());
  if (!v || std::holds_alternative<Read>(q.front())) {
    ADD_FAILURE() << "downstairs " << int(c.value) << ": next message is " << describe(q.front())
                  << ", not a job answered with an Ack";
    q.pop_front();
    return JobId{};
  }
  q.pop_front();
  ack(c, v->id);
  return v->id;
}

}  // namespace cru::upstairs::test
