#include <gtest/gtest.h>

#include <string>

#include "redis/bus_message.hpp"

namespace layercache::redis_detail {
namespace {

TEST(BusMessageTest, RoundTripsBinaryItemsInBothLists) {
  bus_message m;
  m.origin = 18446744073709551615ULL;
  m.seq = 42;
  m.op = 't';
  m.version = (std::uint64_t{7} << 32) | 9;
  m.a = {"tag", std::string("a\0|:b", 5), ""};
  m.b = {"key:1", std::string(1000, 'x')};
  auto parsed = parse_bus_message(format_bus_message(m));
  ASSERT_TRUE(parsed);
  EXPECT_EQ(parsed->origin, m.origin);
  EXPECT_EQ(parsed->seq, 42u);
  EXPECT_EQ(parsed->op, 't');
  EXPECT_EQ(parsed->version, m.version);
  EXPECT_EQ(parsed->a, m.a);
  EXPECT_EQ(parsed->b, m.b);
}

TEST(BusMessageTest, ParsesWhatTheLuaScriptsBuild) {
  // Byte for byte what announce() in redis_coordinator.cpp publishes for a two-key write.
  auto m = parse_bus_message("lc1|123|7|k|5:6|2|0|3:abc4:de:f");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->origin, 123u);
  EXPECT_EQ(m->seq, 7u);
  EXPECT_EQ(m->version, (std::uint64_t{5} << 32) | 6);
  EXPECT_EQ(m->a, (std::vector<std::string>{"abc", "de:f"}));
  EXPECT_TRUE(m->b.empty());
}

TEST(BusMessageTest, RejectsMalformedMessagesWithoutReadingPastTheEnd) {
  const std::string good = "lc1|1|1|k|0:0|1|0|3:abc";
  ASSERT_TRUE(parse_bus_message(good));
  for (std::size_t n = 0; n < good.size(); ++n) {
    EXPECT_FALSE(parse_bus_message(good.substr(0, n))) << "prefix of length " << n;
  }
  std::string why;
  EXPECT_FALSE(parse_bus_message("lc1|1|1|z|0:0|0|0|", &why));
  EXPECT_EQ(why, "unknown op");
  EXPECT_FALSE(parse_bus_message("lc1|1|1|k|0:0|99999999999|0|"));  // count beyond the bytes
  EXPECT_FALSE(parse_bus_message("lc1|1|1|k|0:0|1|0|9:abc"));       // item beyond the bytes
  EXPECT_FALSE(parse_bus_message(good + "x"));                      // trailing bytes
  EXPECT_FALSE(parse_bus_message("lc1|-1|1|k|0:0|0|0|"));
  EXPECT_FALSE(parse_bus_message("lc1|1|1|k|4294967296:0|0|0|"));  // version half over 32 bits
  EXPECT_FALSE(parse_bus_message("hello"));
}

}  // namespace
}  // namespace layercache::redis_detail
