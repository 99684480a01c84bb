#include "upstairs/states.h"

#include <algorithm>
#include <array>

#include "common/assert.h"

namespace cru::upstairs {

namespace {

using VS = VolumeState;
using VE = VolumeEvent;
using S = DsState;
using E = DsEvent;
using M = DsMode;
using ME = ModeEvent;

constexpr Transition<VS, VE> kVolumeTransitions[] = {
    {VS::kInitializing, VE::kActivate, VS::kActivating, "connect to the three downstairs"},
    {VS::kDisabled, VE::kActivate, VS::kActivating, "connect to the three downstairs"},
    {VS::kActivating, VE::kActivated, VS::kActive, "answer the activation; serve IO"},
    {VS::kActivating, VE::kActivationFailed, VS::kInitializing,
     "fail the activation; drop every connection"},
    {VS::kActive, VE::kDeactivate, VS::kDeactivating, "flush what is outstanding"},
    {VS::kDeactivating, VE::kDeactivated, VS::kInitializing,
     "answer the deactivation; drop every connection"},
    {VS::kActivating, VE::kFenced, VS::kDisabled, "fail every waiting call; drop every connection"},
    {VS::kActive, VE::kFenced, VS::kDisabled, "fail every waiting call; drop every connection"},
    {VS::kDeactivating, VE::kFenced, VS::kDisabled,
     "fail every waiting call; drop every connection"},
};

// Losing the connection is legal from every connected state, and stopping from every
// state but idle: listed one row each, so the table reads as the code does.
constexpr std::string_view kLost = "drop the connection; reconnect after the backoff";
constexpr std::string_view kStop = "drop the connection; no reconnect";

constexpr Transition<S, E> kDsTransitions[] = {
    {S::kIdle, E::kActivate, S::kDisconnected, "connect now"},
    {S::kDisconnected, E::kConnectDue, S::kConnecting, "open a connection (ConnectTo)"},
    {S::kConnecting, E::kConnected, S::kWaitYesItsMe, "send HereIAm"},
    {S::kWaitYesItsMe, E::kYesItsMe, S::kWaitPromote, "activating: wait until all three answered"},
    {S::kWaitYesItsMe, E::kYesItsMe, S::kWaitActive,
     "volume active: send PromoteToActive with its generation"},
    {S::kWaitPromote, E::kPromote, S::kWaitActive, "settle the generation; send PromoteToActive"},
    {S::kWaitActive, E::kNowActive, S::kWaitRegionInfo, "send RegionInfoPlease"},
    {S::kWaitRegionInfo, E::kRegionInfo, S::kWaitVersions, "send ExtentVersionsPlease"},
    {S::kWaitRegionInfo, E::kRegionInfo, S::kActive,
     "offline before: send LastFlush, replay every job after it"},
    {S::kWaitVersions, E::kVersions, S::kWaitQuorum, "activating: collate once all three are here"},
    {S::kWaitVersions, E::kVersions, S::kLiveRepairReady, "volume active: wait for live repair"},
    {S::kWaitVersions, E::kVersions, S::kActive, "read-only volume: nothing to repair"},
    {S::kWaitQuorum, E::kReconcile, S::kReconcile, "repair the extents that differ"},
    {S::kLiveRepairReady, E::kReconcile, S::kReconcile,
     "all three need repair and none is active: reconcile as at activation"},
    {S::kWaitQuorum, E::kInSync, S::kActive, "every extent agrees"},
    {S::kReconcile, E::kInSync, S::kActive, "reconciliation complete"},
    {S::kLiveRepairReady, E::kInSync, S::kActive, "all three back and every extent agrees"},
    {S::kLiveRepairReady, E::kLiveRepairStart, S::kLiveRepair,
     "repair extent by extent from an active downstairs"},
    {S::kLiveRepair, E::kLiveRepairDone, S::kActive, "the final flush completed"},
    {S::kConnecting, E::kLost, S::kDisconnected, kLost},
    {S::kWaitYesItsMe, E::kLost, S::kDisconnected, kLost},
    {S::kWaitPromote, E::kLost, S::kDisconnected, kLost},
    {S::kWaitActive, E::kLost, S::kDisconnected, kLost},
    {S::kWaitRegionInfo, E::kLost, S::kDisconnected, kLost},
    {S::kWaitVersions, E::kLost, S::kDisconnected, kLost},
    {S::kWaitQuorum, E::kLost, S::kDisconnected, kLost},
    {S::kReconcile, E::kLost, S::kDisconnected, kLost},
    {S::kLiveRepairReady, E::kLost, S::kDisconnected, kLost},
    {S::kLiveRepair, E::kLost, S::kDisconnected, kLost},
    {S::kActive, E::kLost, S::kDisconnected, kLost},
    {S::kDisconnected, E::kStop, S::kIdle, kStop},
    {S::kConnecting, E::kStop, S::kIdle, kStop},
    {S::kWaitYesItsMe, E::kStop, S::kIdle, kStop},
    {S::kWaitPromote, E::kStop, S::kIdle, kStop},
    {S::kWaitActive, E::kStop, S::kIdle, kStop},
    {S::kWaitRegionInfo, E::kStop, S::kIdle, kStop},
    {S::kWaitVersions, E::kStop, S::kIdle, kStop},
    {S::kWaitQuorum, E::kStop, S::kIdle, kStop},
    {S::kReconcile, E::kStop, S::kIdle, kStop},
    {S::kLiveRepairReady, E::kStop, S::kIdle, kStop},
    {S::kLiveRepair, E::kStop, S::kIdle, kStop},
    {S::kActive, E::kStop, S::kIdle, kStop},
};

constexpr Transition<M, ME> kModeTransitions[] = {
    {M::kOffline, ME::kActivate, M::kNew, "start clean"},
    {M::kFaulted, ME::kActivate, M::kNew, "start clean"},
    {M::kReplaced, ME::kActivate, M::kNew, "start clean"},
    {M::kNew, ME::kWentOffline, M::kOffline, "hold its new jobs for replay"},
    {M::kNew, ME::kFault, M::kFaulted, "skip its jobs; live repair when it is back"},
    {M::kOffline, ME::kFault, M::kFaulted, "skip its jobs; live repair when it is back"},
    {M::kNew, ME::kReplace, M::kReplaced, "skip its jobs; connect to the new address"},
    {M::kOffline, ME::kReplace, M::kReplaced, "skip its jobs; connect to the new address"},
    {M::kFaulted, ME::kReplace, M::kReplaced, "skip its jobs; connect to the new address"},
    {M::kOffline, ME::kRejoined, M::kNew, "in step again"},
    {M::kFaulted, ME::kRejoined, M::kNew, "in step again"},
    {M::kReplaced, ME::kRejoined, M::kNew, "in step again"},
};

template <typename State, typename Event>
bool listed(std::span<const Transition<State, Event>> table, State from, Event event, State to) {
  return std::any_of(table.begin(), table.end(), [&](const Transition<State, Event>& t) {
    return t.from == from && t.event == event && t.to == to;
  });
}

}  // namespace

std::span<const Transition<VolumeState, VolumeEvent>> volume_transitions() {
  return kVolumeTransitions;
}
std::span<const Transition<DsState, DsEvent>> ds_transitions() { return kDsTransitions; }
std::span<const Transition<DsMode, ModeEvent>> mode_transitions() { return kModeTransitions; }

bool is_legal(VolumeState from, VolumeEvent event, VolumeState to) {
  return listed(volume_transitions(), from, event, to);
}
bool is_legal(DsState from, DsEvent event, DsState to) {
  return listed(ds_transitions(), from, event, to);
}
bool is_legal(DsMode from, ModeEvent event, DsMode to) {
  return listed(mode_transitions(), from, event, to);
}

std::string_view name(VolumeState s) {
  switch (s) {
    case VS::kInitializing:
      return "initializing";
    case VS::kActivating:
      return "activating";
    case VS::kActive:
      return "active";
    case VS::kDeactivating:
      return "deactivating";
    case VS::kDisabled:
      return "disabled";
  }
  CRU_UNREACHABLE("volume state");
}

std::string_view name(VolumeEvent e) {
  switch (e) {
    case VE::kActivate:
      return "activate";
    case VE::kActivated:
      return "activated";
    case VE::kActivationFailed:
      return "activation_failed";
    case VE::kDeactivate:
      return "deactivate";
    case VE::kDeactivated:
      return "deactivated";
    case VE::kFenced:
      return "fenced";
  }
  CRU_UNREACHABLE("volume event");
}

std::string_view name(DsState s) {
  switch (s) {
    case S::kIdle:
      return "idle";
    case S::kDisconnected:
      return "disconnected";
    case S::kConnecting:
      return "connecting";
    case S::kWaitYesItsMe:
      return "wait_yes_its_me";
    case S::kWaitPromote:
      return "wait_promote";
    case S::kWaitActive:
      return "wait_active";
    case S::kWaitRegionInfo:
      return "wait_region_info";
    case S::kWaitVersions:
      return "wait_versions";
    case S::kWaitQuorum:
      return "wait_quorum";
    case S::kReconcile:
      return "reconcile";
    case S::kLiveRepairReady:
      return "live_repair_ready";
    case S::kLiveRepair:
      return "live_repair";
    case S::kActive:
      return "active";
  }
  CRU_UNREACHABLE("downstairs state");
}

std::string_view name(DsEvent e) {
  switch (e) {
    case E::kActivate:
      return "activate";
    case E::kConnectDue:
      return "connect_due";
    case E::kConnected:
      return "connected";
    case E::kYesItsMe:
      return "yes_its_me";
    case E::kPromote:
      return "promote";
    case E::kNowActive:
      return "now_active";
    case E::kRegionInfo:
      return "region_info";
    case E::kVersions:
      return "versions";
    case E::kReconcile:
      return "reconcile";
    case E::kInSync:
      return "in_sync";
    case E::kLiveRepairStart:
      return "live_repair_start";
    case E::kLiveRepairDone:
      return "live_repair_done";
    case E::kLost:
      return "lost";
    case E::kStop:
      return "stop";
  }
  CRU_UNREACHABLE("downstairs event");
}

std::string_view name(DsMode m) {
  switch (m) {
    case M::kNew:
      return "new";
    case M::kOffline:
      return "offline";
    case M::kFaulted:
      return "faulted";
    case M::kReplaced:
      return "replaced";
  }
  CRU_UNREACHABLE("downstairs mode");
}

std::string_view name(ModeEvent e) {
  switch (e) {
    case ME::kActivate:
      return "activate";
    case ME::kWentOffline:
      return "went_offline";
    case ME::kFault:
      return "fault";
    case ME::kReplace:
      return "replace";
    case ME::kRejoined:
      return "rejoined";
  }
  CRU_UNREACHABLE("mode event");
}

std::string_view status_name(DsState s) {
  switch (s) {
    case S::kWaitYesItsMe:
    case S::kWaitActive:
    case S::kWaitRegionInfo:
    case S::kWaitVersions:
      return "negotiating";
    case S::kWaitPromote:
      return "waiting_promote";
    case S::kReconcile:
      return "reconciling";
    case S::kIdle:
    case S::kDisconnected:
    case S::kConnecting:
    case S::kWaitQuorum:
    case S::kLiveRepairReady:
    case S::kLiveRepair:
    case S::kActive:
      return name(s);
  }
  CRU_UNREACHABLE("downstairs state");
}

bool counts_for_write_quorum(DsState s, DsMode m) {
  switch (s) {
    case S::kActive:
    case S::kLiveRepair:
      return true;
    case S::kIdle:
      return false;
    case S::kDisconnected:
    case S::kConnecting:
    case S::kWaitYesItsMe:
    case S::kWaitPromote:
    case S::kWaitActive:
    case S::kWaitRegionInfo:
    case S::kWaitVersions:
    case S::kWaitQuorum:
    case S::kReconcile:
    case S::kLiveRepairReady:
      return m == DsMode::kOffline;  // its jobs are held and replayed
  }
  CRU_UNREACHABLE("downstairs state");
}

bool counts_for_flush_quorum(DsState s, DsMode m) { return counts_for_write_quorum(s, m); }

bool serves_reads(DsState s) { return s == S::kActive; }

bool is_connected(DsState s) {
  switch (s) {
    case S::kIdle:
    case S::kDisconnected:
      return false;
    case S::kConnecting:
    case S::kWaitYesItsMe:
    case S::kWaitPromote:
    case S::kWaitActive:
    case S::kWaitRegionInfo:
    case S::kWaitVersions:
    case S::kWaitQuorum:
    case S::kReconcile:
    case S::kLiveRepairReady:
    case S::kLiveRepair:
    case S::kActive:
      return true;
  }
  CRU_UNREACHABLE("downstairs state");
}

}  // namespace cru::upstairs
