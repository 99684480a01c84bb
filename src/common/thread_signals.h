// Library threads (io threads, servers) must never run the process's signal handlers: a
// handler that only sets a flag wakes nothing on such a thread. Call this first thing.
#pragma once

#include <pthread.h>

#include <csignal>
#include <initializer_list>

namespace cru {

inline void block_async_signals_in_this_thread() {
  sigset_t s;
  sigemptyset(&s);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCHLD, SIGPIPE})
    sigaddset(&s, sig);
  pthread_sigmask(SIG_BLOCK, &s, nullptr);
}

}  // namespace cru
