// The state tables (states.h) against docs/upstairs-states.md: every row of the document's
// tables is a row of the code's, and the other way round, so neither can drift. A
// failure prints the rows as the code has them, ready to paste.
#include "upstairs/states.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace cru::upstairs {
namespace {

using Row = std::vector<std::string>;

// docs/ relative to this file (tests/unit/upstairs/), so the test runs from any directory.
std::filesystem::path doc_path() {
  return std::filesystem::path(__FILE__).parent_path() / "../../../docs/upstairs-states.md";
}

std::string trim(std::string s) {
  const char* ws = " \t`";
  s.erase(0, s.find_first_not_of(ws));
  s.erase(s.find_last_not_of(ws) + 1);
  return s;
}

// The rows of every table under each "## " heading, header and separator lines dropped.
std::map<std::string, std::vector<Row>> read_tables() {
  std::ifstream in(doc_path());
  EXPECT_TRUE(in.good()) << "cannot read " << doc_path();
  std::map<std::string, std::vector<Row>> tables;
  std::string line, section;
  bool header_seen = false;
  while (std::getline(in, line)) {
    if (line.rfind("## ", 0) == 0) {
      section = trim(line.substr(3));
      tables[section];  // a heading with no table yet is an empty table
      header_seen = false;
      continue;
    }
    if (line.empty() || line[0] != '|') {
      header_seen = false;
      continue;
    }
    if (!header_seen) {  // the first line of a table names its columns
      header_seen = true;
      continue;
    }
    if (line.find("---") != std::string::npos) continue;
    Row row;
    std::stringstream cells(line.substr(1));
    std::string cell;
    while (std::getline(cells, cell, '|')) row.push_back(trim(cell));
    tables[section].push_back(row);
  }
  return tables;
}

template <typename State, typename Event>
std::vector<Row> code_rows(std::span<const Transition<State, Event>> table) {
  std::vector<Row> rows;
  for (const auto& t : table)
    rows.push_back({std::string(name(t.from)), std::string(name(t.event)), std::string(name(t.to)),
                    std::string(t.action)});
  return rows;
}

std::string markdown(const std::vector<Row>& rows) {
  std::string out;
  for (const Row& r : rows) {
    out += "|";
    for (const std::string& cell : r) out += " " + cell + " |";
    out += "\n";
  }
  return out;
}

void expect_same_rows(const std::string& section, const std::vector<Row>& code) {
  auto tables = read_tables();
  ASSERT_TRUE(tables.contains(section))
      << "docs/upstairs-states.md has no \"## " << section << "\" table";
  const std::vector<Row>& doc = tables[section];
  std::set<Row> in_doc(doc.begin(), doc.end()), in_code(code.begin(), code.end());
  for (const Row& r : doc)
    EXPECT_TRUE(in_code.contains(r)) << "in the document, not in the code: " << markdown({r});
  for (const Row& r : code)
    EXPECT_TRUE(in_doc.contains(r)) << "in the code, not in the document: " << markdown({r});
  EXPECT_EQ(doc.size(), in_doc.size()) << "a row is listed twice in \"" << section << "\"";
  if (in_doc != in_code)
    ADD_FAILURE() << "the code's \"" << section << "\" rows:\n" << markdown(code);
}

constexpr DsState kAllDsStates[] = {
    DsState::kIdle,           DsState::kDisconnected,    DsState::kConnecting,
    DsState::kWaitYesItsMe,   DsState::kWaitPromote,     DsState::kWaitActive,
    DsState::kWaitRegionInfo, DsState::kWaitVersions,    DsState::kWaitQuorum,
    DsState::kReconcile,      DsState::kLiveRepairReady, DsState::kLiveRepair,
    DsState::kActive};
constexpr DsMode kAllModes[] = {DsMode::kNew, DsMode::kOffline, DsMode::kFaulted,
                                DsMode::kReplaced};

// "yes", "no", or "if offline" when only the offline mode counts.
std::string per_mode(bool (*counts)(DsState, DsMode), DsState s) {
  std::set<DsMode> yes;
  for (DsMode m : kAllModes)
    if (counts(s, m)) yes.insert(m);
  if (yes.empty()) return "no";
  if (yes.size() == std::size(kAllModes)) return "yes";
  if (yes == std::set<DsMode>{DsMode::kOffline}) return "if offline";
  ADD_FAILURE() << name(s) << ": a quorum rule the document's table cannot say";
  return "?";
}

TEST(UpstairsStates, VolumeTableMatchesTheDocument) {
  expect_same_rows("Volume transitions", code_rows(volume_transitions()));
}

TEST(UpstairsStates, DownstairsTableMatchesTheDocument) {
  expect_same_rows("Downstairs transitions", code_rows(ds_transitions()));
}

TEST(UpstairsStates, ModeTableMatchesTheDocument) {
  expect_same_rows("Downstairs modes", code_rows(mode_transitions()));
}

TEST(UpstairsStates, QuorumTableMatchesTheDocument) {
  std::vector<Row> code;
  for (DsState s : kAllDsStates)
    code.push_back({std::string(name(s)), per_mode(counts_for_write_quorum, s),
                    per_mode(counts_for_flush_quorum, s), serves_reads(s) ? "yes" : "no",
                    std::string(status_name(s))});
  expect_same_rows("Quorum and reads", code);
}

// Every state can be left and, but for idle, reached; each (from, event) pair leads to
// distinct states (a duplicate row would hide a changed rule).
TEST(UpstairsStates, DownstairsTableIsConnectedAndHasNoDuplicates) {
  std::set<DsState> from, to;
  std::set<std::tuple<DsState, DsEvent, DsState>> seen;
  for (const auto& t : ds_transitions()) {
    from.insert(t.from);
    to.insert(t.to);
    EXPECT_TRUE(seen.insert({t.from, t.event, t.to}).second)
        << name(t.from) << " " << name(t.event) << " " << name(t.to) << " twice";
    EXPECT_NE(t.from, t.to) << "staying put is not a move: " << name(t.from);
  }
  for (DsState s : kAllDsStates) {
    EXPECT_TRUE(from.contains(s)) << name(s) << " cannot be left";
    if (s != DsState::kIdle) {
      EXPECT_TRUE(to.contains(s)) << name(s) << " cannot be reached";
    }
  }
}

TEST(UpstairsStates, LegalMovesAreExactlyTheRows) {
  EXPECT_TRUE(is_legal(DsState::kActive, DsEvent::kLost, DsState::kDisconnected));
  EXPECT_FALSE(is_legal(DsState::kActive, DsEvent::kLost, DsState::kIdle));
  EXPECT_FALSE(is_legal(DsState::kIdle, DsEvent::kConnected, DsState::kWaitYesItsMe));
  EXPECT_TRUE(is_legal(DsMode::kOffline, ModeEvent::kFault, DsMode::kFaulted));
  EXPECT_FALSE(is_legal(DsMode::kReplaced, ModeEvent::kFault, DsMode::kFaulted));
  EXPECT_TRUE(is_legal(VolumeState::kActive, VolumeEvent::kFenced, VolumeState::kDisabled));
  EXPECT_FALSE(is_legal(VolumeState::kInitializing, VolumeEvent::kActivated, VolumeState::kActive));
}

}  // namespace
}  // namespace cru::upstairs
