// errors.hpp — the one place where Redis failures become layercache::status codes.
//
// Transport trouble (refused, reset, EOF, protocol garbage, not connected) is errc::unavailable:
// the caller may retry later and other layers may answer. A command deadline is errc::timeout: the
// command may or may not have run. Error replies are classified by their prefix:
//   NOAUTH, WRONGPASS                       invalid_argument (fix the credentials, do not retry)
//   OOM                                     resource_exhausted (Redis hit maxmemory)
//   LOADING, BUSY, MASTERDOWN, TRYAGAIN     unavailable (the server says "retry later")
//   anything else (ERR, WRONGTYPE, ...)     internal (a bug or an unexpected reply)
// Every message starts with "redis: " so it reads well inside a layer failure.
//
// Thread-safety: pure functions.
#pragma once

#include <chrono>
#include <string_view>

#include "layercache/status.hpp"

namespace layercache::redis_detail {

// The code an error reply ("-PREFIX message", without the '-') maps to.
errc classify_error_reply(std::string_view message) noexcept;

// An error reply to an ordinary command, e.g. "redis: WRONGTYPE Operation against a key ...".
status error_reply_status(std::string_view message);

// AUTH was refused, or the server demanded AUTH (NOAUTH): invalid_argument,
// "redis: authentication failed for user X: <server message>".
status auth_failed(std::string_view user, std::string_view server_message);

// SELECT from the URL was refused (e.g. index out of range): invalid_argument.
status select_failed(int db, std::string_view server_message);

// A socket call failed with `err` (errno) while talking to `peer`: unavailable.
status transport_error(std::string_view peer, std::string_view operation, int err);

// The server closed the connection (EOF): unavailable.
status connection_closed(std::string_view peer);

// The reply stream could not be parsed (hiredis reader error): unavailable — the connection is
// dropped and re-established; the command may or may not have run.
status protocol_error(std::string_view peer, std::string_view detail);

// The connection was declared dead because `peer` owed replies and sent nothing for `silence`.
status connection_stalled(std::string_view peer, std::chrono::milliseconds silence);

// Connecting to `peer` (TCP + AUTH/SELECT/PING) did not finish within `timeout`: unavailable.
status connect_timed_out(std::string_view peer, std::chrono::milliseconds timeout);

// What commands on a lost connection fail with: unavailable, naming the cause of the loss.
status connection_lost(const status& cause);

// Fail-fast result while no connection is up. An authentication failure is passed through as is
// (invalid_argument: retrying will not help); anything else becomes unavailable naming `last`.
status not_connected(std::string_view peer, const status& last);

// The command's deadline passed before its reply arrived: timeout.
status deadline_exceeded(std::chrono::milliseconds deadline);

// Too many commands are waiting for replies: resource_exhausted.
status too_many_pending(std::size_t limit);

// The client is being destroyed: unavailable.
status shutting_down();

// The call itself is wrong (empty command, forbidden command, bad deadline): invalid_argument.
status bad_command(std::string_view why);

}  // namespace layercache::redis_detail
