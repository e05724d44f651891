// write_behind_callbacks_test.cpp — user callbacks that run on a background writer thread
// (stack_options::on_event for a failed write) and mutate the cache must not deadlock the writer
// (issue 9, defect 10): the writer never waits for room in its own queue, nor on a strict ticket,
// and a caller waiting for room does not hold the key's order stripe meanwhile.
//
// A broken writer hangs for good, so each scenario runs on its own thread and is awaited with a
// deadline; on a hang the test fails and deliberately leaks the stuck stack and thread instead of
// hanging the test binary.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>

#include "layercache/cache_stack.hpp"
#include "layercache/detail/hash.hpp"
#include "support/await.hpp"
#include "test_byte_layer.hpp"

namespace layercache {
namespace {

using namespace std::chrono_literals;
using test::faulty_byte_layer;
using test::test_byte_layer;

constexpr auto bound = 10s;

// Runs `scenario` on a thread of its own; false when it did not finish within `limit`. A hung
// scenario's thread is detached (and what it uses must be leaked by the caller).
bool finishes_within(std::function<void()> scenario, std::chrono::milliseconds limit = bound) {
  auto done = std::make_shared<std::promise<void>>();
  auto finished = done->get_future();
  std::thread t([done, scenario = std::move(scenario)] {
    scenario();
    done->set_value();
  });
  if (finished.wait_for(limit) != std::future_status::ready) {
    t.detach();
    return false;
  }
  t.join();
  return true;
}

// The order stripe of a key (stack_impl.hpp: impl::order_of).
std::size_t stripe_of(std::string_view key) { return (detail::hash_key(key) >> 40) % 64; }

std::string key_in_stripe_of(std::string_view other, std::string_view prefix) {
  for (int i = 0;; ++i) {
    std::string k = std::string(prefix) + std::to_string(i);
    if (k != other && stripe_of(k) == stripe_of(other)) return k;
  }
}

struct failing_stack {
  std::shared_ptr<test_byte_layer> inner = test_byte_layer::create();
  std::shared_ptr<faulty_byte_layer> bytes = std::make_shared<faulty_byte_layer>(inner);
  std::atomic<int> reentered{0};
  std::atomic<int> callback_writes_failed{0};  // layer errors of the callbacks' own writes
};

TEST(WriterCallbackTest, EventCallbackMutatingTheCacheWhileTheQueueIsFullDoesNotDeadlock) {
  // max_pending_writes 1: the write being executed fills the queue. Its failure raises a
  // layer_error on the writer thread, whose callback sets and deletes other keys: before the
  // fix, submit() waited on the writer thread for room only that thread could make.
  auto* s = new failing_stack;  // leaked on purpose if the scenario hangs
  s->bytes->fail_always(test::fault::writes);
  std::atomic<cache_stack*> cache_ptr{nullptr};
  auto* cache = new cache_stack(
      {memory_layer::create({}), s->bytes},
      {.on_event =
           [s, &cache_ptr](const event& e) {
             if (e.type != event_type::layer_error) return;
             if (e.key.substr(0, 3) == "cb:") {
               ++s->callback_writes_failed;
               return;
             }
             if (s->reentered.fetch_add(1) >= 4) return;
             cache_stack* c = cache_ptr.load();
             (void)c->set<std::string>("cb:" + std::string(e.key), "from the callback");
             (void)c->del("cb:gone:" + std::string(e.key));
           },
       .write_threads = 1,
       .max_pending_writes = 1,
       // Given up at once: the drop path (L1 invalidation) runs on the writer thread too.
       .write_retry_for = 0ms,
       .shutdown_flush_timeout = 100ms});
  cache_ptr = cache;
  const bool finished = finishes_within([&] {
    for (int i = 0; i < 4; ++i) (void)cache->set<std::string>("k" + std::to_string(i), "v");
    (void)cache->flush(bound);
    ASSERT_TRUE(test::eventually([&] { return s->reentered.load() >= 4; }));
    ASSERT_TRUE(test::eventually([&] { return s->callback_writes_failed.load() >= 1; }));
    ASSERT_TRUE(cache->flush(bound)) << "the writer did not drain its queue";
  });
  ASSERT_TRUE(finished) << "the writer thread deadlocked on its own queue";
  EXPECT_GE(s->reentered.load(), 4);
  EXPECT_GE(s->callback_writes_failed.load(), 1)
      << "the callbacks' writes never reached the writer";
  delete cache;
  delete s;
}

TEST(WriterCallbackTest, CallerWaitingForRoomDoesNotHoldTheStripeAWriterCallbackNeeds) {
  // A user thread's set(k) finds the queue full and waits for room; the writer's callback sets a
  // key of the same order stripe. Before the fix the user thread waited holding the stripe, and
  // the callback waited for the stripe: neither could go on.
  auto* s = new failing_stack;
  test::gate release;  // holds the writer inside the failing layer call
  std::atomic<bool> holding{false};
  s->bytes->set_hook([&](unsigned kind, std::string_view) {
    if (kind == test::fault::set && !holding.exchange(true)) (void)release.wait();
  });
  s->bytes->fail_next(1, test::fault::set);
  const std::string user_key = "user";
  const std::string callback_key = key_in_stripe_of(user_key, "cb");
  std::atomic<cache_stack*> cache_ptr{nullptr};
  std::atomic<bool> callback_done{false};
  auto* cache = new cache_stack({memory_layer::create({}), s->bytes},
                                {.on_event =
                                     [&, callback_key](const event& e) {
                                       if (e.type != event_type::layer_error || e.key != "first")
                                         return;
                                       (void)cache_ptr.load()->set<std::string>(
                                           callback_key, "from the callback");
                                       callback_done = true;
                                     },
                                 .write_threads = 1,
                                 .max_pending_writes = 1,
                                 .shutdown_flush_timeout = 100ms});
  cache_ptr = cache;
  const bool finished = finishes_within([&] {
    (void)cache->set<std::string>("first", "v");  // the writer takes it and is held
    ASSERT_TRUE(test::eventually([&] { return holding.load(); }));
    std::atomic<bool> user_done{false};
    std::thread user([&] {
      (void)cache->set<std::string>(user_key, "from the user");  // queue full: waits for room
      user_done = true;
    });
    // The user's set must be waiting for room (the queue holds max_pending writes) before the
    // writer's callback runs; a negative can only be seen over some time.
    EXPECT_FALSE(test::eventually([&] { return user_done.load(); }, 100ms));
    release.open();
    user.join();
    EXPECT_TRUE(test::eventually([&] { return callback_done.load(); }));
    EXPECT_TRUE(cache->flush(bound));
  });
  ASSERT_TRUE(finished) << "the user thread and the writer's callback deadlocked on the stripe";
  EXPECT_EQ(*cache->get<std::string>(user_key, [] { return std::string("fetched"); }),
            "from the user");
  EXPECT_EQ(*cache->get<std::string>(callback_key, [] { return std::string("fetched"); }),
            "from the callback");
  delete cache;
  delete s;
}

TEST(WriterCallbackTest, StrictMutationFromAWriterCallbackReturnsInsteadOfWaitingForItself) {
  auto* s = new failing_stack;
  s->bytes->fail_next(1, test::fault::set);
  std::atomic<cache_stack*> cache_ptr{nullptr};
  auto callback_status = std::make_shared<std::promise<status>>();
  auto answered = callback_status->get_future();
  std::atomic<bool> once{false};
  auto* cache = new cache_stack(
      {memory_layer::create({}), s->bytes},
      {.on_event =
           [&, callback_status](const event& e) {
             if (e.type != event_type::layer_error || once.exchange(true)) return;
             callback_status->set_value(cache_ptr.load()->set<std::string>("cb", "v"));
           },
       .writes = write_policy::strict,
       .write_threads = 1,
       .shutdown_flush_timeout = 100ms});
  cache_ptr = cache;
  const bool finished = finishes_within([&] {
    const status first = cache->set<std::string>("k", "v");
    EXPECT_FALSE(first.ok()) << "the injected failure was not reported to the strict caller";
    ASSERT_EQ(answered.wait_for(bound), std::future_status::ready);
    const status from_callback = answered.get();
    // Not awaited on the writer thread: said so, and the write still lands.
    EXPECT_EQ(from_callback.code(), errc::timeout) << from_callback.message();
    EXPECT_TRUE(cache->flush(bound));
    EXPECT_TRUE(s->inner->stored("cb").has_value());
  });
  ASSERT_TRUE(finished) << "a strict set on the writer thread waited for itself";
  delete cache;
  delete s;
}

}  // namespace
}  // namespace layercache
