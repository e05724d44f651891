// Unit tests of the redis:// URL parser: every accepted form, every rejected form, and that no
// message ever shows a password.
#include "redis/redis_url.hpp"

#include <gtest/gtest.h>

#include <string>
#include <string_view>

#include "layercache/error.hpp"

namespace layercache::redis_detail {
namespace {

// The message of the invalid_argument_error that parse_redis_url(url) throws ("" if none).
std::string rejection(std::string_view url) {
  try {
    (void)parse_redis_url(url);
  } catch (const invalid_argument_error& e) {
    EXPECT_EQ(e.code(), errc::invalid_argument);
    return e.what();
  }
  return "";
}

TEST(RedisUrlTest, HostAndPortOnly) {
  const redis_endpoint ep = parse_redis_url("redis://127.0.0.1:6379");
  EXPECT_EQ(ep.host, "127.0.0.1");
  EXPECT_EQ(ep.port, 6379);
  EXPECT_EQ(ep.db, 0);
  EXPECT_TRUE(ep.user.empty());
  EXPECT_FALSE(ep.password.has_value());
  EXPECT_FALSE(ep.needs_auth());
  EXPECT_EQ(ep.address(), "127.0.0.1:6379");
  EXPECT_EQ(ep.redacted(), "redis://127.0.0.1:6379");
}

TEST(RedisUrlTest, HostNameAndDatabase) {
  const redis_endpoint ep = parse_redis_url("redis://cache-01.internal_net:6380/3");
  EXPECT_EQ(ep.host, "cache-01.internal_net");
  EXPECT_EQ(ep.port, 6380);
  EXPECT_EQ(ep.db, 3);
}

TEST(RedisUrlTest, TrailingSlashMeansDatabaseZero) {
  EXPECT_EQ(parse_redis_url("redis://h:1/").db, 0);
  EXPECT_EQ(parse_redis_url("redis://h:1/0").db, 0);
  EXPECT_EQ(parse_redis_url("redis://h:1/2147483647").db, 2147483647);
}

TEST(RedisUrlTest, PasswordOnlyAuthenticatesTheDefaultUser) {
  const redis_endpoint ep = parse_redis_url("redis://:s3cret@127.0.0.1:6379");
  EXPECT_TRUE(ep.user.empty());
  ASSERT_TRUE(ep.password.has_value());
  EXPECT_EQ(*ep.password, "s3cret");
  EXPECT_TRUE(ep.needs_auth());
  EXPECT_EQ(ep.user_for_messages(), "default");
  EXPECT_EQ(ep.redacted(), "redis://:***@127.0.0.1:6379");
}

TEST(RedisUrlTest, UserPasswordAndDatabase) {
  const redis_endpoint ep = parse_redis_url("redis://app:pw@10.0.0.7:7000/2");
  EXPECT_EQ(ep.user, "app");
  ASSERT_TRUE(ep.password.has_value());
  EXPECT_EQ(*ep.password, "pw");
  EXPECT_EQ(ep.host, "10.0.0.7");
  EXPECT_EQ(ep.port, 7000);
  EXPECT_EQ(ep.db, 2);
  EXPECT_EQ(ep.user_for_messages(), "app");
  EXPECT_EQ(ep.redacted(), "redis://app:***@10.0.0.7:7000/2");
}

TEST(RedisUrlTest, UserWithoutPasswordStillAuthenticates) {
  const redis_endpoint ep = parse_redis_url("redis://reader@h:1");
  EXPECT_EQ(ep.user, "reader");
  EXPECT_FALSE(ep.password.has_value());
  EXPECT_TRUE(ep.needs_auth());
  EXPECT_EQ(ep.redacted(), "redis://reader@h:1");
}

TEST(RedisUrlTest, EmptyPasswordIsPresentButEmpty) {
  const redis_endpoint ep = parse_redis_url("redis://u:@h:1");
  EXPECT_EQ(ep.user, "u");
  ASSERT_TRUE(ep.password.has_value());
  EXPECT_EQ(*ep.password, "");
}

TEST(RedisUrlTest, UserAndPasswordArePercentDecoded) {
  const redis_endpoint ep = parse_redis_url("redis://us%65r%40corp:p%40ss%3Aw%2Fd%25%20x@h:1");
  EXPECT_EQ(ep.user, "user@corp");
  ASSERT_TRUE(ep.password.has_value());
  EXPECT_EQ(*ep.password, "p@ss:w/d% x");
  // redacted() re-encodes the user so the result parses back to the same user.
  EXPECT_EQ(ep.redacted(), "redis://user%40corp:***@h:1");
}

TEST(RedisUrlTest, RawAtSignInPasswordSplitsAtTheLastAt) {
  const redis_endpoint ep = parse_redis_url("redis://u:p@ss@h:1");
  ASSERT_TRUE(ep.password.has_value());
  EXPECT_EQ(*ep.password, "p@ss");
  EXPECT_EQ(ep.host, "h");
}

TEST(RedisUrlTest, BracketedIpv6Host) {
  const redis_endpoint ep = parse_redis_url("redis://[::1]:6379/1");
  EXPECT_EQ(ep.host, "::1");
  EXPECT_EQ(ep.port, 6379);
  EXPECT_EQ(ep.db, 1);
  EXPECT_EQ(ep.address(), "[::1]:6379");
}

TEST(RedisUrlTest, SchemeIsCaseInsensitive) {
  EXPECT_EQ(parse_redis_url("REDIS://h:1").host, "h");
  EXPECT_EQ(parse_redis_url("Redis://h:1").port, 1);
}

TEST(RedisUrlTest, PortBoundaries) {
  EXPECT_EQ(parse_redis_url("redis://h:1").port, 1);
  EXPECT_EQ(parse_redis_url("redis://h:65535").port, 65535);
  EXPECT_NE(rejection("redis://h:0"), "");
  EXPECT_NE(rejection("redis://h:65536"), "");
}

TEST(RedisUrlTest, RejectsOtherSchemesAndShapes) {
  for (std::string_view url : {"", "h:1", "127.0.0.1:6379", "http://h:1", "redis:/h:1",
                               "redis//h:1", "tcp://h:1", "redis:h:1"}) {
    const std::string msg = rejection(url);
    EXPECT_NE(msg, "") << url;
    EXPECT_NE(msg.find("expected redis://[user[:password]@]host:port[/db]"), std::string::npos)
        << msg;
  }
}

TEST(RedisUrlTest, RejectsTlsWithAClearReason) {
  const std::string msg = rejection("rediss://h:6380");
  EXPECT_NE(msg.find("TLS"), std::string::npos) << msg;
}

TEST(RedisUrlTest, RejectsUnixSockets) {
  for (std::string_view url :
       {"unix:///tmp/redis.sock", "redis+unix:///tmp/redis.sock", "redis-socket:///tmp/r.sock"}) {
    const std::string msg = rejection(url);
    EXPECT_NE(msg.find("unix socket"), std::string::npos) << url << ": " << msg;
  }
}

TEST(RedisUrlTest, RejectsMissingOrBadPorts) {
  EXPECT_NE(rejection("redis://h").find("port is missing"), std::string::npos);
  EXPECT_NE(rejection("redis://h/0").find("port is missing"), std::string::npos);
  EXPECT_NE(rejection("redis://h:").find("port is missing"), std::string::npos);
  for (std::string_view url : {"redis://h:12ab", "redis://h:-1", "redis://h:+1", "redis://h: 1",
                               "redis://h:99999999999", "redis://h:1:2"}) {
    EXPECT_NE(rejection(url), "") << url;
  }
}

TEST(RedisUrlTest, RejectsEmptyOrBadHosts) {
  EXPECT_NE(rejection("redis://:1").find("host is empty"), std::string::npos);
  EXPECT_NE(rejection("redis://u:p@:1").find("host is empty"), std::string::npos);
  EXPECT_NE(rejection("redis://ho st:1").find("space"), std::string::npos);
  EXPECT_NE(rejection("redis://h!x:1").find("not allowed"), std::string::npos);
  EXPECT_NE(rejection("redis://::1:6379").find("brackets"), std::string::npos);
}

TEST(RedisUrlTest, RejectsMalformedIpv6) {
  EXPECT_NE(rejection("redis://[::1]").find("port is missing"), std::string::npos);
  EXPECT_NE(rejection("redis://[::1:6379").find("unterminated"), std::string::npos);
  EXPECT_NE(rejection("redis://[zz]:1").find("not an IPv6"), std::string::npos);
  EXPECT_NE(rejection("redis://[]:1").find("not an IPv6"), std::string::npos);
  EXPECT_NE(rejection("redis://[::1]6379"), "");
}

TEST(RedisUrlTest, RejectsBadDatabases) {
  for (std::string_view url :
       {"redis://h:1/x", "redis://h:1/-1", "redis://h:1/1/2", "redis://h:1/99999999999",
        "redis://h:1/+3", "redis://h:1/2147483648"}) {
    const std::string msg = rejection(url);
    EXPECT_NE(msg.find("database"), std::string::npos) << url << ": " << msg;
  }
}

TEST(RedisUrlTest, RejectsQueryAndFragment) {
  EXPECT_NE(rejection("redis://h:1?db=2").find("query"), std::string::npos);
  EXPECT_NE(rejection("redis://h:1/0?timeout=1").find("query"), std::string::npos);
  EXPECT_NE(rejection("redis://h:1#x").find("fragment"), std::string::npos);
}

TEST(RedisUrlTest, RejectsBadUserInfo) {
  EXPECT_NE(rejection("redis://@h:1").find("empty user info"), std::string::npos);
  EXPECT_NE(rejection("redis://u:p%zz@h:1").find("percent-escape in the password"),
            std::string::npos);
  EXPECT_NE(rejection("redis://u:p%4@h:1").find("percent-escape in the password"),
            std::string::npos);
  EXPECT_NE(rejection("redis://u%@h:1").find("percent-escape in the user"), std::string::npos);
}

TEST(RedisUrlTest, MessagesNeverShowThePassword) {
  for (std::string_view url : {"redis://u:topsecret@h", "redis://:topsecret@h:1/x",
                               "redis://u:topsecret@h:1?x", "redis://u:top@secret@h:0"}) {
    const std::string msg = rejection(url);
    ASSERT_NE(msg, "") << url;
    EXPECT_EQ(msg.find("topsecret"), std::string::npos) << msg;
    EXPECT_EQ(msg.find("secret"), std::string::npos) << msg;
    EXPECT_NE(msg.find("***"), std::string::npos) << msg;
  }
}

TEST(RedisUrlTest, RedactHandlesUrlsWithoutCredentials) {
  EXPECT_EQ(redact_redis_url("redis://h:1"), "redis://h:1");
  EXPECT_EQ(redact_redis_url("redis://user@h:1"), "redis://user@h:1");
  EXPECT_EQ(redact_redis_url("redis://user:pw@h:1/2"), "redis://user:***@h:1/2");
  EXPECT_EQ(redact_redis_url("not a url"), "not a url");
}

}  // namespace
}  // namespace layercache::redis_detail
