#include "layercache/clock.hpp"

#include <ctime>

namespace layercache {
namespace {

class coarse_clock final : public clock {
 public:
  unix_ms now_ms() const noexcept override {
    timespec ts{};
    ::clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    return static_cast<unix_ms>(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000;
  }
  std::int64_t now_us() const noexcept override {
    timespec ts{};
    ::clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000 + ts.tv_nsec / 1000;
  }
};

}  // namespace

std::shared_ptr<const clock> default_clock() {
  static const auto instance = std::make_shared<const coarse_clock>();
  return instance;
}

}  // namespace layercache
