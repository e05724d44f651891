#include "redis/errors.hpp"

#include <cstring>
#include <string>

namespace layercache::redis_detail {
namespace {

// The first word of an error reply ("WRONGPASS invalid username-password pair" → "WRONGPASS").
std::string_view prefix_of(std::string_view message) noexcept {
  const std::size_t end = message.find(' ');
  return message.substr(0, end);
}

std::string errno_text(int err) {
  // strerror_r has two signatures; the GNU one (glibc with _GNU_SOURCE, which g++ defines) returns
  // a pointer that may or may not point into `buf`.
  char buf[128] = {};
  const char* text = strerror_r(err, buf, sizeof buf);
  return text != nullptr ? std::string(text) : std::string("errno ") + std::to_string(err);
}

}  // namespace

errc classify_error_reply(std::string_view message) noexcept {
  const std::string_view p = prefix_of(message);
  if (p == "NOAUTH" || p == "WRONGPASS") return errc::invalid_argument;
  if (p == "OOM") return errc::resource_exhausted;
  if (p == "LOADING" || p == "BUSY" || p == "MASTERDOWN" || p == "TRYAGAIN") {
    return errc::unavailable;
  }
  return errc::internal;
}

status error_reply_status(std::string_view message) {
  std::string msg = "redis: ";
  msg += message;
  return status(classify_error_reply(message), std::move(msg));
}

status auth_failed(std::string_view user, std::string_view server_message) {
  std::string msg = "redis: authentication failed for user ";
  msg += user;
  msg += ": ";
  msg += server_message;
  return status(errc::invalid_argument, std::move(msg));
}

status select_failed(int db, std::string_view server_message) {
  std::string msg = "redis: SELECT ";
  msg += std::to_string(db);
  msg += " (the database in the URL) failed: ";
  msg += server_message;
  return status(errc::invalid_argument, std::move(msg));
}

status transport_error(std::string_view peer, std::string_view operation, int err) {
  std::string msg = "redis: ";
  msg += operation;
  msg += " ";
  msg += peer;
  msg += " failed: ";
  msg += errno_text(err);
  return status(errc::unavailable, std::move(msg));
}

status connection_closed(std::string_view peer) {
  std::string msg = "redis: connection closed by ";
  msg += peer;
  return status(errc::unavailable, std::move(msg));
}

status protocol_error(std::string_view peer, std::string_view detail) {
  std::string msg = "redis: unparsable reply from ";
  msg += peer;
  msg += ": ";
  msg += detail;
  return status(errc::unavailable, std::move(msg));
}

status connection_stalled(std::string_view peer, std::chrono::milliseconds silence) {
  std::string msg = "redis: ";
  msg += peer;
  msg += " owed replies and sent nothing for ";
  msg += std::to_string(silence.count());
  msg += " ms; connection considered dead";
  return status(errc::unavailable, std::move(msg));
}

status connect_timed_out(std::string_view peer, std::chrono::milliseconds timeout) {
  std::string msg = "redis: connecting to ";
  msg += peer;
  msg += " did not finish within ";
  msg += std::to_string(timeout.count());
  msg += " ms";
  return status(errc::unavailable, std::move(msg));
}

status connection_lost(const status& cause) {
  std::string msg =
      "redis: connection lost before the reply arrived (the command may or may not "
      "have run): ";
  msg += cause.message();
  return status(errc::unavailable, std::move(msg));
}

status not_connected(std::string_view peer, const status& last) {
  if (last.code() == errc::invalid_argument) return last;
  std::string msg = "redis: not connected to ";
  msg += peer;
  if (!last.ok()) {
    msg += " (last error: ";
    msg += last.message();
    msg += ")";
  }
  return status(errc::unavailable, std::move(msg));
}

status deadline_exceeded(std::chrono::milliseconds deadline) {
  std::string msg = "redis: no reply within the deadline of ";
  msg += std::to_string(deadline.count());
  msg += " ms (the command may or may not have run)";
  return status(errc::timeout, std::move(msg));
}

status too_many_pending(std::size_t limit) {
  std::string msg = "redis: more than ";
  msg += std::to_string(limit);
  msg += " commands are waiting for replies (client_options::max_pending)";
  return status(errc::resource_exhausted, std::move(msg));
}

status shutting_down() { return status(errc::unavailable, "redis: the client is shutting down"); }

status bad_command(std::string_view why) {
  std::string msg = "redis: ";
  msg += why;
  return status(errc::invalid_argument, std::move(msg));
}

}  // namespace layercache::redis_detail
