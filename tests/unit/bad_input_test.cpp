// bad_input_test.cpp — misuse throws a documented error at the call that misused the cache: keys,
// options (every validate() branch), layer lists, type mismatches and fetchers that throw.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <limits>
#include <memory>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "layercache/cache_stack.hpp"
#include "support/fake_clock.hpp"
#include "test_byte_layer.hpp"

namespace layercache {
namespace {

using namespace std::chrono_literals;
using strings = std::vector<std::string>;

std::vector<std::shared_ptr<layer>> memory_only() { return {memory_layer::create({})}; }

// Every keyed operation of the stack, applied to one key; each must reject it the same way.
void expect_every_operation_rejects(cache_stack& cache, const std::string& key) {
  std::atomic<int> fetches{0};
  auto fetch = [&] {
    ++fetches;
    return std::string("v");
  };
  auto batch = [&](std::span<const std::string> keys) {
    ++fetches;
    return strings(keys.size(), "v");
  };
  const std::string ok_key = "fine";
  EXPECT_THROW((void)cache.get<std::string>(key, fetch), invalid_argument_error);
  EXPECT_THROW((void)cache.get_if_present<std::string>(key), invalid_argument_error);
  EXPECT_THROW((void)cache.set<std::string>(key, "v"), invalid_argument_error);
  EXPECT_THROW((void)cache.del(key), invalid_argument_error);
  EXPECT_THROW((void)cache.has(key), invalid_argument_error);
  EXPECT_THROW((void)cache.get_many<std::string>(strings{ok_key, key}, batch),
               invalid_argument_error);
  const std::vector<std::pair<std::string, std::string>> entries{{ok_key, "v"}, {key, "v"}};
  EXPECT_THROW((void)cache.set_many<std::string>(entries), invalid_argument_error);
  EXPECT_THROW((void)cache.del_many(strings{ok_key, key}), invalid_argument_error);
  EXPECT_EQ(fetches.load(), 0);
  EXPECT_FALSE(cache.has(ok_key)) << "a rejected batch was partly applied";
}

TEST(BadInputTest, EmptyKeyIsRejectedByEveryOperation) {
  cache_stack cache(memory_only());
  expect_every_operation_rejects(cache, "");
  EXPECT_EQ(cache.metrics().fetches, 0u);
}

TEST(BadInputTest, KeyOfMaxKeyBytesIsAcceptedAndOneByteMoreIsRejected) {
  cache_stack cache(memory_only());
  ASSERT_EQ(cache.options().max_key_bytes, 1024u);
  const std::string longest(1024, 'k');
  EXPECT_EQ(*cache.get<std::string>(longest, [] { return std::string("v"); }), "v");
  EXPECT_TRUE(cache.has(longest));
  EXPECT_TRUE(cache.set<std::string>(longest, "w").ok());
  EXPECT_EQ(*cache.get_if_present<std::string>(longest), "w");
  EXPECT_TRUE(cache.del(longest).ok());
  expect_every_operation_rejects(cache, std::string(1025, 'k'));
}

TEST(BadInputTest, CustomMaxKeyBytesIsHonoured) {
  cache_stack cache(memory_only(), {.max_key_bytes = 8});
  EXPECT_TRUE(cache.set<int>("12345678", 1).ok());
  expect_every_operation_rejects(cache, "123456789");
}

TEST(BadInputTest, InvalidStackOptionsAreRejectedAtConstruction) {
  const auto rejects = [](stack_options o, const char* what) {
    EXPECT_THROW(o.validate(), invalid_argument_error) << what;
    EXPECT_THROW(cache_stack(memory_only(), o), invalid_argument_error) << what;
  };
  rejects({.ttl = 0ms}, "zero ttl");
  rejects({.ttl = -1ms}, "negative ttl");
  rejects({.negative_ttl = -1ms}, "negative negative_ttl");
  rejects({.max_key_bytes = 0}, "zero max_key_bytes");
  rejects({.max_key_bytes = 65536}, "max_key_bytes over 65535");
  rejects({.wait_deadline = -1ms}, "negative wait_deadline");

  EXPECT_NO_THROW(stack_options{}.validate());
  EXPECT_NO_THROW((stack_options{.negative_ttl = 0ms, .max_key_bytes = 65535}.validate()));
  EXPECT_NO_THROW((stack_options{.max_key_bytes = 1}.validate()));
}

TEST(BadInputTest, InvalidGetOptionsAreRejectedAtTheCallOnHitAndMiss) {
  cache_stack cache(memory_only());
  ASSERT_TRUE(cache.set<std::string>("cached", "v").ok());
  std::atomic<int> fetches{0};
  auto fetch = [&] {
    ++fetches;
    return std::string("v");
  };
  auto batch = [&](std::span<const std::string> keys) {
    ++fetches;
    return strings(keys.size(), "v");
  };
  const std::vector<std::pair<get_options, const char*>> invalid{
      {{.ttl = 0ms}, "zero ttl"},
      {{.ttl = -5ms}, "negative ttl"},
      {{.negative_ttl = -1ms}, "negative negative_ttl"},
      {{.wait_deadline = -1ms}, "negative wait_deadline"},
  };
  for (const auto& [o, what] : invalid) {
    EXPECT_THROW(o.validate(), invalid_argument_error) << what;
    EXPECT_THROW((void)cache.get<std::string>("cached", fetch, o), invalid_argument_error) << what;
    EXPECT_THROW((void)cache.get<std::string>("missing", fetch, o), invalid_argument_error) << what;
    EXPECT_THROW((void)cache.get_many<std::string>(strings{"missing"}, batch, o),
                 invalid_argument_error)
        << what;
  }
  EXPECT_EQ(fetches.load(), 0);
  EXPECT_NO_THROW((get_options{.ttl = 1ms, .negative_ttl = 0ms, .wait_deadline = 0ms}.validate()));
}

TEST(BadInputTest, InvalidSetOptionsAreRejectedAtTheCall) {
  cache_stack cache(memory_only());
  for (auto ttl : {0ms, -1ms}) {
    const set_options o{.ttl = ttl};
    EXPECT_THROW(o.validate(), invalid_argument_error);
    EXPECT_THROW((void)cache.set<int>("k", 1, o), invalid_argument_error);
    const std::vector<std::pair<std::string, int>> entries{{"k", 1}};
    EXPECT_THROW((void)cache.set_many<int>(entries, o), invalid_argument_error);
  }
  EXPECT_FALSE(cache.has("k"));
  EXPECT_NO_THROW(set_options{}.validate());
}

TEST(BadInputTest, InvalidMemoryLayerOptionsAreRejected) {
  const auto rejects = [](memory_layer_options o, const char* what) {
    EXPECT_THROW(o.validate(), invalid_argument_error) << what;
    EXPECT_THROW((void)memory_layer::create(o), invalid_argument_error) << what;
  };
  rejects({.max_entries = 0}, "zero max_entries");
  rejects({.ttl = -1ms}, "negative ttl");
  rejects({.shards = 3}, "shards not a power of two");
  rejects({.shards = 2048}, "shards over 1024");
  rejects({.protected_ratio = 0.0}, "protected_ratio 0");
  rejects({.protected_ratio = 1.0}, "protected_ratio 1");
  rejects({.protected_ratio = -0.5}, "negative protected_ratio");
  rejects({.protected_ratio = std::numeric_limits<double>::quiet_NaN()}, "NaN protected_ratio");
  rejects({.name = ""}, "empty name");

  EXPECT_NO_THROW((void)memory_layer::create({.shards = 1}));
  EXPECT_NO_THROW((void)memory_layer::create({.shards = 1024}));
  EXPECT_NO_THROW((void)memory_layer::create({.max_entries = 1}));
}

// A layer that claims to hold objects but is not the memory layer.
class fake_object_layer final : public layer {
 public:
  fake_object_layer() {
    info_.kind = layer_kind::objects;
    info_.name = "fake-objects";
  }
  const layer_info& info() const noexcept override { return info_; }
  status del(std::string_view) override { return {}; }
  status clear() override { return {}; }

