#include "memory/w_tinylfu_policy.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace layercache::detail {
namespace {

constexpr std::uint8_t window_segment = 0;
constexpr std::uint8_t probation_segment = 1;
constexpr std::uint8_t protected_segment = 2;

// Caffeine's defaults (BoundedLocalCache), which its authors chose on a wide set of traces; they
// are not fitted to ours.
constexpr double initial_main_share = 0.99;
constexpr double protected_share = 0.8;
constexpr double step_share = 0.0625;
constexpr double restart_threshold = 0.05;
constexpr double step_decay = 0.98;
constexpr unsigned hash_flood_threshold = 6;

}  // namespace

w_tinylfu_policy::w_tinylfu_policy(std::size_t capacity)
    : capacity_(std::max<std::size_t>(capacity, 1)),
      window_max_(1),
      protected_max_(0),
      sketch_(capacity_),
      // Any non-zero seed works; the address differs per shard so shards do not draw in lockstep.
      random_(0x9e3779b97f4a7c15ULL ^ reinterpret_cast<std::uintptr_t>(this)),
      step_(-step_share * static_cast<double>(capacity_)) {
  const auto main = static_cast<std::size_t>(initial_main_share * static_cast<double>(capacity_));
  set_window(capacity_ - main);
}

void w_tinylfu_policy::set_window(std::size_t window_max) noexcept {
  window_max_ = std::clamp<std::size_t>(window_max, 1, std::max<std::size_t>(capacity_ - 1, 1));
  protected_max_ = static_cast<std::size_t>(
      protected_share * static_cast<double>(capacity_ - std::min(capacity_, window_max_)));
}

void w_tinylfu_policy::on_insert(entry_node* n) noexcept {
  sketch_.increment(n->hash);
  record_request(false);
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
  record_request(true);
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
  while (protected_.size() > protected_max_) {
    entry_node* demoted = protected_unreferenced_tail();
    protected_.unlink(demoted);
    demoted->segment = probation_segment;
    probation_.push_front(demoted);
  }
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
  sampling_ = true;  // the shard is at its bound: hit ratios now say something about the sizes
  entry_node* v = main_victim();
  if (candidate_ == nullptr) return v != nullptr ? v : window_.back();
  if (v == nullptr) return candidate_;
  return admit(candidate_, v) ? v : candidate_;
}

entry_node* w_tinylfu_policy::main_victim() noexcept {
  entry_node* v = probation_.back();
  if (v != nullptr && v == candidate_) v = probation_.size() > 1 ? candidate_->prev : nullptr;
  if (v != nullptr) return v;
  return protected_.empty() ? nullptr : protected_unreferenced_tail();
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

// Gives referenced tail nodes their second chance; returns the first unreferenced tail. Each step
// clears a bit, so a sweep is bounded by the segment's size and amortised O(1).
entry_node* w_tinylfu_policy::protected_unreferenced_tail() noexcept {
  for (;;) {
    entry_node* t = protected_.back();
    if (!t->referenced) return t;
    t->referenced = false;
    protected_.move_to_front(t);
  }
}

void w_tinylfu_policy::record_request(bool hit) noexcept {
  if (!sampling_) return;
  ++sample_requests_;
  sample_hits_ += hit ? 1 : 0;
  if (sample_requests_ >= sketch_.sample_size()) climb();
}

void w_tinylfu_policy::climb() noexcept {
  const double hit_ratio =
      static_cast<double>(sample_hits_) / static_cast<double>(sample_requests_);
  const double change = hit_ratio - previous_hit_ratio_;
  // Keep going while the hit ratio does not fall; turn round when it does.
  const double amount = change >= 0 ? step_ : -step_;
  step_ = std::abs(change) >= restart_threshold
              ? step_share * static_cast<double>(capacity_) * (amount >= 0 ? 1.0 : -1.0)
              : step_decay * amount;
  previous_hit_ratio_ = hit_ratio;
  sample_requests_ = 0;
  sample_hits_ = 0;
  const auto delta = static_cast<std::int64_t>(amount);  // truncated: a decayed step stops
  if (delta == 0) return;
  const auto current = static_cast<std::int64_t>(window_max_);
  set_window(static_cast<std::size_t>(std::max<std::int64_t>(current + delta, 1)));
  // A smaller window graduates its overflow on the next insert; a larger one fills from new
  // entries while main gives up victims. Neither needs to move nodes here, on the hit path.
}

}  // namespace layercache::detail
