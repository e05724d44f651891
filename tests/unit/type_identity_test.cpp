// Type identity of cached values across builds (codec.hpp, "type_name"): a value written by
// another build — a renamed type, a type with a field more, another codec — is found in a byte
// layer by a reader that cannot use it. That is a counted miss and a refetch (schema_misses,
// event_type::schema_mismatch), never an exception nor a corruption delete; a type given a
// type_name keeps its entries readable across renames. The Redis version, with two instances, is
// tests/integration/redis_rolling_deploy_test.cpp.
#include <gtest/gtest.h>

#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <typeinfo>
#include <vector>

#include "layercache/cache_stack.hpp"
#include "layercache/detail/type_ops.hpp"
#include "layercache/memory_layer.hpp"
#include "support/fake_clock.hpp"
#include "test_byte_layer.hpp"

namespace type_identity_test {

// Build 1 of an application.
struct user_v1 {
  static constexpr std::string_view layercache_type_name = "user";
  std::string name;
  int age = 0;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(user_v1, name, age)
};

// Build 2 renamed the struct and kept its layout and its name.
struct member {
  static constexpr std::string_view layercache_type_name = "user";
  std::string name;
  int age = 0;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(member, name, age)
};

// Build 3 added a required field and kept the name: old entries no longer decode.
struct user_v2 {
  static constexpr std::string_view layercache_type_name = "user";
  std::string name;
  int age = 0;
  std::string email;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(user_v2, name, age, email)
};

// Build 4 stores the same layout as JSON text instead of MessagePack.
struct user_json {
  static constexpr std::string_view layercache_type_name = "user";
  std::string name;
  int age = 0;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(user_json, name, age)
};

// Another type altogether.
struct order {
  static constexpr std::string_view layercache_type_name = "order";
  int id = 0;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(order, id)
};

// A type that is not ours to edit: named through the trait.
struct vendor_order {
  int id = 0;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(vendor_order, id)
};

// The trait wins over the member.
struct both_named {
  static constexpr std::string_view layercache_type_name = "member-name";
  int id = 0;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(both_named, id)
};

struct unnamed {
  int id = 0;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(unnamed, id)
};

}  // namespace type_identity_test

template <>
struct layercache::type_name<type_identity_test::vendor_order> {
  static constexpr std::string_view value = "order.v1";
};

template <>
struct layercache::type_name<type_identity_test::both_named> {
  static constexpr std::string_view value = "trait-name";
};

template <>
struct layercache::codec<type_identity_test::user_json>
    : layercache::json_codec<type_identity_test::user_json> {};

namespace layercache {
namespace {

using namespace type_identity_test;
using strings = std::vector<std::string>;

struct recorded_event {
  event_type type;
  std::string layer;
  std::string key;
  errc code;
};

struct event_log {
  std::mutex mu;
  std::vector<recorded_event> events;

  event_callback callback() {
    return [this](const event& e) {
      std::lock_guard lock(mu);
      events.push_back({e.type, std::string(e.layer), std::string(e.key), e.detail.code()});
    };
  }
  std::vector<recorded_event> of(event_type type) {
    std::lock_guard lock(mu);
    std::vector<recorded_event> out;
    for (const auto& e : events) {
      if (e.type == type) out.push_back(e);
    }
    return out;
  }
};

// A byte layer holding what one build wrote, and a fresh reader stack (another build) over it.
class TypeIdentityTest : public ::testing::Test {
 protected:
  std::shared_ptr<test::fake_clock> clock_ = std::make_shared<test::fake_clock>();
  std::shared_ptr<test::test_byte_layer> bytes_ = test::test_byte_layer::create({.clock = clock_});
  event_log events_;

  // Writes `value` under `key` as the old build would, and waits until it landed.
  template <class T>
  void old_build_sets(const std::string& key, const T& value) {
    cache_stack old_build({bytes_}, {.clock = clock_});
    ASSERT_TRUE(old_build.set<T>(key, value).ok());
  }

  std::unique_ptr<cache_stack> new_build() {
    return std::make_unique<cache_stack>(
        std::vector<std::shared_ptr<layer>>{memory_layer::create({.clock = clock_}), bytes_},
        stack_options{.clock = clock_, .on_event = events_.callback()});
  }

