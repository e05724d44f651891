// A rolling deploy against one real redis-server: instance A runs the old build, instance B the new
// one (each its own cache_stack and redis_layer, so its own connections and bus origin). What the
// old build cached must never make the new one throw or delete: a renamed type with the same
// type_name hits, a changed layout is a counted schema miss and a refetch whose value overwrites
// the old entry (codec.hpp, "type_name"). The unit-level cases are in
// tests/unit/type_identity_test.cpp.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "layercache/cache_stack.hpp"
#include "layercache/detail/hash.hpp"
#include "layercache/error.hpp"
#include "layercache/memory_layer.hpp"
#include "layercache/redis_layer.hpp"
#include "support/await.hpp"
#include "support/redis_server.hpp"

namespace rolling_deploy_test {

// The old build's type.
struct user_v1 {
  static constexpr std::string_view layercache_type_name = "user";
  std::string name;
  int age = 0;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(user_v1, name, age)
};

// The new build renamed it and kept its layout and its name.
struct account {
  static constexpr std::string_view layercache_type_name = "user";
  std::string name;
  int age = 0;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(account, name, age)
};

// The new build added a required field and kept the name.
struct user_v2 {
  static constexpr std::string_view layercache_type_name = "user";
  std::string name;
  int age = 0;
  std::string email;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(user_v2, name, age, email)
};

// The new build caches another type under the key.
struct profile {
  static constexpr std::string_view layercache_type_name = "profile";
  std::string bio;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(profile, bio)
};

}  // namespace rolling_deploy_test

namespace layercache::test {
namespace {

using namespace std::chrono_literals;
using namespace rolling_deploy_test;
using strings = std::vector<std::string>;

struct event_counts {
  std::mutex mu;
  std::vector<std::pair<event_type, std::string>> seen;  // type, "layer/key"

  std::size_t of(event_type type) {
    std::lock_guard lock(mu);
    std::size_t n = 0;
    for (const auto& e : seen) n += e.first == type ? 1 : 0;
    return n;
  }
  bool all_about(event_type type, const std::string& where) {
    std::lock_guard lock(mu);
    for (const auto& e : seen) {
      if (e.first == type && e.second != where) return false;
    }
    return true;
  }
};

struct instance {
  std::shared_ptr<memory_layer> l1;
  std::shared_ptr<redis_layer> l2;
  std::shared_ptr<event_counts> events = std::make_shared<event_counts>();
  std::unique_ptr<cache_stack> cache;
};

class RollingDeployTest : public ::testing::Test {
 protected:
  redis_server server_;

  instance make() {
    instance i;
    redis_layer_options o;
    o.url = server_.url();
    o.prefix = "rd:";
    o.connect_timeout = 500ms;
    o.read_deadline = 500ms;  // sanitizer runs: nothing here is about deadlines
    o.write_deadline = 500ms;
    i.l1 = memory_layer::create({});
    i.l2 = redis_layer::create(std::move(o));
    auto events = i.events;
    i.cache = std::make_unique<cache_stack>(
        std::vector<std::shared_ptr<layer>>{i.l1, i.l2},
        stack_options{.on_event = [events](const event& e) {
          std::lock_guard lock(events->mu);
          events->seen.emplace_back(e.type, std::string(e.layer) + "/" + std::string(e.key));
        }});
    return i;
  }

  // The old build caches u:1 the way an application would: through a fetch.
  static void old_build_caches_user(instance& a) {
    auto v = a.cache->get<user_v1>("u:1", [] { return user_v1{"ada", 36}; });
    ASSERT_NE(v, nullptr);
    ASSERT_TRUE(a.cache->flush());
    // The next instance's miss begins in a later millisecond, as on another host: in the same one
    // the two stacks' versions can tie, and a fill loses a tie (docs/design.md, "Versioned
    // values") — its refetch would then overwrite the old entry only on the next miss.
    const unix_ms written = default_clock()->now_ms();
    ASSERT_TRUE(eventually([&] { return default_clock()->now_ms() > written; }));
  }

