#include "layercache/status.hpp"

#include <gtest/gtest.h>

namespace layercache {
namespace {

TEST(StatusTest, DefaultIsOkAndSaysSo) {
  status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.code(), errc::ok);
  EXPECT_EQ(s.message(), "ok");
  EXPECT_TRUE(s.failures().empty());
}

TEST(StatusTest, LayerErrorNamesTheLayerAndCode) {
  status s = status::layer_error("redis", errc::timeout, "read deadline 50ms passed");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), errc::timeout);
  ASSERT_EQ(s.failures().size(), 1u);
  EXPECT_EQ(s.failures()[0].layer, "redis");
  EXPECT_EQ(s.message(), "redis: timeout: read deadline 50ms passed");
}

TEST(StatusTest, UpdateKeepsFirstCodeAndCollectsEveryFailure) {
  status s;
  s.update(status());
  EXPECT_TRUE(s.ok());
  s.update(status::layer_error("redis", errc::unavailable, "down"));
  s.update(status::layer_error("disk", errc::resource_exhausted, "full"));
  EXPECT_EQ(s.code(), errc::unavailable);
  ASSERT_EQ(s.failures().size(), 2u);
  EXPECT_EQ(s.failures()[1].layer, "disk");
  status copy = s;
  EXPECT_EQ(copy.message(), s.message());
}

}  // namespace
}  // namespace layercache