  // The reader's own view of what one schema miss of `key` must leave behind.
  void expect_schema_misses(const cache_stack& cache, const std::string& key, std::uint64_t count) {
    const auto m = cache.metrics();
    EXPECT_EQ(m.schema_misses, count);
    EXPECT_EQ(m.layers[1].errors, 0u) << "a schema miss is no layer error";
    EXPECT_EQ(m.layers[1].hits, 0u);
    auto mismatches = events_.of(event_type::schema_mismatch);
    ASSERT_EQ(mismatches.size(), count);
    for (const auto& e : mismatches) {
      EXPECT_EQ(e.layer, "bytes");
      EXPECT_EQ(e.key, key);
      EXPECT_EQ(e.code, errc::type_mismatch);
    }
    EXPECT_TRUE(events_.of(event_type::corruption).empty());
    EXPECT_EQ(bytes_->calls().del.load(), 0u) << "an entry of another schema was deleted";
  }
};

TEST(TypeNameTest, ANamedTypesFingerprintIsTheFnv1aHashOfItsName) {
  // Golden values: FNV-1a 64 of the name's bytes, the same in every build and with every compiler.
  EXPECT_EQ(detail::type_fingerprint<user_v1>(), 0x7d6780e4032b48f2ull);       // "user"
  EXPECT_EQ(detail::type_fingerprint<vendor_order>(), 0x74f5b5869bdc5452ull);  // "order.v1"
  EXPECT_EQ(detail::ops_of<user_v1>().fingerprint, detail::type_fingerprint<user_v1>());
  EXPECT_EQ(detail::type_name_of<member>(), "user");
  EXPECT_EQ(detail::type_fingerprint<member>(), detail::type_fingerprint<user_v1>())
      << "a renamed type with the same type_name must keep its fingerprint";
  EXPECT_NE(detail::type_fingerprint<order>(), detail::type_fingerprint<user_v1>());
}

TEST(TypeNameTest, TheTraitWinsOverTheMemberAndUnnamedTypesKeepTheCompilersName) {
  EXPECT_EQ(detail::type_name_of<both_named>(), "trait-name");
  EXPECT_EQ(detail::type_fingerprint<both_named>(), detail::fnv1a64("trait-name"));
  EXPECT_EQ(detail::type_name_of<unnamed>(), typeid(unnamed).name());
  EXPECT_EQ(detail::type_fingerprint<unnamed>(), detail::fnv1a64(typeid(unnamed).name()));
  EXPECT_EQ(detail::type_name_of<int>(), typeid(int).name());
}

TEST(TypeNameTest, TheSchemaMismatchEventHasAReadableName) {
  EXPECT_EQ(to_string(event_type::schema_mismatch), "schema_mismatch");
}

TEST_F(TypeIdentityTest, ARenamedTypeWithTheSameTypeNameHitsTheOldBuildsEntries) {
  old_build_sets<user_v1>("u:1", {"ada", 36});
  auto cache = new_build();
  auto v = cache->get<member>("u:1", []() -> member {
    ADD_FAILURE() << "the renamed type did not find the old build's entry";
    return {};
  });
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->name, "ada");
  EXPECT_EQ(v->age, 36);
  const auto m = cache->metrics();
  EXPECT_EQ(m.fetches, 0u);
  EXPECT_EQ(m.schema_misses, 0u);
  EXPECT_EQ(m.layers[1].hits, 1u);
}

TEST_F(TypeIdentityTest, AnEntryOfAnotherTypeIsACountedMissAndTheFetchedValueReplacesIt) {
  old_build_sets<order>("k", {7});
  auto cache = new_build();
  std::shared_ptr<const user_v1> v;
  ASSERT_NO_THROW(v = cache->get<user_v1>("k", [] { return user_v1{"fetched", 1}; }));
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->name, "fetched");
  EXPECT_EQ(cache->metrics().fetches, 1u);
  expect_schema_misses(*cache, "k", 1);
  ASSERT_TRUE(cache->flush());
  cache_stack reader({bytes_}, {.clock = clock_});
  auto stored = reader.get_if_present<user_v1>("k");
  ASSERT_NE(stored, nullptr) << "the fetched value did not overwrite the other type's entry";
  EXPECT_EQ(stored->name, "fetched");
}

TEST_F(TypeIdentityTest, AnEntryMissingANewRequiredFieldIsASchemaMissNotCorruption) {
  old_build_sets<user_v1>("u:1", {"ada", 36});
  auto cache = new_build();
  std::shared_ptr<const user_v2> v;
  ASSERT_NO_THROW(v = cache->get<user_v2>("u:1", [] { return user_v2{"ada", 36, "a@x"}; }));
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->email, "a@x");
  EXPECT_EQ(cache->metrics().fetches, 1u);
  expect_schema_misses(*cache, "u:1", 1);
  ASSERT_TRUE(cache->flush());
  cache_stack reader({bytes_}, {.clock = clock_});
  auto stored = reader.get_if_present<user_v2>("u:1");
  ASSERT_NE(stored, nullptr);
  EXPECT_EQ(stored->email, "a@x");
}

