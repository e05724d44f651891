// codec_test.cpp — the codec<T> customisation point: identity for strings and byte vectors,
// MessagePack by default for nlohmann-convertible types, JSON by opt-in, user codecs, and the
// compile-time rejection of a type without one. Round trips go through
// tests/unit/test_byte_layer.hpp with a fresh memory layer, so the value really is encoded and
// decoded.
#include "layercache/codec.hpp"

#include <gtest/gtest.h>

#include <cstddef>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "layercache/cache_stack.hpp"
#include "layercache/detail/envelope.hpp"
#include "layercache/detail/type_ops.hpp"
#include "support/fake_clock.hpp"
#include "test_byte_layer.hpp"

namespace codec_test {

// MessagePack by default (it has to_json/from_json).
struct user {
  std::string name;
  int age = 0;
  std::vector<std::string> tags;
  bool operator==(const user&) const = default;
};
void to_json(nlohmann::json& j, const user& u) {
  j = nlohmann::json{{"name", u.name}, {"age", u.age}, {"tags", u.tags}};
}
void from_json(const nlohmann::json& j, user& u) {
  j.at("name").get_to(u.name);
  j.at("age").get_to(u.age);
  j.at("tags").get_to(u.tags);
}

// Opts into JSON text.
struct config {
  std::string mode;
  double ratio = 0;
  bool operator==(const config&) const = default;
};
void to_json(nlohmann::json& j, const config& c) {
  j = nlohmann::json{{"mode", c.mode}, {"ratio", c.ratio}};
}
void from_json(const nlohmann::json& j, config& c) {
  j.at("mode").get_to(c.mode);
  j.at("ratio").get_to(c.ratio);
}

// A user codec: "x,y" text, with a stable type name.
struct point {
  int x = 0;
  int y = 0;
  bool operator==(const point&) const = default;
};

// No codec at all.
struct no_codec_type {
  int value = 0;
};

}  // namespace codec_test

template <>
struct layercache::codec<codec_test::config> : layercache::json_codec<codec_test::config> {};

template <>
struct layercache::codec<codec_test::point> {
  static constexpr std::string_view type_name = "codec_test.point";
  static void encode(const codec_test::point& p, std::string& out) {
    out += std::to_string(p.x) + "," + std::to_string(p.y);
  }
  static codec_test::point decode(std::string_view bytes) {
    const auto comma = bytes.find(',');
    if (comma == std::string_view::npos) throw std::invalid_argument("point: no comma");
    return {std::stoi(std::string(bytes.substr(0, comma))),
            std::stoi(std::string(bytes.substr(comma + 1)))};
  }
};

// The compile-time contract: a type without a codec is rejected (cache_stack's static_assert
// turns this into a readable message at the get/set call; tests/compile_fail checks that text).
static_assert(!layercache::has_codec<codec_test::no_codec_type>);
static_assert(layercache::has_codec<codec_test::user>);
static_assert(layercache::has_codec<codec_test::config>);
static_assert(layercache::has_codec<codec_test::point>);
static_assert(layercache::has_codec<std::string>);
static_assert(layercache::has_codec<std::vector<std::byte>>);
static_assert(layercache::has_codec<int>);
static_assert(layercache::has_codec<std::map<std::string, std::vector<int>>>);

