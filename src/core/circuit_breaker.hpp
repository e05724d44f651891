// circuit_breaker.hpp — skip a remote layer that keeps failing, and probe it back in.
//
// States: closed (calls pass; consecutive failures — errors or deadline misses — are counted),
// open (calls are refused without touching the backend until `open_for` has passed), half_open
// (exactly ONE caller is let through as a probe; everyone else is still refused). The probe's
// success closes the breaker, its failure re-opens it for another `open_for`. A probe that never
// reports (its caller died) is considered failed after `open_for`, so the breaker cannot wedge.
//
// Time is passed in (milliseconds of any monotonic clock) so the state machine is tested without
// sleeping or sockets. Transitions are reported through the callback, outside the lock.
//
// Thread-safety: all members may be called concurrently.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string_view>

namespace layercache::detail {

class circuit_breaker {
 public:
  enum class state : unsigned char { closed, open, half_open };
  struct options {
    std::uint32_t failure_threshold = 5;  // consecutive failures that open the breaker (>= 1)
    std::chrono::milliseconds open_for{1000};
  };
  using transition_callback = std::function<void(state from, state to)>;

  explicit circuit_breaker(options opts, transition_callback on_transition = {})
      : opts_(opts), on_transition_(std::move(on_transition)) {}

  // Whether a call may go to the backend now. In half_open, true for exactly one caller.
  bool allow(std::int64_t now_ms) {
    state from{}, to{};
    bool allowed = false;
    {
      std::lock_guard lock(mu_);
      from = state_;
      switch (state_) {
        case state::closed:
          allowed = true;
          break;
        case state::open:
          if (now_ms >= reopen_at_) {
            state_ = state::half_open;
            probe_deadline_ = now_ms + opts_.open_for.count();
            allowed = true;  // this caller is the probe
          }
          break;
        case state::half_open:
          if (now_ms >= probe_deadline_) {  // the probe never reported: give another caller a go
            probe_deadline_ = now_ms + opts_.open_for.count();
            allowed = true;
          }
          break;
      }
      to = state_;
    }
    notify(from, to);
    return allowed;
  }

  void on_success() {
    state from{}, to{};
    {
      std::lock_guard lock(mu_);
      from = state_;
      failures_ = 0;
      state_ = state::closed;
      to = state_;
    }
    notify(from, to);
  }

  void on_failure(std::int64_t now_ms) {
    state from{}, to{};
    {
      std::lock_guard lock(mu_);
      from = state_;
      ++failures_;
      if (state_ == state::half_open ||
          (state_ == state::closed && failures_ >= opts_.failure_threshold)) {
        state_ = state::open;
        reopen_at_ = now_ms + opts_.open_for.count();
        ++opens_;
      }
      to = state_;
    }
    notify(from, to);
  }

  state current() const {
    std::lock_guard lock(mu_);
    return state_;
  }
  std::uint64_t opens() const {
    std::lock_guard lock(mu_);
    return opens_;
  }

  static std::string_view name(state s) noexcept {
    switch (s) {
      case state::closed:
        return "closed";
      case state::open:
        return "open";
      case state::half_open:
        return "half_open";
    }
    return "unknown";
  }

 private:
  void notify(state from, state to) {
    if (from != to && on_transition_) on_transition_(from, to);
  }

  options opts_;
  transition_callback on_transition_;
  mutable std::mutex mu_;
  state state_ = state::closed;
  std::uint32_t failures_ = 0;
  std::int64_t reopen_at_ = 0;
  std::int64_t probe_deadline_ = 0;
  std::uint64_t opens_ = 0;
};

}  // namespace layercache::detail
