#include "layercache/layer.hpp"

namespace layercache {

status layer::del_many(std::span<const std::string> keys) {
  status result;
  for (const auto& key : keys) result.update(del(key));
  return result;
}

std::vector<byte_read> byte_layer::get_many(std::span<const std::string> keys) {
  std::vector<byte_read> out;
  out.reserve(keys.size());
  for (const auto& key : keys) out.push_back(get(key));
  return out;
}

status byte_layer::set_many(std::span<const byte_write> writes) {
  status result;
  for (const auto& w : writes) result.update(set(w.key, w.bytes, w.expires_at_ms));
  return result;
}

status byte_layer::scan(
    const std::function<bool(std::string_view key, std::string_view bytes)>& visit) {
  (void)visit;
  return status::layer_error(info().name, errc::invalid_argument,
                             "this layer cannot enumerate its entries");
}

}  // namespace layercache