 private:
  layer_info info_;
};

// A layer that claims to hold bytes but does not implement byte_layer.
class fake_bytes_layer final : public layer {
 public:
  fake_bytes_layer() {
    info_.kind = layer_kind::bytes;
    info_.name = "fake-bytes";
  }
  const layer_info& info() const noexcept override { return info_; }
  status del(std::string_view) override { return {}; }
  status clear() override { return {}; }

 private:
  layer_info info_;
};

TEST(BadInputTest, StackRejectsInvalidLayerLists) {
  auto bytes = test::test_byte_layer::create({});
  EXPECT_THROW(cache_stack({}), invalid_argument_error) << "no layer";
  EXPECT_THROW(cache_stack({nullptr}), invalid_argument_error) << "null layer";
  EXPECT_THROW(cache_stack({memory_layer::create({}), nullptr}), invalid_argument_error)
      << "null second layer";
  EXPECT_THROW(cache_stack({bytes, memory_layer::create({})}), invalid_argument_error)
      << "memory layer not first";
  EXPECT_THROW(cache_stack({memory_layer::create({}), memory_layer::create({})}),
               invalid_argument_error)
      << "two memory layers";
  EXPECT_THROW(cache_stack({std::make_shared<fake_object_layer>()}), invalid_argument_error)
      << "an object layer that is not a memory_layer";
  EXPECT_THROW(cache_stack({std::make_shared<fake_bytes_layer>()}), invalid_argument_error)
      << "a bytes layer that is not a byte_layer";

  EXPECT_NO_THROW(cache_stack({bytes}));
  EXPECT_NO_THROW(cache_stack({memory_layer::create({}), bytes}));
}

TEST(BadInputTest, ReadingAKeyAsAnotherTypeThrowsTypeMismatchFromL1) {
  cache_stack cache(memory_only());
  ASSERT_TRUE(cache.set<std::string>("k", "text").ok());
  std::atomic<int> fetches{0};
  EXPECT_THROW((void)cache.get<int>("k",
                                    [&] {
                                      ++fetches;
                                      return 1;
                                    }),
               type_mismatch_error);
  EXPECT_THROW((void)cache.get_if_present<int>("k"), type_mismatch_error);
  EXPECT_THROW((void)cache.get_many<int>(strings{"k"},
                                         [&](std::span<const std::string> keys) {
                                           ++fetches;
                                           return std::vector<int>(keys.size(), 1);
                                         }),
               type_mismatch_error);
  EXPECT_EQ(fetches.load(), 0);
  // The entry is untouched and still readable as what it is.
  EXPECT_EQ(*cache.get_if_present<std::string>("k"), "text");

  // A cached "not found" has a type too.
  EXPECT_EQ(cache.get<std::string>("none", [] { return std::optional<std::string>{}; }), nullptr);
  EXPECT_THROW((void)cache.get<int>("none", [] { return 1; }), type_mismatch_error);
}

// Below L1 a value of another type is what another build of the application wrote (a rolling
// deploy, codec.hpp "type_name"), not misuse: a counted miss, never an exception nor a delete.
TEST(BadInputTest, ReadingBytesAsAnotherTypeIsASchemaMissThatLeavesThemInPlace) {
  auto clock = std::make_shared<test::fake_clock>();
  auto l2 = test::test_byte_layer::create({.clock = clock});
  {
    cache_stack writer({l2}, {.clock = clock});
    ASSERT_TRUE(writer.set<std::string>("k", "text").ok());
  }
  const auto stored = l2->stored("k");
  ASSERT_TRUE(stored.has_value());
  cache_stack cache({memory_layer::create({.clock = clock}), l2}, {.clock = clock});
  std::atomic<int> fetches{0};
  // Another codec (msgpack) and another type.
  EXPECT_EQ(cache.get_if_present<int>("k"), nullptr);
  // The same codec (identity) but another type.
  EXPECT_EQ(cache.get_if_present<std::vector<char>>("k"), nullptr);
  EXPECT_EQ(l2->stored("k"), stored) << "a value of another type was treated as corrupt";
  EXPECT_EQ(cache.metrics().schema_misses, 2u);
  EXPECT_EQ(cache.metrics().layers[1].errors, 0u);
  EXPECT_EQ(*cache.get_if_present<std::string>("k"), "text");

  // Read through the fetcher instead, the fetched value replaces it.
  cache_stack other({memory_layer::create({.clock = clock}), l2}, {.clock = clock});
  std::shared_ptr<const int> v;
  ASSERT_NO_THROW(v = other.get<int>("k", [&] {
    ++fetches;
    return 1;
  }));
  EXPECT_EQ(*v, 1);
  EXPECT_EQ(fetches.load(), 1);
  EXPECT_EQ(other.metrics().schema_misses, 1u);
  ASSERT_TRUE(other.flush());
  EXPECT_NE(l2->stored("k"), stored);
  cache_stack third({memory_layer::create({.clock = clock}), l2}, {.clock = clock});
  std::vector<std::shared_ptr<const std::string>> many;
  ASSERT_NO_THROW(
      many = third.get_many<std::string>(strings{"k"}, [&](std::span<const std::string> keys) {
        ++fetches;
        return strings(keys.size(), "again");
      }));
  ASSERT_EQ(many.size(), 1u);
  EXPECT_EQ(*many[0], "again");
  EXPECT_EQ(fetches.load(), 2);
  EXPECT_EQ(third.metrics().schema_misses, 1u);
}

TEST(BadInputTest, ReadingAKeyAsAnotherTypeWhileItIsBeingFetchedThrowsTypeMismatch) {
  cache_stack cache(memory_only());
  std::mutex mu;
  std::condition_variable cv;
  bool entered = false, release = false;
  std::thread leader([&] {
    (void)cache.get<std::string>("k", [&] {
      std::unique_lock lock(mu);
      entered = true;
      cv.notify_all();
      EXPECT_TRUE(cv.wait_for(lock, 10s, [&] { return release; }));
      return std::string("v");
    });
  });
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, 10s, [&] { return entered; }));
  }
  EXPECT_THROW((void)cache.get<int>("k", [] { return 1; }), type_mismatch_error);
  {
    std::lock_guard lock(mu);
    release = true;
  }
  cv.notify_all();
  leader.join();
  EXPECT_EQ(*cache.get_if_present<std::string>("k"), "v");
}

