// codec.hpp — how values are turned into bytes for Redis and disk, and back.
//
// `codec<T>` is a customisation point. Provided:
//   * identity for std::string, std::vector<char>, std::vector<unsigned char>,
//   std::vector<std::byte>
//   * MessagePack (default) for every type nlohmann::json can convert (to_json/from_json,
//   arithmetic
//     types, standard containers of those). Opt into JSON text instead with
//         template <> struct layercache::codec<my_type> : layercache::json_codec<my_type> {};
//   * your own: specialise codec<T> with
//         static void encode(const T& value, std::string& out);   // append bytes to out
//         static T decode(std::string_view bytes);                 // throw on malformed input
//     (protobuf, flatbuffers, ...). Optionally `static constexpr std::string_view type_name =
//     "..."`: a stable name recorded in the envelope so a key read as the wrong type is detected
//     across processes (default: the compiler's type name).
// A type with no codec fails to compile at the get/set call with a message naming the fix.
// Memory-only stacks never call the codec, but still require one: a value must be able to move to a
// byte layer when one is added to the stack.
//
// `weigher<T>` says how many bytes a value holds, for memory_layer_options::max_bytes. The default
// counts sizeof(T) plus the heap buffer of std::string and the element storage of containers with
// capacity() (not heap data owned by the elements); specialise it for types with other heap data:
//     template <> struct layercache::weigher<user> {
//       static std::size_t weigh(const user& u) { return sizeof(user) + u.name.capacity(); }
//     };
//
// Thread-safety: codecs and weighers must be stateless (called concurrently).
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "layercache/detail/envelope.hpp"

namespace layercache {

// Primary template: no codec. The members exist only so the readable static_assert in
// cache_stack fires instead of a wall of template errors.
template <class T, class Enable = void>
struct codec {
  static constexpr bool is_defined = false;
};

namespace detail {

template <class Bytes>
struct identity_codec {
  static constexpr bool is_defined = true;
  static constexpr codec_id id = codec_id::identity;
  static void encode(const Bytes& value, std::string& out) {
    out.append(reinterpret_cast<const char*>(value.data()), value.size());
  }
  static Bytes decode(std::string_view bytes) {
    const auto* first = reinterpret_cast<const typename Bytes::value_type*>(bytes.data());
    return Bytes(first, first + bytes.size());
  }
};

template <class T>
concept json_convertible = requires(const T& value, nlohmann::json& j) {
  {nlohmann::json(value)};
  {j.get<T>()};
};

}  // namespace detail

template <>
struct codec<std::string> : detail::identity_codec<std::string> {};
template <>
struct codec<std::vector<char>> : detail::identity_codec<std::vector<char>> {};
template <>
struct codec<std::vector<unsigned char>> : detail::identity_codec<std::vector<unsigned char>> {};
template <>
struct codec<std::vector<std::byte>> : detail::identity_codec<std::vector<std::byte>> {};

// MessagePack through nlohmann::json: compact and fast to parse.
template <class T>
struct msgpack_codec {
  static constexpr bool is_defined = true;
  static constexpr detail::codec_id id = detail::codec_id::msgpack;
  static void encode(const T& value, std::string& out) {
    nlohmann::json::to_msgpack(nlohmann::json(value), out);
  }
  static T decode(std::string_view bytes) {
    return nlohmann::json::from_msgpack(bytes.begin(), bytes.end()).template get<T>();
  }
};

// JSON text through nlohmann::json: readable with redis-cli.
template <class T>
struct json_codec {
  static constexpr bool is_defined = true;
  static constexpr detail::codec_id id = detail::codec_id::json;
  static void encode(const T& value, std::string& out) { out += nlohmann::json(value).dump(); }
  static T decode(std::string_view bytes) { return nlohmann::json::parse(bytes).template get<T>(); }
};

template <class T>
struct codec<T, std::enable_if_t<detail::json_convertible<T> && !std::is_same_v<T, std::string> &&
                                 !std::is_same_v<T, std::vector<char>> &&
                                 !std::is_same_v<T, std::vector<unsigned char>> &&
                                 !std::is_same_v<T, std::vector<std::byte>>>> : msgpack_codec<T> {};

// True when codec<T> can encode and decode T.
template <class T>
concept has_codec = requires(const T& value, std::string& out, std::string_view in) {
  codec<T>::encode(value, out);
  { codec<T>::decode(in) } -> std::convertible_to<T>;
};

// Bytes a value occupies, for max_bytes accounting.
template <class T>
struct weigher {
  static std::size_t weigh(const T& value) {
    if constexpr (std::is_same_v<T, std::string>) {
      // Short strings live inside the object (SSO); only a heap buffer adds bytes.
      return sizeof(T) + (value.capacity() > 15 ? value.capacity() + 1 : 0);
    } else if constexpr (requires {
                           value.capacity();
                           typename T::value_type;
                         }) {
      // Element storage only: heap data owned by the elements needs a weigher specialisation.
      return sizeof(T) + value.capacity() * sizeof(typename T::value_type);
    } else {
      return sizeof(T);
    }
  }
};

}  // namespace layercache
