// no_codec.cpp — get/set of a type without a codec must fail to compile with the readable
// static_assert of cache_stack.hpp ("layercache: no codec for this type ..."). Built only by the
// compile_fail.no_codec test; with LAYERCACHE_COMPILE_FAIL_CONTROL the type gets a codec and the
// same code must compile (compile_control.no_codec).
#include <string>
#include <string_view>

#include "layercache/cache_stack.hpp"

namespace {
struct no_codec_type {
  int value = 0;
};
}  // namespace

#ifdef LAYERCACHE_COMPILE_FAIL_CONTROL
template <>
struct layercache::codec<no_codec_type> {
  static void encode(const no_codec_type& v, std::string& out) { out += std::to_string(v.value); }
  static no_codec_type decode(std::string_view bytes) {
    return no_codec_type{static_cast<int>(bytes.size())};
  }
};
#endif

void use_without_codec(layercache::cache_stack& cache) {
  (void)cache.get<no_codec_type>("k", [] { return no_codec_type{1}; });
  (void)cache.set<no_codec_type>("k", no_codec_type{2});
}
