#include "metrics/upstairs_metrics.h"

#include <string>

#include "metrics/metrics.h"

namespace cru::metrics {

namespace {

// "offline (connecting)" -> "offline": the state a replica is in, without the detail of
// how far its reconnection got (that detail would make a new series at every step).
std::string state_label(const std::string& state) { return state.substr(0, state.find(' ')); }

double as_value(uint64_t n) { return static_cast<double>(n); }

}  // namespace

std::vector<prometheus::MetricFamily> UpstairsCollector::Collect() const {
  return families(snapshot_(), io_);
}

std::vector<prometheus::MetricFamily> UpstairsCollector::families(const upstairs::Snapshot& s,
                                                                  const fuse::GuestIoStats* io) {
  std::vector<prometheus::MetricFamily> out;
  auto volume_state =
      gauge("crucible_upstairs_volume_state", "The volume's state: 1 on the current one.");
  add(volume_state, {{"state", s.state}}, 1);
  out.push_back(std::move(volume_state));
  auto generation = gauge("crucible_upstairs_generation", "The volume's generation.");
  add(generation, {}, as_value(s.generation.value));
  out.push_back(std::move(generation));

  // Per replica: labelled by its index and its address (which `replace` changes).
  auto state = gauge("crucible_upstairs_replica_state",
                     "Each replica's state: 1 on the current one (offline, faulted, active, ...).");
  auto active = gauge("crucible_upstairs_replica_active", "1 if the replica is active, else 0.");
  auto jobs = gauge("crucible_upstairs_replica_jobs_in_flight",
                    "Jobs sent to (or held for) the replica and not yet answered.");
  auto bytes =
      gauge("crucible_upstairs_replica_bytes_in_flight", "Bytes of the replica's jobs in flight.");
  auto connects =
      counter("crucible_upstairs_replica_connects_total", "Connections made to the replica.");
  auto faults = counter("crucible_upstairs_replica_faults_total",
                        "Times the replica was faulted (it then needs a live repair).");
  auto replays = counter("crucible_upstairs_replica_replays_total",
                         "Times the replica came back and its jobs were replayed.");
  auto heals =
      counter("crucible_upstairs_replica_self_heals_total",
              "Reads from the replica that failed verification (served from another replica; "
              "the replica is then repaired).");
  auto repairs = counter("crucible_upstairs_replica_live_repairs_total",
                         "Live repairs started with the replica as a target.");
  for (ClientId id : kAllClients) {
    const auto& c = s.clients[id];
    const std::string replica = std::to_string(id.value);
    const std::string current = state_label(c.state);
    const Labels labels = {{"replica", replica}, {"target", c.target}};
    add(state, {{"replica", replica}, {"target", c.target}, {"state", current}}, 1);
    add(active, labels, current == "active" ? 1 : 0);
    add(jobs, labels, as_value(c.jobs_in_flight));
    add(bytes, labels, as_value(c.bytes_in_flight));
    add(connects, labels, as_value(c.connects));
    add(faults, labels, as_value(c.faults));
    add(replays, labels, as_value(c.replays));
    add(heals, labels, as_value(c.self_heals));
    add(repairs, labels, as_value(c.live_repairs));
  }
  for (auto* f : {&state, &active, &jobs, &bytes, &connects, &faults, &replays, &heals, &repairs})
    out.push_back(std::move(*f));

  auto table = gauge("crucible_upstairs_jobs", "Jobs in the upstairs job table.");
  add(table, {}, as_value(s.jobs));
  out.push_back(std::move(table));
  auto waiting = gauge("crucible_upstairs_guest_waiting",
                       "Guest operations waiting for admission (the in-flight limits).");
  add(waiting, {}, as_value(s.guest_waiting));
  out.push_back(std::move(waiting));

  // The volume's own counts (block IO as the upstairs issued it, read-modify-write reads
  // included; flushes it issued on its own after idle time included).
  auto ops = counter("crucible_upstairs_volume_ops_total", "Volume operations issued, by type.");
  add(ops, {{"op", "read"}}, as_value(s.reads));
  add(ops, {{"op", "write"}}, as_value(s.writes));
  add(ops, {{"op", "discard"}}, as_value(s.discards));
  add(ops, {{"op", "flush"}}, as_value(s.flushes));
  add(ops, {{"op", "barrier"}}, as_value(s.barriers));
  out.push_back(std::move(ops));
  auto vbytes = counter("crucible_upstairs_volume_bytes_total", "Volume bytes read and written.");
  add(vbytes, {{"op", "read"}}, as_value(s.read_bytes));
  add(vbytes, {{"op", "write"}}, as_value(s.write_bytes));
  out.push_back(std::move(vbytes));

  auto reconcile_total = gauge("crucible_upstairs_reconcile_extents",
                               "Extents to reconcile at activation (0 when none were needed).");
  add(reconcile_total, {}, as_value(s.reconcile_extents_total));
  auto reconcile_done =
      gauge("crucible_upstairs_reconcile_extents_done", "Extents reconciled so far.");
  add(reconcile_done, {}, as_value(s.reconcile_extents_done));
  auto reconcile_running =
      gauge("crucible_upstairs_reconcile_running", "1 while a reconciliation runs.");
  add(reconcile_running, {}, s.reconciling ? 1 : 0);
  auto reconcile_bytes =
      gauge("crucible_upstairs_reconcile_bytes",
            "Bytes the current (or last) reconciliation transferred between "
            "replicas: the chunks that differed, as the receivers counted them.");
  add(reconcile_bytes, {}, as_value(s.reconcile_bytes_transferred));
  for (auto* f : {&reconcile_total, &reconcile_done, &reconcile_running, &reconcile_bytes})
    out.push_back(std::move(*f));

  const auto& r = s.repair;
  auto running = gauge("crucible_upstairs_live_repair_running", "1 while a live repair runs.");
  add(running, {}, r.running ? 1 : 0);
  auto extents = gauge("crucible_upstairs_live_repair_extents",
                       "Extents the running (or last) live repair walks.");
  add(extents, {}, as_value(r.extent_count));
  auto done = gauge("crucible_upstairs_live_repair_extents_done",
                    "Extents the live repair finished: copied or found equal.");
  add(done, {{"how", "copied"}}, as_value(r.extents_repaired));
  add(done, {{"how", "equal"}}, as_value(r.extents_confirmed));
  auto copied = gauge("crucible_upstairs_live_repair_bytes",
                      "Bytes the running live repair transferred to its targets: the chunks "
                      "that differed, as the targets counted them (not whole extents).");
  add(copied, {}, as_value(r.bytes_transferred));
  auto eta = gauge("crucible_upstairs_live_repair_eta_seconds",
                   "The live repair's estimate of the time left (0 when not running).");
  add(eta, {}, r.running ? r.eta_s : 0);
  auto finished = counter("crucible_upstairs_live_repairs_total", "Live repairs that ended.");
  add(finished, {{"result", "completed"}}, as_value(s.live_repairs_completed));
  add(finished, {{"result", "aborted"}}, as_value(s.live_repairs_aborted));
  for (auto* f : {&running, &extents, &done, &copied, &eta, &finished})
    out.push_back(std::move(*f));

  if (io != nullptr) {
    auto seconds = histogram("crucible_upstairs_guest_op_seconds",
                             "Guest operations through disk.img, from the FUSE request to its "
                             "reply, by operation (the count is the number of operations).");
    auto gbytes = counter("crucible_upstairs_guest_bytes_total",
                          "Guest bytes through disk.img, by operation.");
    auto errors = counter("crucible_upstairs_guest_errors_total",
                          "Guest operations answered with an error, by operation.");
    for (size_t i = 0; i < fuse::kGuestOps; ++i) {
      const auto op = static_cast<fuse::GuestOp>(i);
      const auto name = fuse::guest_op_name(op);
      add(seconds, {{"op", name}}, (*io)[op].seconds);
      add(gbytes, {{"op", name}}, as_value((*io)[op].bytes.load(std::memory_order_relaxed)));
      add(errors, {{"op", name}}, as_value((*io)[op].errors.load(std::memory_order_relaxed)));
    }
    out.push_back(std::move(seconds));
    out.push_back(std::move(gbytes));
    out.push_back(std::move(errors));
  }
  return out;
}

}  // namespace cru::metrics
