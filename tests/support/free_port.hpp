// free_port.hpp — loopback TCP port helpers for tests that start servers.
//
//   const int port = layercache::test::free_port();   // e.g. 41237, nobody listens on it right now
//
// A port returned by free_port() is only free at the moment it was probed: another process can take
// it before the caller binds it, so launchers must retry with a new port when the bind fails
// (redis_server does). Only 127.0.0.1 is ever used.
//
// Thread-safety: all functions are thread-safe (they only create and close their own sockets).
#pragma once

#include <chrono>

namespace layercache::test {

// Returns a TCP port on 127.0.0.1 that nobody listens on: binds 127.0.0.1:0, reads the port the
// kernel picked, closes the socket. Throws std::system_error if no socket can be bound.
int free_port();

// True when a listening socket could bind 127.0.0.1:`port` right now (probed with SO_REUSEADDR,
// as servers bind, so connections lingering in TIME_WAIT do not count as "taken").
bool port_is_free(int port);

// Waits until port_is_free(port) or `timeout` passed; returns whether the port is free. Polls with
// a short backoff (there is no event to wait on for "someone else released a port").
bool wait_port_free(int port, std::chrono::milliseconds timeout);

}  // namespace layercache::test