  // What a schema miss of `key` must leave on the reading instance: counted, reported with the
  // layer and key, no corruption, no layer error, no exception (the caller checked that).
  static void expect_schema_misses_only(instance& b, const std::string& key) {
    const auto m = b.cache->metrics();
    EXPECT_GE(m.schema_misses, 1u);
    EXPECT_EQ(b.events->of(event_type::schema_mismatch), m.schema_misses)
        << "every schema miss is reported";
    EXPECT_TRUE(b.events->all_about(event_type::schema_mismatch, "redis/" + key));
    EXPECT_EQ(b.events->of(event_type::corruption), 0u);
    EXPECT_EQ(b.events->of(event_type::layer_error), 0u);
    EXPECT_EQ(m.layers[1].errors, 0u);
  }
};

TEST_F(RollingDeployTest, ARenamedTypeWithTheSameTypeNameHitsTheOldInstancesValue) {
  instance a = make(), b = make();
  old_build_caches_user(a);
  auto v = b.cache->get<account>("u:1", []() -> account {
    ADD_FAILURE() << "the renamed type did not find the value instance A cached";
    return {};
  });
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->name, "ada");
  EXPECT_EQ(v->age, 36);
  const auto m = b.cache->metrics();
  EXPECT_EQ(m.fetches, 0u);
  EXPECT_EQ(m.schema_misses, 0u);
  EXPECT_EQ(m.layers[1].hits, 1u);
}

TEST_F(RollingDeployTest, ANewRequiredFieldIsASchemaMissAndARefetchThatOverwritesTheOldValue) {
  instance a = make(), b = make();
  old_build_caches_user(a);
  int fetches = 0;
  std::shared_ptr<const user_v2> v;
  ASSERT_NO_THROW(v = b.cache->get<user_v2>("u:1", [&] {
    ++fetches;
    return user_v2{"ada", 36, "ada@example.org"};
  }));
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->email, "ada@example.org");
  EXPECT_EQ(fetches, 1);
  expect_schema_misses_only(b, "u:1");
  ASSERT_TRUE(b.cache->flush());

  // The new layout replaced the old one in Redis: a third new instance hits it.
  instance c = make();
  auto seen = c.cache->get_if_present<user_v2>("u:1");
  ASSERT_NE(seen, nullptr) << "the refetched value did not overwrite the old build's entry";
  EXPECT_EQ(seen->email, "ada@example.org");
  EXPECT_EQ(c.cache->metrics().schema_misses, 0u);

  // The overwrite reached the old instance over the bus (its L1 copy is dropped). The old build
  // reads the new layout: its codec ignores the field it does not know, so that is a hit.
  ASSERT_TRUE(eventually([&] { return !a.l1->contains("u:1", detail::hash_key("u:1")); }));
  std::shared_ptr<const user_v1> old;
  ASSERT_NO_THROW(old = a.cache->get<user_v1>("u:1", []() -> user_v1 {
    ADD_FAILURE() << "the old build could not read the new layout";
    return {};
  }));
  ASSERT_NE(old, nullptr);
  EXPECT_EQ(old->name, "ada");
  EXPECT_EQ(a.cache->metrics().schema_misses, 0u);
  EXPECT_EQ(a.events->of(event_type::corruption), 0u);
}

TEST_F(RollingDeployTest, GetIfPresentAndGetManyTreatAnOldLayoutAsAMiss) {
  instance a = make(), b = make();
  old_build_caches_user(a);
  std::shared_ptr<const user_v2> absent;
  ASSERT_NO_THROW(absent = b.cache->get_if_present<user_v2>("u:1"));
  EXPECT_EQ(absent, nullptr);
  EXPECT_EQ(b.cache->metrics().schema_misses, 1u);

  strings asked;
  std::vector<std::shared_ptr<const user_v2>> got;
  ASSERT_NO_THROW(
      got = b.cache->get_many<user_v2>(strings{"u:1"}, [&](std::span<const std::string> keys) {
        asked.assign(keys.begin(), keys.end());
        return std::vector<user_v2>(keys.size(), user_v2{"ada", 36, "a@x"});
      }));
  ASSERT_EQ(got.size(), 1u);
  ASSERT_NE(got[0], nullptr);
  EXPECT_EQ(got[0]->email, "a@x");
  EXPECT_EQ(asked, strings{"u:1"});
  EXPECT_EQ(b.cache->metrics().schema_misses, 2u);
  expect_schema_misses_only(b, "u:1");
}

TEST_F(RollingDeployTest, ANotFoundOfTheOldTypeIsASchemaMissForAnotherTypeAndAHitWhenRenamed) {
  instance a = make(), b = make();
  EXPECT_EQ(a.cache->get<user_v1>("u:404", [] { return std::optional<user_v1>{}; }), nullptr);
  ASSERT_TRUE(a.cache->flush());

  auto renamed = b.cache->get<account>("u:404", []() -> std::optional<account> {
    ADD_FAILURE() << "the cached not-found was not served to the renamed type";
    return account{};
  });
  EXPECT_EQ(renamed, nullptr);
  EXPECT_EQ(b.cache->metrics().negative_hits, 1u);

  instance c = make();
  std::shared_ptr<const profile> p;
  ASSERT_NO_THROW(p = c.cache->get<profile>("u:404", [] { return profile{"found now"}; }));
  ASSERT_NE(p, nullptr) << "a not-found of another type was served";
  EXPECT_EQ(p->bio, "found now");
  expect_schema_misses_only(c, "u:404");
}

}  // namespace
}  // namespace layercache::test
