// subscriber.hpp — a dedicated Redis pub/sub connection (internal, not public API): SUBSCRIBEs to a
// fixed set of channels and hands every message to a callback, keeps itself subscribed across
// connection losses, and says when it was not (messages published meanwhile are lost — Redis
// pub/sub does not queue them). The invalidation bus is built on it. redis_client refuses SUBSCRIBE
// because its connections are shared; this one owns its socket and its thread.
//
//   subscriber sub(
//       {.url = "redis://:secret@127.0.0.1:6379", .channels = {"layercache:inv"}},
//       [&](std::string_view channel, std::string_view payload) { drop(payload); },
//       [&](bool subscribed) { if (!subscribed) clear_everything_we_might_have_missed(); });
//   if (!sub.subscribed()) log("not subscribed yet; retrying in the background");
//
// Delivery: at most once, in the order Redis sent the messages, on one connection at a time.
// on_state(true) runs when every channel's SUBSCRIBE is confirmed on a fresh connection (first
// connection and each reconnect); on_state(false) runs when that connection is lost (server gone,
// connection killed or reset, no bytes for 3 health intervals, unexpected reply). Calls alternate
// true, false, true, ... starting with true; the messages of a connection come after its true and
// before its false. A failed attempt that never subscribed reports nothing (the state was already
// false); the destructor reports nothing either.
//
// Errors: the constructor throws layercache::invalid_argument_error for invalid options, a
// malformed URL or an empty on_message. Nothing else throws: an unreachable server, a refused
// AUTH, a lost connection are retried in the background with backoff; last_error() says why it
// is not subscribed.
//
// Thread-safety: subscribed(), stats() and last_error() may be called from any thread, callbacks
// included. Both callbacks run on the subscriber's own thread, one at a time, never concurrently
// with each other; the first may run before the constructor returns. They must not throw (an
// exception is swallowed so the connection lives on, and that message is lost) and must not
// destroy the subscriber. The destructor stops and joins the thread: it waits for a callback that
// is running, and no callback starts after it returns.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "layercache/status.hpp"

namespace layercache::redis_detail {

struct subscriber_options {
  // redis://[user[:password]@]host:port[/db] (see redis_url.hpp). Required. AUTH is sent when the
  // URL has credentials. The /db part is accepted and ignored: pub/sub channels are global to the
  // server, not per database, so the same URL as the cache's client can be used unchanged (and a
  // SELECT would only add a round trip and a way to fail).
  std::string url;
  // Channels to SUBSCRIBE to, exact names (no patterns), binary-safe. At least one; duplicates are
  // harmless (Redis confirms each).
  std::vector<std::string> channels;
  // Bound on one attempt: TCP connect + AUTH + every SUBSCRIBE confirmed. Default 200 ms; must be
  // > 0. The constructor waits about this long at most for the first attempt.
  std::chrono::milliseconds connect_timeout{200};
  // Reconnect backoff: the first attempt after a loss waits about reconnect_min, each failed
  // attempt doubles the wait up to reconnect_max (each wait jittered down to half, so many
  // subscribers do not reconnect in lockstep after a server restart). Defaults 10 ms and 1000 ms;
  // reconnect_min must be > 0 and <= reconnect_max.
  std::chrono::milliseconds reconnect_min{10};
  std::chrono::milliseconds reconnect_max{1000};
  // Health: while subscribed, a PING is sent when nothing has arrived for health_interval (and no
  // PING for as long); a connection from which no byte at all has arrived for 3 × health_interval
  // is declared dead (on_state(false)) and re-established — provided a PING had 2 intervals to be
  // answered, so time the thread spends in slow callbacks is not counted as silence. This catches
  // a server or network that vanished without closing anything, which TCP alone notices only
  // after minutes. Default 1000 ms; zero disables both (a silent dead connection then goes
  // unnoticed). The ACL user needs permission for PING.
  std::chrono::milliseconds health_interval{1000};

  // Throws layercache::invalid_argument_error naming the first invalid field (the URL's syntax is
  // checked by parse_redis_url at construction).
  void validate() const;
};

// Counters since construction. Monotonic.
struct subscriber_stats {
  std::uint64_t connects = 0;     // subscriptions established (every channel confirmed)
  std::uint64_t disconnects = 0;  // established subscriptions lost (each was an on_state(false))
  std::uint64_t messages = 0;     // messages handed to on_message
};

class subscriber {
 public:
  // A message: the channel it was published on and its payload, both binary-safe. The views are
  // valid only during the call.
  using message_fn = std::function<void(std::string_view channel, std::string_view payload)>;
  // true: every channel's SUBSCRIBE is confirmed on a fresh connection (first time and after every
  // reconnect); false: the subscribed connection was lost (messages published from now until the
  // next `true` are lost).
  using state_fn = std::function<void(bool subscribed)>;

  // Starts the subscriber's thread and waits until the first attempt has subscribed or failed
  // (bounded by about connect_timeout). Not subscribing is not an error: it keeps retrying in the
  // background. `on_state` may be empty. Throws invalid_argument_error for invalid options, a
  // malformed URL or an empty `on_message`; std::system_error if the thread or eventfd cannot be
  // created.
  subscriber(subscriber_options options, message_fn on_message, state_fn on_state);
  // Stops and joins the thread and closes the connection (no on_state(false) is delivered).
  // Prompt even while connected or waiting to reconnect (an eventfd wakes the thread); it waits
  // for a callback that is running. Must not be called from a callback.
  ~subscriber();

  subscriber(const subscriber&) = delete;
  subscriber& operator=(const subscriber&) = delete;
  subscriber(subscriber&&) = delete;
  subscriber& operator=(subscriber&&) = delete;

  // True from just before on_state(true) until just before on_state(false).
  bool subscribed() const noexcept;
  subscriber_stats stats() const;
  // Why the last attempt failed or the last connection was lost; ok if neither happened yet. An
  // authentication failure is invalid_argument ("redis: authentication failed for user X: ..."),
  // transport trouble unavailable. Stays set after a later success (it is history, not state).
  status last_error() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace layercache::redis_detail
