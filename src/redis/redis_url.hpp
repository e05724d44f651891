// redis_url.hpp — parses the URL that names a Redis server,
// redis://[user[:password]@]host:port[/db]
//
// Exactly this form is accepted; anything else is rejected with a message that names the problem:
//   host      a DNS name, a dotted IPv4 address, or an IPv6 address in brackets ("[::1]")
//   port      decimal 1..65535, required (there is no silent default to 6379)
//   /db       decimal index sent as SELECT on every (re)connect; default 0 ("/" alone is 0)
//   user      ACL user sent with AUTH (Redis 6+); percent-decoded
//   password  percent-decoded ("%40" is '@', "%3A" is ':', "%2F" is '/', "%25" is '%')
// Not supported, rejected explicitly: rediss:// (hiredis 0.14 has no TLS), unix sockets, query
// strings (?...), fragments (#...).
//
//   redis_endpoint ep = parse_redis_url("redis://app:s%40cret@127.0.0.1:6380/2");
//   // ep.user == "app", *ep.password == "s@cret", ep.host == "127.0.0.1", ep.port == 6380,
//   // ep.db == 2
//
// Errors: parse_redis_url throws layercache::invalid_argument_error. Messages quote the URL with
// the password replaced by "***", so they are safe to log.
//
// Thread-safety: pure functions over values.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace layercache::redis_detail {

// A parsed redis:// URL.
struct redis_endpoint {
  std::string host;                     // without brackets for IPv6 ("::1")
  std::uint16_t port = 0;               // 1..65535
  std::string user;                     // empty: the server's default user
  std::optional<std::string> password;  // absent: no password in the URL ("redis://u@h:1")
  int db = 0;                           // SELECT index, 0 when the URL has no /db

  // Whether a connection must send AUTH: a password or a user was given.
  bool needs_auth() const noexcept { return password.has_value() || !user.empty(); }
  // "host:port", "[::1]:6379" for IPv6 — for messages.
  std::string address() const;
  // The user named in messages: the URL's user, or "default" (Redis's name for the implicit user).
  std::string user_for_messages() const;
  // The URL rebuilt with the password as "***" — for logs and messages.
  std::string redacted() const;
};

// Parses `url`. Throws layercache::invalid_argument_error for anything but the form above.
redis_endpoint parse_redis_url(std::string_view url);

// `url` with the password part of its user info replaced by "***" (the URL need not be valid).
std::string redact_redis_url(std::string_view url);

}  // namespace layercache::redis_detail
