// detail/type_ops.hpp — a per-type table of operations so cache_stack's core is not a template.
// Not API. Thread-safety: the tables are immutable statics.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <typeinfo>

#include "layercache/codec.hpp"

namespace layercache::detail {

struct type_ops {
  const std::type_info* type;
  std::uint64_t fingerprint;  // stable across processes built from the same code
  codec_id codec;
  // Decodes a payload into a new immutable object; throws on malformed bytes.
  std::shared_ptr<const void> (*decode)(std::string_view payload);
  // Appends the encoded object to out.
  void (*encode)(const void* object, std::string& out);
  std::size_t (*weigh)(const void* object);
  const char* name;  // for error messages
};

constexpr std::uint64_t fnv1a64(std::string_view s) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

template <class T>
std::string_view type_name_of() {
  if constexpr (requires { codec<T>::type_name; }) {
    return codec<T>::type_name;
  } else {
    return typeid(T).name();
  }
}

template <class T>
codec_id codec_id_of() {
  if constexpr (requires { codec<T>::id; }) {
    return codec<T>::id;
  } else {
    return codec_id::custom;
  }
}

template <class T>
requires has_codec<T>  // without a codec, only cache_stack's readable static_assert fires
const type_ops& ops_of() {
  static const type_ops ops{
      &typeid(T),
      fnv1a64(type_name_of<T>()),
      codec_id_of<T>(),
      [](std::string_view payload) -> std::shared_ptr<const void> {
        return std::make_shared<const T>(codec<T>::decode(payload));
      },
      [](const void* object, std::string& out) {
        codec<T>::encode(*static_cast<const T*>(object), out);
      },
      [](const void* object) -> std::size_t {
        return weigher<T>::weigh(*static_cast<const T*>(object));
      },
      typeid(T).name(),
  };
  return ops;
}

inline bool same_type(const type_ops* a, const type_ops* b) noexcept {
  return a == b || *a->type == *b->type;
}

}  // namespace layercache::detail