TEST(BadInputTest, FetcherThrowingAStdExceptionPropagatesAndCachesNothing) {
  cache_stack cache(memory_only());
  EXPECT_THROW((void)cache.get<std::string>(
                   "k", []() -> std::string { throw std::runtime_error("db down"); }),
               std::runtime_error);
  auto m = cache.metrics();
  EXPECT_EQ(m.fetches, 1u);
  EXPECT_EQ(m.fetch_errors, 1u);
  EXPECT_FALSE(cache.has("k"));
  EXPECT_EQ(*cache.get<std::string>("k", [] { return std::string("ok"); }), "ok");
  EXPECT_EQ(cache.metrics().fetches, 2u);
}

TEST(BadInputTest, FetcherThrowingANonStdExceptionPropagatesAndCachesNothing) {
  cache_stack cache(memory_only());
  try {
    (void)cache.get<std::string>("k", []() -> std::string { throw 42; });
    ADD_FAILURE() << "no exception";
  } catch (int e) {
    EXPECT_EQ(e, 42);
  }
  auto m = cache.metrics();
  EXPECT_EQ(m.fetches, 1u);
  EXPECT_EQ(m.fetch_errors, 1u);
  EXPECT_FALSE(cache.has("k"));
  EXPECT_THROW(
      (void)cache.get_many<std::string>(
          strings{"a"}, [](std::span<const std::string>) -> strings { throw std::string("odd"); }),
      std::string);
  m = cache.metrics();
  EXPECT_EQ(m.fetches, 2u);
  EXPECT_EQ(m.fetch_errors, 2u);
  EXPECT_FALSE(cache.has("a"));
}

}  // namespace
}  // namespace layercache
