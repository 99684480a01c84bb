// What a FramedConnection's handlers saw, and a loop that drives an io_context until a
// condition holds: shared by the connection and TLS tests.
#pragma once

#include <asio/io_context.hpp>
#include <chrono>
#include <string>
#include <vector>

#include "proto/connection.h"
#include "support/process.h"

namespace cru::proto {

// What the handlers saw, in order.
struct Record {
  int connected = 0;
  std::vector<Message> messages;
  std::vector<std::string> closed;  // reasons; exactly one when the connection ended
};

inline FramedConnection::Handlers recording(Record& r) {
  FramedConnection::Handlers h;
  h.on_connected = [&r] { ++r.connected; };
  h.on_message = [&r](Message m) { r.messages.push_back(std::move(m)); };
  h.on_closed = [&r](const std::string& reason) { r.closed.push_back(reason); };
  return h;
}

// Runs the io_context until `done` holds or the timeout passes; true if it holds.
template <typename Pred>
bool run_until(asio::io_context& io, Pred done, test::Millis timeout = test::Millis{20000}) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done() && std::chrono::steady_clock::now() < deadline) {
    if (io.stopped()) io.restart();
    io.run_one_for(std::chrono::milliseconds(10));
  }
  return done();
}

}  // namespace cru::proto
