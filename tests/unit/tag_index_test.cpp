// tag_index_test.cpp — the process-local tag index (src/core/tag_index.hpp): what invalidation
// takes, and its size bound.
#include "core/tag_index.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

namespace layercache::detail {
namespace {

using strings = std::vector<std::string>;

bool always(const std::string&) { return true; }

strings sorted(strings v) {
  std::sort(v.begin(), v.end());
  return v;
}

TEST(TagIndexTest, AnyFindsEveryKeyUnderOneOfTheTagsOnceAndKeepsThem) {
  tag_index index;
  index.add("k1", strings{"a", "b"}, always);
  index.add("k2", strings{"b"}, always);
  index.add("k3", strings{"c"}, always);
  EXPECT_EQ(sorted(index.find(strings{"a", "b"}, false)), (strings{"k1", "k2"}));
  EXPECT_EQ(sorted(index.find(strings{"a", "b"}, false)), (strings{"k1", "k2"}))
      << "a second invalidation running at once must find the keys too";
  EXPECT_EQ(index.size(), 4U);
}

TEST(TagIndexTest, AllFindsOnlyKeysUnderEveryTag) {
  tag_index index;
  index.add("k1", strings{"a", "b"}, always);
  index.add("k2", strings{"a"}, always);
  EXPECT_EQ(index.find(strings{"a", "b"}, true), strings{"k1"});
  EXPECT_EQ(sorted(index.find(strings{"a"}, false)), (strings{"k1", "k2"}));
}

// Defect 12: one key re-set 200,000 times with new tags grew the index by 55 MiB.
TEST(TagIndexTest, AKeyReWrittenWithNewTagsIsIndexedUnderItsLatestTagsOnly) {
  tag_index index;
  for (int i = 0; i < 200'000; ++i) {
    index.add("hot", strings{"t" + std::to_string(i), "shared"}, always);
  }
  EXPECT_EQ(index.size(), 2U);
  EXPECT_EQ(index.find(strings{"t0"}, false), strings{});
  EXPECT_EQ(index.find(strings{"t199999"}, false), strings{"hot"});
  EXPECT_EQ(index.size(), 2U);
}

TEST(TagIndexTest, ASweepForgetsKeysNoLongerHeld) {
  tag_index index;
  for (int i = 0; i < 5000; ++i) {
    index.add("k" + std::to_string(i), strings{"t"}, [](const std::string&) { return false; });
  }
  EXPECT_LT(index.size(), 2100U);
}

}  // namespace
}  // namespace layercache::detail
