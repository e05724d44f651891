// command_rules.hpp — which commands a shared, pipelined Redis connection accepts (the rules of
// redis_client.hpp: no SELECT/AUTH/HELLO, nothing that holds or changes the connection, MULTI ...
// EXEC only within one pipeline). Used by hiredis_client.cpp before a command is queued.
//
// Templates over the argument container (a span of string_view for execute(), vectors of strings
// for pipelines and async calls), so no call converts its arguments. Not API. Thread-safety: free
// functions without state.
#pragma once

#include <array>
#include <cstddef>
#include <iterator>
#include <string>
#include <string_view>

#include "layercache/status.hpp"
#include "redis/errors.hpp"

namespace layercache::redis_detail {

inline bool iequals(std::string_view a, std::string_view upper) noexcept {
  if (a.size() != upper.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char c = a[i];
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
    if (c != upper[i]) return false;
  }
  return true;
}

enum class command_class : unsigned char { plain, multi, exec, forbidden };

// Commands that would break a shared, pipelined connection: they change its state for every
// caller, hold it (blocking), or do not answer with exactly one reply.
template <class Args>
command_class classify(const Args& argv, std::string& why) {
  const std::string_view name = argv[0];
  if (name.empty() || name.size() > 12) return command_class::plain;  // no name below is longer
  // Every name below starts with one of these letters; GET, HGET, INCR, ... skip the table.
  switch (name[0] | 0x20) {  // ASCII lower case
    case 'a':
    case 'b':
    case 'c':
    case 'd':
    case 'e':
    case 'h':
    case 'm':
    case 'p':
    case 'q':
    case 'r':
    case 's':
    case 'u':
    case 'w':
    case 'x':
      break;
    default:
      return command_class::plain;
  }
  if (iequals(name, "MULTI")) return command_class::multi;
  if (iequals(name, "EXEC") || iequals(name, "DISCARD")) return command_class::exec;
  if (iequals(name, "SELECT")) {
    why =
        "SELECT would change the database of a shared connection; put the database in the URL "
        "(redis://host:port/db)";
    return command_class::forbidden;
  }
  if (iequals(name, "AUTH") || iequals(name, "HELLO")) {
    why = std::string(name) +
          " is sent by the client itself on every connect; put the "
          "credentials in the URL (redis://user:password@host:port)";
    return command_class::forbidden;
  }
  bool bad = false;
  if (iequals(name, "CLIENT")) {
    bad = std::size(argv) > 1 && iequals(argv[1], "REPLY");
  } else if (iequals(name, "XREAD") || iequals(name, "XREADGROUP")) {
    for (std::size_t i = 1; i < std::size(argv) && !bad; ++i) bad = iequals(argv[i], "BLOCK");
  } else {
    static constexpr std::array<std::string_view, 24> k_forbidden = {
        "QUIT",       "RESET",        "WATCH",      "UNWATCH",      "SUBSCRIBE", "UNSUBSCRIBE",
        "PSUBSCRIBE", "PUNSUBSCRIBE", "SSUBSCRIBE", "SUNSUBSCRIBE", "MONITOR",   "SYNC",
        "PSYNC",      "BLPOP",        "BRPOP",      "BRPOPLPUSH",   "BLMOVE",    "BLMPOP",
        "BZPOPMIN",   "BZPOPMAX",     "BZMPOP",     "WAIT",         "WAITAOF",   "SHUTDOWN"};
    for (std::string_view f : k_forbidden) {
      if (iequals(name, f)) {
        bad = true;
        break;
      }
    }
  }
  if (!bad) return command_class::plain;
  why = std::string(name) +
        " is not supported on a shared, pipelined connection (it changes the connection's state, "
        "blocks it, or does not answer with exactly one reply)";
  return command_class::forbidden;
}

template <class Args>
status check_single(const Args& argv) {
  if (std::size(argv) == 0) return bad_command("empty command");
  std::string why;
  switch (classify(argv, why)) {
    case command_class::plain:
      return {};
    case command_class::forbidden:
      return bad_command(why);
    case command_class::multi:
    case command_class::exec:
      return bad_command(
          "MULTI ... EXEC/DISCARD must be sent together in one execute_pipeline() "
          "call (connections are shared; other callers' commands would interleave)");
  }
  return {};
}

}  // namespace layercache::redis_detail
