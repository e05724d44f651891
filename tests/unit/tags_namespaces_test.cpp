// Tags, prefix invalidation and namespaces in a stack without Redis (the instance is alone: the
// process-local parts of each feature). Across instances: redis_coordination_test.cpp.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "layercache/cache_namespace.hpp"
#include "layercache/cache_stack.hpp"
#include "layercache/error.hpp"
#include "layercache/memory_layer.hpp"
#include "test_byte_layer.hpp"

namespace layercache::test {
namespace {

std::string read(cache_stack& c, const std::string& key) {
  auto v = c.get_if_present<std::string>(key);
  return v ? *v : "<absent>";
}

TEST(TagsTest, InvalidateTagRemovesSetAndFetchedKeysCarryingIt) {
  cache_stack cache({memory_layer::create({})});
  ASSERT_TRUE(cache.set<std::string>("a", "1", {.tags = {"t"}}).ok());
  ASSERT_TRUE(cache.set<std::string>("b", "2", {.tags = {"u"}}).ok());
  (void)cache.get<std::string>("c", [] { return std::string("3"); }, {.tags = {"t", "u"}});
  ASSERT_TRUE(cache.invalidate_tag("t").ok());
  EXPECT_EQ(read(cache, "a"), "<absent>");
  EXPECT_EQ(read(cache, "c"), "<absent>");
  EXPECT_EQ(read(cache, "b"), "2");
}

TEST(TagsTest, AllMatchNeedsEveryTag) {
  cache_stack cache({memory_layer::create({})});
  ASSERT_TRUE(cache.set<std::string>("xy", "1", {.tags = {"x", "y"}}).ok());
  ASSERT_TRUE(cache.set<std::string>("x", "2", {.tags = {"x"}}).ok());
  const std::vector<std::string> both{"x", "y"};
  ASSERT_TRUE(cache.invalidate_tags(both, tag_match::all).ok());
  EXPECT_EQ(read(cache, "xy"), "<absent>");
  EXPECT_EQ(read(cache, "x"), "2");
  ASSERT_TRUE(cache.invalidate_tags(both, tag_match::any).ok());
  EXPECT_EQ(read(cache, "x"), "<absent>");
}

TEST(TagsTest, TagInvalidationReachesTheByteLayers) {
  auto bytes = std::make_shared<test_byte_layer>();
  cache_stack cache({memory_layer::create({}), bytes});
  ASSERT_TRUE(
      cache.set<std::string>("a", "1", {.policy = write_policy::strict, .tags = {"t"}}).ok());
  ASSERT_TRUE(cache.invalidate_tag("t").ok());
  ASSERT_TRUE(cache.flush());
  EXPECT_FALSE(bytes->get("a").bytes) << "the byte layer kept a key of an invalidated tag";
}

TEST(PrefixTest, InvalidatePrefixRemovesOnlyMatchingKeysEverywhere) {
  auto bytes = std::make_shared<test_byte_layer>();
  cache_stack cache({memory_layer::create({}), bytes});
  const set_options strict{.policy = write_policy::strict};
  ASSERT_TRUE(cache.set<std::string>("img:1", "a", strict).ok());
  ASSERT_TRUE(cache.set<std::string>("img:2", "b", strict).ok());
  ASSERT_TRUE(cache.set<std::string>("doc:1", "c", strict).ok());
  ASSERT_TRUE(cache.invalidate_prefix("img:").ok());
  EXPECT_EQ(read(cache, "img:1"), "<absent>");
  EXPECT_EQ(read(cache, "img:2"), "<absent>");
  EXPECT_EQ(read(cache, "doc:1"), "c");
  EXPECT_FALSE(bytes->get("img:1").bytes);
  EXPECT_TRUE(bytes->get("doc:1").bytes);
}

TEST(NamespaceTest, KeysAreScopedAndNestedViewsShareTheirParentsGeneration) {
  cache_stack cache({memory_layer::create({})});
  cache_namespace a = cache.ns("tenant:1");
  cache_namespace b = cache.ns("tenant:2");
  ASSERT_TRUE(a.set<std::string>("k", "a").ok());
  ASSERT_TRUE(b.set<std::string>("k", "b").ok());
  EXPECT_EQ(*a.get_if_present<std::string>("k"), "a");
  EXPECT_EQ(*b.get_if_present<std::string>("k"), "b");
  EXPECT_EQ(read(cache, "k"), "<absent>");
  EXPECT_EQ(a.key("k"), "@ns:8:tenant:1#0:k");
  EXPECT_EQ(a.ns("carts").key("c"), "@ns:8:tenant:1#0:@ns:5:carts#0:c");
  EXPECT_EQ(a.path(), "tenant:1");
  EXPECT_EQ(a.ns("carts").path(), "tenant:1/carts");
}

// Defect 14: "@ns:t#0:" + "x#0:k" and "@ns:t#0:x#0:" + "k" were one stack key.
TEST(NamespaceTest, NoNamespaceNameAndKeyBuildTheSameStackKeyAsAnother) {
  cache_stack cache({memory_layer::create({})});
  cache_namespace t = cache.ns("t"), odd = cache.ns("t#0:x");
  ASSERT_TRUE(t.set<std::string>("x#0:k", "in t").ok());
  EXPECT_NE(t.key("x#0:k"), odd.key("k"));
  EXPECT_EQ(odd.get_if_present<std::string>("k"), nullptr);
}

TEST(PrefixInvalidationTest, AnEmptyPrefixIsRefusedNotAClear) {
  cache_stack cache({memory_layer::create({})});
  ASSERT_TRUE(cache.set<std::string>("k", "v").ok());
  EXPECT_THROW((void)cache.invalidate_prefix(""), invalid_argument_error);
  EXPECT_NE(cache.get_if_present<std::string>("k"), nullptr);
}

TEST(NamespaceTest, RotateDropsEveryKeyOfTheNamespaceAndItsChildrenOnly) {
  cache_stack cache({memory_layer::create({})});
  cache_namespace a = cache.ns("a");
  cache_namespace nested = a.ns("inner");
  cache_namespace other = cache.ns("b");
  ASSERT_TRUE(a.set<std::string>("k", "1").ok());
  ASSERT_TRUE(nested.set<std::string>("k", "2").ok());
  ASSERT_TRUE(other.set<std::string>("k", "3").ok());
  const std::string old_key = a.key("k");
  ASSERT_TRUE(cache.ns("a").rotate().ok());  // another view of the same path
  EXPECT_EQ(a.get_if_present<std::string>("k"), nullptr);
  EXPECT_EQ(nested.get_if_present<std::string>("k"), nullptr);
  EXPECT_EQ(*other.get_if_present<std::string>("k"), "3");
  EXPECT_EQ(read(cache, old_key), "<absent>") << "the old generation stayed in L1";
  EXPECT_EQ(a.key("k"), "@ns:1:a#1:k");
}

TEST(NamespaceTest, TagsAndPrefixesAreScopedToTheView) {
  cache_stack cache({memory_layer::create({})});
  cache_namespace a = cache.ns("a"), b = cache.ns("b");
  ASSERT_TRUE(a.set<std::string>("x:1", "a", {.tags = {"t"}}).ok());
  ASSERT_TRUE(b.set<std::string>("x:1", "b", {.tags = {"t"}}).ok());
  ASSERT_TRUE(a.invalidate_tag("t").ok());
  EXPECT_EQ(a.get_if_present<std::string>("x:1"), nullptr);
  EXPECT_EQ(*b.get_if_present<std::string>("x:1"), "b");
  ASSERT_TRUE(b.invalidate_prefix("x:").ok());
  EXPECT_EQ(b.get_if_present<std::string>("x:1"), nullptr);
}

TEST(NamespaceTest, NamesMustBeNonEmptyAndFreeOfSlashes) {
  cache_stack cache({memory_layer::create({})});
  EXPECT_THROW((void)cache.ns(""), invalid_argument_error);
  EXPECT_THROW((void)cache.ns("a/b"), invalid_argument_error);
}

}  // namespace
}  // namespace layercache::test
