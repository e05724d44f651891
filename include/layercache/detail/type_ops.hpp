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
  // type_fingerprint<T>(): equal in every build that gives T the same type_name (codec.hpp).
  std::uint64_t fingerprint;
  codec_id codec;
  // Decodes a payload into a new immutable object; throws on malformed bytes.
  std::shared_ptr<const void> (*decode)(std::string_view payload);
  // Appends the encoded object to out.
  void (*encode)(const void* object, std::string& out);
  std::size_t (*weigh)(const void* object);
  const char* name;  // the compiler's name of T, for error messages
};

constexpr std::uint64_t fnv1a64(std::string_view s) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

// The name T is stored under: type_name<T> (or T::layercache_type_name), else the codec's
// type_name, else the compiler's name for T (which differs between compilers and changes with a
// rename: codec.hpp says how to give a type its own).
template <class T>
std::string_view type_name_of() {
  if constexpr (requires { type_name<T>::value; }) {
    static_assert(!std::string_view(type_name<T>::value).empty(),
                  "layercache::type_name<T>::value must not be empty");
    return type_name<T>::value;
  } else if constexpr (requires { codec<T>::type_name; }) {
    static_assert(!std::string_view(codec<T>::type_name).empty(),
                  "layercache::codec<T>::type_name must not be empty");
    return codec<T>::type_name;
  } else {
    return typeid(T).name();
  }
}

// The fingerprint recorded in the envelope (docs/format.md): FNV-1a 64 of type_name_of<T>(). For
// a named type it depends on the name alone, never on the compiler or the build.
template <class T>
std::uint64_t type_fingerprint() {
  return fnv1a64(type_name_of<T>());
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
      type_fingerprint<T>(),
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
