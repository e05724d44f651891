// hiredis_client.hpp — the redis_client implementation over hiredis 0.14 (RESP2, no TLS).
//
// hiredis is used for what it is good at — formatting commands (redisFormatSdsCommandArgv) and
// parsing replies (redisReader) — over our own non-blocking sockets, so that every command gets a
// real deadline without killing its connection. The design (leader/follower I/O on the caller's
// thread, one background I/O thread for connects, health, async completions) is written down at the
// top of hiredis_client.cpp.
//
//   auto client = make_hiredis_client({.url = "redis://:secret@127.0.0.1:6379/1"});
//   result r = client->execute({"GET", "k"}, 50ms);
//
// Errors: make_hiredis_client throws layercache::invalid_argument_error for a bad URL or invalid
// options. Connection problems do not throw: the constructor waits up to connect_timeout for the
// first connection attempts; if they fail, the client starts disconnected (calls fail fast) and
// keeps reconnecting with backoff. An authentication failure is reported to callers as
// invalid_argument "redis: authentication failed for user X: ...".
//
// Thread-safety: see redis_client.hpp. Destruction must not race with calls; the destructor stops
// and joins the I/O thread after failing every pending command with unavailable (async callbacks
// still run, on the I/O thread, before it exits).
#pragma once

#include <functional>
#include <memory>

#include "redis/redis_client.hpp"

namespace layercache::redis_detail {

std::unique_ptr<redis_client> make_hiredis_client(const client_options& options);

// Test seam, not for production: `hook` runs on the thread holding a connection's writer role
// right after each send() that moved bytes, before the writer looks at the connection again (no
// lock held), so a test can let replies arrive and commands queue at that point. Empty: none.
// Install and remove only while no client is sending (e.g. before creating the client and after
// destroying it).
void set_after_send_hook_for_testing(std::function<void()> hook);

}  // namespace layercache::redis_detail
