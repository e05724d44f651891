#include "redis/scan.hpp"

namespace layercache::redis_detail {

status scan_batches(
    redis_client& client, const std::string& pattern, std::string_view count,
    std::chrono::milliseconds deadline, std::string_view layer,
    const std::function<status(const status&)>& outcome,
    const std::function<status(const std::vector<reply>& keys, bool& stop)>& on_batch) {
  std::string cursor = "0";
  do {
    result r = client.execute({"SCAN", cursor, "MATCH", pattern, "COUNT", count}, deadline);
    status s = outcome(r.error);
    if (!s.ok()) return s;
    if (r.value.type != reply::kind::array || r.value.elements.size() != 2) {
      return status::layer_error(layer, errc::internal, "unexpected reply to SCAN");
    }
    cursor = r.value.elements[0].str;
    bool stop = false;
    status b = on_batch(r.value.elements[1].elements, stop);
    if (!b.ok() || stop) return b;
  } while (cursor != "0");
  return {};
}

}  // namespace layercache::redis_detail
