// The upstairs' state machines as data: the volume's state, each downstairs' connection
// state, and each downstairs' mode (how it rejoins after losing its connection). Every
// legal move is one row of a table here; the core changes a state only through these
// tables, and a move that is not listed is a bug (it asserts). docs/upstairs-states.md
// holds the same tables, and a unit test keeps the two equal. Pure; no thread of its own.
#pragma once

#include <span>
#include <string_view>

namespace cru::upstairs {

enum class VolumeState { kInitializing, kActivating, kActive, kDeactivating, kDisabled };
enum class VolumeEvent {
  kActivate,
  kActivated,
  kActivationFailed,
  kDeactivate,
  kDeactivated,
  kFenced
};

// One downstairs' connection and negotiation.
enum class DsState {
  kIdle,             // not wanted (the volume is inactive or disabled)
  kDisconnected,     // waiting for the next connect attempt
  kConnecting,       // ConnectTo issued
  kWaitYesItsMe,     // HereIAm sent
  kWaitPromote,      // waiting for the activation's generation to be settled
  kWaitActive,       // PromoteToActive sent
  kWaitRegionInfo,   // RegionInfoPlease sent
  kWaitVersions,     // ExtentVersionsPlease sent
  kWaitQuorum,       // versions in hand at activation, waiting for the others
  kReconcile,        // taking part in reconciliation
  kLiveRepairReady,  // versions in hand after a fault or replacement
  kLiveRepair,       // being live-repaired
  kActive,
};
enum class DsEvent {
  kActivate,    // the volume starts activating
  kConnectDue,  // its reconnect backoff has passed
  kConnected,
  kYesItsMe,
  kPromote,  // all three answered YesItsMe: the generation is settled
  kNowActive,
  kRegionInfo,
  kVersions,
  kReconcile,  // reconciliation starts
  kInSync,     // every extent agrees (at once, or after reconciliation)
  kLiveRepairStart,
  kLiveRepairDone,
  kLost,  // the connection is gone (or dropped by us); it will reconnect
  kStop,  // the volume no longer wants it: deactivated, fenced or activation failed
};

// How a downstairs rejoins once its connection is back.
enum class DsMode {
  kNew,       // healthy, or negotiating at activation: rejoins as a peer
  kOffline,   // disconnected while active: its jobs are held and replayed
  kFaulted,   // its jobs were skipped: rejoins through live repair
  kReplaced,  // a new region at a new address: live repair copies every extent
};
enum class ModeEvent {
  kActivate,     // the volume starts activating
  kWentOffline,  // an active downstairs' connection dropped and replay is possible
  kFault,        // it missed jobs (errors, limits, an unreplayable disconnect, ...)
  kReplace,      // replaced by another region at another address
  kRejoined,     // back in step: replayed, reconciled or live-repaired
};

template <typename State, typename Event>
struct Transition {
  State from;
  Event event;
  State to;
  std::string_view action;  // what the core does on this move (documentation)
};

std::span<const Transition<VolumeState, VolumeEvent>> volume_transitions();
std::span<const Transition<DsState, DsEvent>> ds_transitions();
std::span<const Transition<DsMode, ModeEvent>> mode_transitions();

// Whether (from, event, to) is a row of its table.
bool is_legal(VolumeState from, VolumeEvent event, VolumeState to);
bool is_legal(DsState from, DsEvent event, DsState to);
bool is_legal(DsMode from, ModeEvent event, DsMode to);

// The names used in docs/upstairs-states.md and in logs.
std::string_view name(VolumeState s);
std::string_view name(VolumeEvent e);
std::string_view name(DsState s);
std::string_view name(DsEvent e);
std::string_view name(DsMode m);
std::string_view name(ModeEvent e);

// What the status shows for a downstairs state (the negotiation steps read as one).
std::string_view status_name(DsState s);

// Which downstairs count where, from its state and mode:
// - write quorum: writes and discards are admitted only while two downstairs take them
//   (sent now, or held for replay while offline);
// - flush quorum: a flush is admitted under the same rule and acknowledged once two
//   downstairs completed it;
// - reads go to one downstairs chosen among those that serve reads.
bool counts_for_write_quorum(DsState s, DsMode m);
bool counts_for_flush_quorum(DsState s, DsMode m);
bool serves_reads(DsState s);
// Whether the connection is open (ConnectTo issued and not yet lost).
bool is_connected(DsState s);

}  // namespace cru::upstairs
