#include "redis/redis_url.hpp"

#include <arpa/inet.h>

#include <array>
#include <charconv>

#include "layercache/error.hpp"

namespace layercache::redis_detail {
namespace {

constexpr std::string_view k_expected = "expected redis://[user[:password]@]host:port[/db]";

[[noreturn]] void reject(std::string_view url, std::string_view problem) {
  std::string msg = "invalid redis URL \"";
  msg += redact_redis_url(url);
  msg += "\": ";
  msg += problem;
  msg += "; ";
  msg += k_expected;
  throw invalid_argument_error(msg);
}

bool starts_with_ci(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    char c = s[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != prefix[i]) return false;
  }
  return true;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decodes one user-info component. Returns false on a truncated or non-hex escape.
bool percent_decode(std::string_view in, std::string& out) {
  out.clear();
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out.push_back(in[i]);
      continue;
    }
    if (i + 2 >= in.size()) return false;  // "%" or "%4" at the end
    const int hi = hex_value(in[i + 1]);
    const int lo = hex_value(in[i + 2]);
    if (hi < 0 || lo < 0) return false;
    out.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return true;
}

// Digits only (no sign, no spaces), value <= max. Returns false otherwise.
bool parse_decimal(std::string_view s, long max, long& value) {
  if (s.empty() || s.size() > 10) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  long v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || v > max) return false;
  value = v;
  return true;
}

bool valid_hostname(std::string_view host) {
  for (char c : host) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '-' || c == '_';
    if (!ok) return false;
  }
  return true;
}

// Appends `s` percent-encoding what would not survive a round trip through parse_redis_url.
void append_encoded(std::string& out, std::string_view s) {
  static constexpr char k_hex[] = "0123456789ABCDEF";
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    const bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                       c == '-' || c == '.' || c == '_' || c == '~';
    if (plain) {
      out.push_back(c);
    } else {
      out.push_back('%');
      out.push_back(k_hex[u >> 4]);
      out.push_back(k_hex[u & 0xF]);
    }
  }
}

}  // namespace

std::string redis_endpoint::address() const {
  std::string out;
  if (host.find(':') != std::string::npos) {
    out = "[" + host + "]";
  } else {
    out = host;
  }
  out += ':';
  out += std::to_string(port);
  return out;
}

std::string redis_endpoint::user_for_messages() const { return user.empty() ? "default" : user; }

std::string redis_endpoint::redacted() const {
  std::string out = "redis://";
  if (needs_auth()) {
    append_encoded(out, user);
    if (password) out += ":***";
    out += '@';
  }
  out += address();
  if (db != 0) {
    out += '/';
    out += std::to_string(db);
  }
  return out;
}

std::string redact_redis_url(std::string_view url) {
  // The user info ends at the last '@' (a raw '@' in a password is a common mistake; splitting at
  // the last one keeps such a password out of the message too) and starts after "://".
  const std::size_t scheme_end = url.find("://");
  const std::size_t start = scheme_end == std::string_view::npos ? 0 : scheme_end + 3;
  const std::size_t at = url.rfind('@');
  if (at == std::string_view::npos || at < start) return std::string(url);
  const std::size_t colon = url.substr(start, at - start).find(':');
  if (colon == std::string_view::npos) return std::string(url);
  std::string out(url.substr(0, start + colon + 1));
  out += "***";
  out += url.substr(at);
  return out;
}

redis_endpoint parse_redis_url(std::string_view url) {
  if (url.empty()) reject(url, "the URL is empty");
  if (starts_with_ci(url, "rediss://")) {
    reject(url, "TLS (rediss://) is not supported by this build (hiredis 0.14 has no TLS)");
  }
  if (starts_with_ci(url, "unix:") || starts_with_ci(url, "redis+unix:") ||
      starts_with_ci(url, "redis-socket:")) {
    reject(url, "unix socket URLs are not supported");
  }
  if (!starts_with_ci(url, "redis://")) reject(url, "the scheme must be redis://");
  std::string_view rest = url.substr(8);

  if (rest.find('?') != std::string_view::npos) reject(url, "query parameters are not supported");
  if (rest.find('#') != std::string_view::npos) reject(url, "fragments (#...) are not supported");
  for (char c : rest) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7F) {
      reject(url, "the URL contains a space or a control character");
    }
  }

  redis_endpoint ep;

  // User info: everything before the last '@' ('@' cannot appear in the host part).
  const std::size_t at = rest.rfind('@');
  if (at != std::string_view::npos) {
    const std::string_view info = rest.substr(0, at);
    rest = rest.substr(at + 1);
    if (info.empty()) reject(url, "empty user info before '@'");
    if (info.find('/') != std::string_view::npos) {
      reject(url, "'/' in the user info must be percent-encoded as %2F");
    }
    const std::size_t colon = info.find(':');
    const std::string_view user = info.substr(0, colon);
    if (!percent_decode(user, ep.user)) reject(url, "bad percent-escape in the user name");
    if (colon != std::string_view::npos) {
      std::string password;
      if (!percent_decode(info.substr(colon + 1), password)) {
        reject(url, "bad percent-escape in the password");
      }
      ep.password = std::move(password);
    }
  }

  // Path: "/db" or "/" or nothing.
  const std::size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  if (slash != std::string_view::npos) {
    const std::string_view path = rest.substr(slash + 1);
    if (!path.empty()) {
      long db = 0;
      if (!parse_decimal(path, 2147483647L, db)) {
        reject(url, "the database after '/' must be a non-negative decimal number");
      }
      ep.db = static_cast<int>(db);
    }
  }

  // Host and port.
  std::string_view port_text;
  if (!authority.empty() && authority.front() == '[') {
    const std::size_t close = authority.find(']');
    if (close == std::string_view::npos) reject(url, "unterminated '[' in an IPv6 host");
    ep.host = std::string(authority.substr(1, close - 1));
    const std::string_view after = authority.substr(close + 1);
    if (after.empty()) reject(url, "the port is missing");
    if (after.front() != ':') reject(url, "expected ':' and a port after the IPv6 host");
    port_text = after.substr(1);
    std::array<unsigned char, 16> buf{};
    if (ep.host.empty() || inet_pton(AF_INET6, ep.host.c_str(), buf.data()) != 1) {
      reject(url, "the bracketed host is not an IPv6 address");
    }
  } else {
    const std::size_t colon = authority.rfind(':');
    if (colon == std::string_view::npos) reject(url, "the port is missing");
    ep.host = std::string(authority.substr(0, colon));
    port_text = authority.substr(colon + 1);
    if (ep.host.find(':') != std::string::npos) {
      reject(url, "an IPv6 host must be written in brackets, e.g. redis://[::1]:6379");
    }
    if (ep.host.empty()) reject(url, "the host is empty");
    if (!valid_hostname(ep.host)) reject(url, "the host contains characters not allowed in a name");
  }
  long port = 0;
  if (port_text.empty()) reject(url, "the port is missing");
  if (!parse_decimal(port_text, 65535, port) || port == 0) {
    reject(url, "the port must be a decimal number in 1..65535");
  }
  ep.port = static_cast<std::uint16_t>(port);
  return ep;
}

}  // namespace layercache::redis_detail
