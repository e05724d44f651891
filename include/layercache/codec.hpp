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
//     (protobuf, flatbuffers, ...). A codec may also declare the type's name
//     (`static constexpr std::string_view type_name = "...";`); `type_name<T>` below wins over it.
// A type with no codec fails to compile at the get/set call with a message naming the fix.
// Memory-only stacks never call the codec, but still require one: a value must be able to move to a
// byte layer when one is added to the stack.
//
// `type_name<T>` names the type in Redis and on disk. The envelope of every stored value records a
// fingerprint of that name (a 64-bit FNV-1a hash of it, docs/format.md); a reader whose type has
// another name, or whose codec no longer decodes the payload (say a new field the stored value
// lacks), treats the entry as a miss: it is counted (metrics_snapshot::schema_misses), reported
// (event_type::schema_mismatch), fetched again and overwritten. So a rolling deploy costs misses
// where the old and the new build disagree, never an exception. Give a type a name of your own,
// so that renaming it, moving it to another namespace or building with another compiler keeps its
// cached values readable:
//     struct user {                       // renamed from user_record: cached values still hit
//       static constexpr std::string_view layercache_type_name = "user";
//       std::string name;
//       int age = 0;
//     };
// or, for a type you cannot edit, specialise the trait (at namespace scope):
//     template <> struct layercache::type_name<vendor::order> {
//       static constexpr std::string_view value = "order.v1";
//     };
// Change the name (e.g. "user.v2") when the new layout must not be read from old entries even
// where the codec would accept them. Without a name the compiler's type name is used, which
// changes with a rename and may differ between compilers. A name must belong to one type only: two
// types sharing one read each other's entries wherever the codec accepts the bytes. Within one
// process a key read as another type than L1 holds still throws type_mismatch_error: that is
// misuse, not a deploy.
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

#include <concepts>
#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "layercache/detail/envelope.hpp"

namespace layercache {

// The stable name of T in byte layers (see above). Primary template: none given, unless T has a
// static member `layercache_type_name`.
template <class T>
struct type_name {};

template <class T>
requires requires {
  { T::layercache_type_name } -> std::convertible_to<std::string_view>;
}
struct type_name<T> {
  static constexpr std::string_view value = T::layercache_type_name;
};

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
