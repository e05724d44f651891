#include "memory/w_tinylfu_policy.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>

namespace layercache::detail {
namespace {

constexpr std::uint8_t window_segment = 0;
constexpr std::uint8_t probation_segment = 1;
constexpr std::uint8_t protected_segment = 2;

constexpr double protected_share = 0.8;
constexpr unsigned hash_flood_threshold = 6;
constexpr std::uint32_t batch_size = 64;

// A segment one climber step larger holds this many more of a shard's entries.
std::size_t ghost_span(std::size_t capacity) {
  return static_cast<std::size_t>(window_climber::step_share * static_cast<double>(capacity)) + 1;
}

// Distinct, reproducible seeds for the policies of a process (so replays give the same figures
// run after run); the admission coin only has to be unpredictable to a key's hash, not secret.
std::uint64_t next_seed() noexcept {
  static std::atomic<std::uint64_t> instances{0};
  std::uint64_t z = instances.fetch_add(1, std::memory_order_relaxed) + 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return z != 0 ? z : 1;
}

}  // namespace

w_tinylfu_policy::w_tinylfu_policy(std::size_t capacity, window_climber* climber)
    : capacity_(std::max<std::size_t>(capacity, 1)),
      window_max_(1),
      protected_max_(0),
      sketch_(capacity_),
      random_(next_seed()),
      own_climber_(climber == nullptr ? std::make_unique<window_climber>(capacity_) : nullptr),
      climber_(climber == nullptr ? own_climber_.get() : climber),
      window_ghosts_(ghost_span(capacity_)),
      main_ghosts_(ghost_span(capacity_)) {
  apply_window_share();
}

void w_tinylfu_policy::apply_window_share() noexcept {
  // The tolerance keeps a share that is a whole number of entries (1 % of 100) from rounding up.
  const double wanted = std::ceil(climber_->window_share() * static_cast<double>(capacity_) - 1e-9);
  window_max_ = std::clamp<std::size_t>(static_cast<std::size_t>(wanted), 1,
                                        std::max<std::size_t>(capacity_ - 1, 1));
  protected_max_ = static_cast<std::size_t>(
      protected_share * static_cast<double>(capacity_ - std::min(capacity_, window_max_)));
}

void w_tinylfu_policy::on_insert(entry_node* n) noexcept {
  // A miss (or a write) on a key evicted within one step of the window's or main's boundary.
  if (window_ghosts_.take(n->hash)) {
    ++batch_window_ghost_hits_;
  } else if (main_ghosts_.take(n->hash)) {
    ++batch_main_ghost_hits_;
  }
  sketch_.increment(n->hash);
  record_request();
  apply_window_share();
  n->segment = window_segment;
  n->referenced = false;
  window_.push_front(n);
  // Usually one entry graduates; after the window shrank, the overflow graduates at once and
  // only the newest of it is judged (the others join main as if the window had been smaller).
  while (window_.size() > window_max_) {
    entry_node* graduate = window_.back();
    window_.unlink(graduate);
    graduate->segment = probation_segment;
    probation_.push_front(graduate);
    candidate_ = graduate;
  }
}

void w_tinylfu_policy::on_access(entry_node* n) noexcept {
  sketch_.increment(n->hash);
  record_request();
  switch (n->segment) {
    case window_segment:
      window_.move_to_front(n);
      break;
    case probation_segment:
      promote(n);
      break;
    default:
      if (!n->referenced) n->referenced = true;
      break;
  }
}

void w_tinylfu_policy::promote(entry_node* n) noexcept {
  probation_.unlink(n);
  if (n == candidate_) candidate_ = nullptr;  // a hit on it settles its admission
  n->segment = protected_segment;
  n->referenced = false;
  protected_.push_front(n);
  demote_overflow(protected_, protected_max_, probation_, probation_segment);
}

void w_tinylfu_policy::on_remove(entry_node* n) noexcept {
  if (n == candidate_) candidate_ = nullptr;
  switch (n->segment) {
    case window_segment:
      window_.unlink(n);
      break;
    case probation_segment:
      probation_.unlink(n);
      break;
    default:
      protected_.unlink(n);
      break;
  }
}

entry_node* w_tinylfu_policy::victim() noexcept {
  entry_node* v = main_victim();
  entry_node* out = nullptr;
  if (candidate_ == nullptr) {
    out = v != nullptr ? v : window_.back();
  } else if (v == nullptr) {
    out = candidate_;
  } else {
    out = admit(candidate_, v) ? v : candidate_;
  }
  if (out != nullptr) {
    const bool window_side = out == candidate_ || out->segment == window_segment;
    (window_side ? window_ghosts_ : main_ghosts_).add(out->hash);
  }
  return out;
}

entry_node* w_tinylfu_policy::main_victim() noexcept {
  entry_node* v = probation_.back();
  if (v != nullptr && v == candidate_) v = probation_.size() > 1 ? candidate_->prev : nullptr;
  if (v != nullptr) return v;
  return second_chance_tail(protected_);
}

bool w_tinylfu_policy::admit(const entry_node* candidate, const entry_node* victim) noexcept {
  const unsigned candidate_freq = sketch_.estimate(candidate->hash);
  const unsigned victim_freq = sketch_.estimate(victim->hash);
  if (candidate_freq > victim_freq) return true;
  if (candidate_freq < hash_flood_threshold) return false;
  random_ ^= random_ << 13;
  random_ ^= random_ >> 7;
  random_ ^= random_ << 17;
  return (random_ & 127) == 0;
}

void w_tinylfu_policy::record_request() noexcept {
  if (++batch_requests_ < batch_size) return;
  climber_->record(batch_requests_, batch_window_ghost_hits_, batch_main_ghost_hits_);
  batch_requests_ = 0;
  batch_window_ghost_hits_ = 0;
  batch_main_ghost_hits_ = 0;
}

}  // namespace layercache::detail