TEST_F(TypeIdentityTest, AnEntryOfAnotherCodecIsASchemaMiss) {
  old_build_sets<user_v1>("u:1", {"ada", 36});
  auto cache = new_build();
  std::shared_ptr<const user_json> v;
  ASSERT_NO_THROW(v = cache->get<user_json>("u:1", [] { return user_json{"json", 1}; }));
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->name, "json");
  expect_schema_misses(*cache, "u:1", 1);
}

TEST_F(TypeIdentityTest, GetIfPresentTreatsAnEntryOfAnotherSchemaAsAbsent) {
  old_build_sets<user_v1>("u:1", {"ada", 36});
  auto cache = new_build();
  std::shared_ptr<const user_v2> v;
  ASSERT_NO_THROW(v = cache->get_if_present<user_v2>("u:1"));
  EXPECT_EQ(v, nullptr);
  expect_schema_misses(*cache, "u:1", 1);
  EXPECT_EQ(cache->metrics().fetches, 0u);
  ASSERT_NO_THROW(v = cache->get_if_present<user_v2>("u:1"));
  EXPECT_EQ(v, nullptr) << "nothing was cached in L1 for a miss";
  EXPECT_NE(bytes_->stored("u:1"), std::nullopt) << "get_if_present must not remove the entry";
}

TEST_F(TypeIdentityTest, GetManyFetchesKeysWhoseEntriesAreOfAnotherSchema) {
  old_build_sets<user_v1>("u:1", {"ada", 36});
  old_build_sets<user_v1>("u:2", {"bob", 41});
  // u:2 was rewritten by the new build already; u:1 still holds the old layout.
  {
    cache_stack peer({bytes_}, {.clock = clock_});
    ASSERT_TRUE(peer.set<user_v2>("u:2", {"bob", 41, "b@x"}).ok());
  }
  auto cache = new_build();
  strings asked;
  std::vector<std::shared_ptr<const user_v2>> got;
  ASSERT_NO_THROW(
      got = cache->get_many<user_v2>(strings{"u:1", "u:2"}, [&](std::span<const std::string> keys) {
        asked.assign(keys.begin(), keys.end());
        return std::vector<user_v2>(keys.size(), user_v2{"ada", 36, "a@x"});
      }));
  ASSERT_EQ(got.size(), 2u);
  ASSERT_NE(got[0], nullptr);
  ASSERT_NE(got[1], nullptr);
  EXPECT_EQ(got[0]->email, "a@x");
  EXPECT_EQ(got[1]->email, "b@x");
  EXPECT_EQ(asked, strings{"u:1"});
  EXPECT_EQ(cache->metrics().schema_misses, 1u);
  EXPECT_EQ(cache->metrics().layers[1].hits, 1u);
  auto mismatches = events_.of(event_type::schema_mismatch);
  ASSERT_EQ(mismatches.size(), 1u);
  EXPECT_EQ(mismatches[0].key, "u:1");
  EXPECT_TRUE(events_.of(event_type::corruption).empty());
}

TEST_F(TypeIdentityTest, ANotFoundOfAnotherTypeIsASchemaMissAndOfARenamedTypeAHit) {
  {
    cache_stack old_build({bytes_}, {.clock = clock_});
    EXPECT_EQ(old_build.get<user_v1>("u:404", [] { return std::optional<user_v1>{}; }), nullptr);
  }
  {
    auto renamed = new_build();
    EXPECT_EQ(renamed->get<member>("u:404",
                                   []() -> std::optional<member> {
                                     ADD_FAILURE() << "the cached not-found was not served";
                                     return member{};
                                   }),
              nullptr);
    EXPECT_EQ(renamed->metrics().negative_hits, 1u);
    EXPECT_EQ(renamed->metrics().schema_misses, 0u);
  }
  auto cache = new_build();
  std::shared_ptr<const order> v;
  ASSERT_NO_THROW(v = cache->get<order>("u:404", [] { return order{404}; }));
  ASSERT_NE(v, nullptr) << "a not-found of another type was served";
  EXPECT_EQ(v->id, 404);
  expect_schema_misses(*cache, "u:404", 1);
}

TEST_F(TypeIdentityTest, ABytesOnlyStackReadingItsOwnEntryAsAnotherTypeMissesInsteadOfThrowing) {
  // No L1 to hold the value: the queued write of this very process answers, through the same
  // check as a byte layer's entry.
  cache_stack cache({bytes_}, {.clock = clock_, .on_event = events_.callback()});
  ASSERT_TRUE(cache.set<user_v1>("u:1", {"ada", 36}).ok());
  std::shared_ptr<const order> v;
  ASSERT_NO_THROW(v = cache.get<order>("u:1", [] { return order{1}; }));
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->id, 1);
  EXPECT_EQ(cache.metrics().schema_misses, 1u);
  EXPECT_TRUE(events_.of(event_type::corruption).empty());
}

}  // namespace
}  // namespace layercache