namespace layercache {
namespace {

using codec_test::config;
using codec_test::point;
using codec_test::user;

// Writes `value` through one stack and reads it back through another with an empty memory layer,
// so the read decodes the bytes; returns the decoded value and the envelope as stored.
template <class T>
struct round_trip_result {
  std::shared_ptr<const T> value;
  detail::decoded_envelope stored;
};

template <class T>
round_trip_result<T> round_trip(const T& value, test::test_byte_layer_options layer_options = {}) {
  auto clock = std::make_shared<test::fake_clock>();
  layer_options.clock = clock;
  auto l2 = test::test_byte_layer::create(layer_options);
  {
    cache_stack writer({memory_layer::create({.clock = clock}), l2}, {.clock = clock});
    EXPECT_TRUE(writer.set<T>("k", value).ok());
  }
  round_trip_result<T> out;
  const auto bytes = l2->stored("k");
  EXPECT_TRUE(bytes.has_value());
  if (bytes) {
    EXPECT_TRUE(detail::decode_envelope(*bytes, out.stored).ok());
  }
  cache_stack reader({memory_layer::create({.clock = clock}), l2}, {.clock = clock});
  out.value = reader.get<T>("k", []() -> T { throw std::logic_error("not expected to fetch"); });
  EXPECT_EQ(reader.metrics().layers[1].hits, 1u) << "the read was not answered by the byte layer";
  return out;
}

template <class Bytes>
void expect_identity(const Bytes& value) {
  std::string out = "prefix:";
  codec<Bytes>::encode(value, out);
  ASSERT_EQ(out.size(), 7 + value.size());
  const std::string raw(
      value.size() == 0 ? std::string()
                        : std::string(reinterpret_cast<const char*>(value.data()), value.size()));
  EXPECT_EQ(out.substr(7), raw) << "encode must append the bytes themselves";
  EXPECT_EQ(codec<Bytes>::decode(std::string_view(out).substr(7)), value);
  EXPECT_EQ(detail::ops_of<Bytes>().codec, detail::codec_id::identity);

  auto r = round_trip(value);
  ASSERT_NE(r.value, nullptr);
  EXPECT_EQ(*r.value, value);
  EXPECT_EQ(r.stored.header.codec, detail::codec_id::identity);
  EXPECT_EQ(r.stored.payload, raw) << "identity payload is not the bytes themselves";
}

TEST(CodecTest, IdentityCodecStoresStringsVerbatim) {
  expect_identity(std::string("hello"));
  expect_identity(std::string("with\0nul and \xff bytes", 21));
  expect_identity(std::string());
}

TEST(CodecTest, IdentityCodecStoresByteVectorsVerbatim) {
  expect_identity(std::vector<char>{'a', '\0', static_cast<char>(0xFF)});
  expect_identity(std::vector<unsigned char>{0, 1, 2, 254, 255});
  expect_identity(std::vector<std::byte>{std::byte{0}, std::byte{0x80}, std::byte{0xFF}});
  expect_identity(std::vector<unsigned char>{});
}

TEST(CodecTest, MessagePackIsTheDefaultForJsonConvertibleTypes) {
  static_assert(std::is_base_of_v<msgpack_codec<user>, codec<user>>);
  const user u{"ada", 36, {"admin", "ops"}};
  auto r = round_trip(u);
  ASSERT_NE(r.value, nullptr);
  EXPECT_EQ(*r.value, u);
  EXPECT_EQ(r.stored.header.codec, detail::codec_id::msgpack);
  std::string expected;
  nlohmann::json::to_msgpack(nlohmann::json(u), expected);
  EXPECT_EQ(r.stored.payload, expected);
}

TEST(CodecTest, ArithmeticAndStandardContainersUseMessagePack) {
  EXPECT_EQ(*round_trip(42).value, 42);
  EXPECT_EQ(*round_trip(-1.5).value, -1.5);
  const std::vector<int> v{1, 2, 3};
  EXPECT_EQ(*round_trip(v).value, v);
  const std::map<std::string, std::vector<int>> m{{"a", {1}}, {"b", {2, 3}}};
  auto r = round_trip(m);
  EXPECT_EQ(*r.value, m);
  EXPECT_EQ(r.stored.header.codec, detail::codec_id::msgpack);
}

TEST(CodecTest, JsonCodecOptInStoresJsonText) {
  const config c{"fast", 0.25};
  auto r = round_trip(c);
  ASSERT_NE(r.value, nullptr);
  EXPECT_EQ(*r.value, c);
  EXPECT_EQ(r.stored.header.codec, detail::codec_id::json);
  const auto parsed = nlohmann::json::parse(r.stored.payload);  // readable text, not binary
  EXPECT_EQ(parsed.at("mode"), "fast");
  EXPECT_EQ(parsed.at("ratio"), 0.25);
}

TEST(CodecTest, CustomCodecSpecialisationIsUsed) {
  const point p{3, -4};
  auto r = round_trip(p);
  ASSERT_NE(r.value, nullptr);
  EXPECT_EQ(*r.value, p);
  EXPECT_EQ(r.stored.payload, "3,-4");
  EXPECT_EQ(r.stored.header.codec, detail::codec_id::custom);
  // The declared type_name, not the compiler's, identifies the type across processes.
  EXPECT_EQ(r.stored.header.type_fingerprint, detail::fnv1a64("codec_test.point"));
}

TEST(CodecTest, CompressedPayloadsRoundTripThroughAByteLayer) {
  const std::string big(64 * 1024, 'z');
  for (auto algo : {compression::zstd, compression::lz4}) {
    auto r = round_trip(big, {.compress = algo, .compress_min_bytes = 1024});
    ASSERT_NE(r.value, nullptr);
    EXPECT_EQ(*r.value, big);
    EXPECT_NE(r.stored.compression, detail::compression_id::none)
        << "a 64 KiB run of one byte was stored uncompressed";
    EXPECT_EQ(r.stored.payload, big);
  }
  // Below the threshold nothing is compressed.
  auto small = round_trip(std::string(100, 'z'),
                          {.compress = compression::zstd, .compress_min_bytes = 1024});
  EXPECT_EQ(small.stored.compression, detail::compression_id::none);
}

}  // namespace
}  // namespace layercache
