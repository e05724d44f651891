#include "layercache/detail/envelope.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/crc32c.hpp"

namespace layercache::detail {
namespace {

// Offsets from docs/format.md, repeated here on purpose: if the encoder moves a field, these tests
// fail instead of silently agreeing with it.
constexpr std::size_t header_bytes = 51;
constexpr std::size_t flags_offset = 2;
constexpr std::size_t fresh_offset = 3;
constexpr std::size_t stale_offset = 11;
constexpr std::size_t error_offset = 19;
constexpr std::size_t tag_count_offset = 51;

envelope_header sample_header() {
  envelope_header h;
  h.fresh_until_ms = 1'700'000'060'000;
  h.stale_until_ms = 1'700'000'120'000;
  h.error_until_ms = 1'700'003'600'000;
  h.created_ms = 1'700'000'000'000;
  h.version = 42;
  h.type_fingerprint = 0x0123456789ABCDEFull;
  h.codec = codec_id::json;
  return h;
}

void expect_same_header(const envelope_header& a, const envelope_header& b) {
  EXPECT_EQ(a.fresh_until_ms, b.fresh_until_ms);
  EXPECT_EQ(a.stale_until_ms, b.stale_until_ms);
  EXPECT_EQ(a.error_until_ms, b.error_until_ms);
  EXPECT_EQ(a.created_ms, b.created_ms);
  EXPECT_EQ(a.version, b.version);
  EXPECT_EQ(a.type_fingerprint, b.type_fingerprint);
  EXPECT_EQ(a.codec, b.codec);
  EXPECT_EQ(a.negative, b.negative);
}

// Recomputes the trailing checksum so a test can reach the checks that sit behind it.
std::string reseal(std::string bytes) {
  const std::size_t body = bytes.size() - 4;
  const std::uint32_t crc = crc32c_extend_portable(0, std::string_view(bytes).substr(0, body));
  for (int i = 0; i < 4; ++i) bytes[body + i] = static_cast<char>((crc >> (8 * i)) & 0xFFu);
  return bytes;
}

void put_u32(std::string& bytes, std::size_t offset, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) bytes[offset + i] = static_cast<char>((v >> (8 * i)) & 0xFFu);
}

void put_i64(std::string& bytes, std::size_t offset, std::int64_t v) {
  const auto u = static_cast<std::uint64_t>(v);
  for (int i = 0; i < 8; ++i) bytes[offset + i] = static_cast<char>((u >> (8 * i)) & 0xFFu);
}

std::string text_payload(std::size_t n) {
  std::string s;
  s.reserve(n + 64);
  for (std::size_t i = 0; s.size() < n; ++i) {
    s += "{\"id\":" + std::to_string(i % 97) + ",\"name\":\"x\"},";
  }
  s.resize(n);
  return s;
}

std::string random_payload(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng() & 0xFFu);
  return s;
}

void expect_corruption(std::string_view bytes, std::string_view expected_message,
                       std::size_t max_payload_bytes = std::size_t{64} << 20) {
  decoded_envelope out;
  const status s = decode_envelope(bytes, out, max_payload_bytes);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), errc::corruption);
  EXPECT_NE(s.message().find(expected_message), std::string::npos) << s.message();
}

// ---- CRC32C -------------------------------------------------------------------------------------

TEST(Crc32cTest, PortableMatchesStandardCheckValue) {
  EXPECT_EQ(crc32c_extend_portable(0, "123456789"), 0xE3069283u);
}

TEST(Crc32cTest, HardwareMatchesStandardCheckValue) {
  if (!crc32c_hardware_available()) GTEST_SKIP() << "no SSE4.2 on this CPU";
  EXPECT_EQ(crc32c_extend_hardware(0, "123456789"), 0xE3069283u);
}

TEST(Crc32cTest, DispatchedMatchesStandardCheckValue) {
  EXPECT_EQ(crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(crc32c(""), 0u);
}

TEST(Crc32cTest, MatchesRfc3720TestVectors) {
  std::string zeros(32, '\0');
  std::string ones(32, '\xFF');
  std::string ascending(32, '\0');
  std::string descending(32, '\0');
  for (int i = 0; i < 32; ++i) {
    ascending[i] = static_cast<char>(i);
    descending[i] = static_cast<char>(31 - i);
  }
  for (auto* fn : {&crc32c_extend_portable, &crc32c_extend}) {
    EXPECT_EQ(fn(0, zeros), 0x8A9136AAu);
    EXPECT_EQ(fn(0, ones), 0x62A8AB43u);
    EXPECT_EQ(fn(0, ascending), 0x46DD794Eu);
    EXPECT_EQ(fn(0, descending), 0x113FDB5Cu);
  }
}

TEST(Crc32cTest, HardwareAndPortableAgreeOnEveryLengthAndAlignment) {
  if (!crc32c_hardware_available()) GTEST_SKIP() << "no SSE4.2 on this CPU";
  const std::string data = random_payload(600, 7);
  for (std::size_t offset = 0; offset < 8; ++offset) {
    for (std::size_t len = 0; len + offset <= data.size(); ++len) {
      const std::string_view slice = std::string_view(data).substr(offset, len);
      ASSERT_EQ(crc32c_extend_hardware(0x12345678u, slice),
                crc32c_extend_portable(0x12345678u, slice))
          << "offset " << offset << " length " << len;
    }
  }
}

TEST(Crc32cTest, ExtendingEqualsOneShot) {
  const std::string data = random_payload(1000, 3);
  const std::string_view all(data);
  for (std::size_t split : {0u, 1u, 7u, 8u, 9u, 500u, 999u, 1000u}) {
    EXPECT_EQ(crc32c_extend(crc32c(all.substr(0, split)), all.substr(split)), crc32c(all));
    EXPECT_EQ(
        crc32c_extend_portable(crc32c_extend_portable(0, all.substr(0, split)), all.substr(split)),
        crc32c(all));
  }
}

// ---- encoding and round trips -------------------------------------------------------------------

TEST(EnvelopeTest, RoundTripPreservesEveryField) {
  const envelope_header h = sample_header();
  const std::vector<std::string> tags{"user:7", "", std::string("bin\0ary", 7)};
  const std::string payload = "{\"name\":\"ada\"}";
  const std::string bytes = encode_envelope(h, tags, payload);

  decoded_envelope out;
  ASSERT_TRUE(decode_envelope(bytes, out).ok());
  expect_same_header(out.header, h);
  EXPECT_EQ(out.compression, compression_id::none);
  EXPECT_EQ(out.tags, tags);
  EXPECT_EQ(out.payload, payload);
}

TEST(EnvelopeTest, EncodedSizeIsExactlyHeaderTagsPayloadAndChecksum) {
  const std::vector<std::string> tags{"ab", "cde"};
  const std::string bytes = encode_envelope(sample_header(), tags, "payload");
  EXPECT_EQ(bytes.size(), header_bytes + 2 + (2 + 2) + (2 + 3) + 4 + 7 + 4);
}

TEST(EnvelopeTest, MatchesGoldenEncoding) {
  // Pins format version 1 byte for byte: changing it breaks every entry already in Redis and on
  // disk.
  envelope_header h;
  h.fresh_until_ms = 0x0102030405060708;
  h.stale_until_ms = 0x0102030405060709;
  h.error_until_ms = 0x010203040506070A;
  h.created_ms = -2;
  h.version = 0x1122334455667788ull;
  h.type_fingerprint = 0xF0E0D0C0B0A09080ull;
  h.codec = codec_id::msgpack;
  const std::vector<std::string> tags{"t"};
  const std::string bytes = encode_envelope(h, tags, "hi");

  // clang-format off
  const unsigned char expected[] = {
      0xA7, 0x01, 0x02,                                // magic, format version, flags
      0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,  // fresh_until_ms
      0x09, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,  // stale_until_ms
      0x0A, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,  // error_until_ms
      0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,  // created_ms
      0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,  // version
      0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0, 0xE0, 0xF0,  // type_fingerprint
      0x01, 0x00,                                      // tag count
      0x01, 0x00, 't',                                 // tag 0
      0x02, 0x00, 0x00, 0x00, 'h', 'i',                // payload
      0x51, 0x65, 0x8E, 0xAC,                          // crc32c of all the above
  };
  // clang-format on
  ASSERT_EQ(bytes.size(), sizeof expected);
  for (std::size_t i = 0; i < sizeof expected; ++i) {
    EXPECT_EQ(static_cast<unsigned char>(bytes[i]), expected[i]) << "offset " << i;
  }
}

TEST(EnvelopeTest, EmptyTagsAndPayloadRoundTrip) {
  const std::string bytes = encode_envelope(sample_header(), {}, "");
  EXPECT_EQ(bytes.size(), header_bytes + 2 + 4 + 4);
  decoded_envelope out;
  ASSERT_TRUE(decode_envelope(bytes, out).ok());
  EXPECT_TRUE(out.tags.empty());
  EXPECT_TRUE(out.payload.empty());
}

TEST(EnvelopeTest, NegativeEntryRoundTripsWithEmptyPayload) {
  envelope_header h = sample_header();
  h.negative = true;
  const std::string bytes =
      encode_envelope(h, {}, "", {.algorithm = compression_id::zstd, .min_bytes = 0});
  decoded_envelope out;
  ASSERT_TRUE(decode_envelope(bytes, out).ok());
  EXPECT_TRUE(out.header.negative);
  EXPECT_TRUE(out.payload.empty());
  EXPECT_EQ(out.compression, compression_id::none);
}

TEST(EnvelopeTest, ExtremeFieldValuesRoundTrip) {
  envelope_header h;
  h.fresh_until_ms = std::numeric_limits<std::int64_t>::min();
  h.stale_until_ms = std::numeric_limits<std::int64_t>::max();
  h.error_until_ms = std::numeric_limits<std::int64_t>::min();
  h.created_ms = std::numeric_limits<std::int64_t>::min();
  h.version = std::numeric_limits<std::uint64_t>::max();
  h.type_fingerprint = std::numeric_limits<std::uint64_t>::max();
  h.codec = codec_id::custom;
  const std::vector<std::string> tags{std::string(65535, 't')};
  const std::string bytes = encode_envelope(h, tags, "x");
  decoded_envelope out;
  ASSERT_TRUE(decode_envelope(bytes, out).ok());
  expect_same_header(out.header, h);
  EXPECT_EQ(out.tags, tags);
}

TEST(EnvelopeTest, DecodingIntoAReusedResultReplacesItsContents) {
  const std::vector<std::string> three{"a", "b", "c"};
  const std::vector<std::string> one{"z"};
  decoded_envelope out;
  ASSERT_TRUE(decode_envelope(encode_envelope(sample_header(), three, "first payload"), out).ok());
  ASSERT_TRUE(decode_envelope(encode_envelope(sample_header(), one, "2nd"), out).ok());
  EXPECT_EQ(out.tags, one);
  EXPECT_EQ(out.payload, "2nd");
}

// ---- compression --------------------------------------------------------------------------------

TEST(EnvelopeTest, ZstdCompressesAtOrAboveMinBytes) {
  const std::string payload = text_payload(4096);
  const std::string bytes = encode_envelope(sample_header(), {}, payload,
                                            {.algorithm = compression_id::zstd, .min_bytes = 4096});
  EXPECT_EQ((static_cast<unsigned char>(bytes[flags_offset]) >> 3) & 3u, 1u);
  EXPECT_LT(bytes.size(), payload.size() / 2);
  decoded_envelope out;
  ASSERT_TRUE(decode_envelope(bytes, out).ok());
  EXPECT_EQ(out.compression, compression_id::zstd);
  EXPECT_EQ(out.payload, payload);
}

TEST(EnvelopeTest, Lz4CompressesAtOrAboveMinBytes) {
  const std::string payload = text_payload(4096);
  const std::string bytes = encode_envelope(sample_header(), {}, payload,
                                            {.algorithm = compression_id::lz4, .min_bytes = 100});
  EXPECT_EQ((static_cast<unsigned char>(bytes[flags_offset]) >> 3) & 3u, 2u);
  EXPECT_LT(bytes.size(), payload.size() / 2);
  decoded_envelope out;
  ASSERT_TRUE(decode_envelope(bytes, out).ok());
  EXPECT_EQ(out.compression, compression_id::lz4);
  EXPECT_EQ(out.payload, payload);
}

TEST(EnvelopeTest, CompressedEnvelopeRecordsUncompressedThenStoredLength) {
  const std::string payload = text_payload(2000);
  const std::string bytes = encode_envelope(sample_header(), {}, payload,
                                            {.algorithm = compression_id::lz4, .min_bytes = 0});
  const std::size_t at = tag_count_offset + 2;
  std::uint32_t raw = 0;
  std::uint32_t stored = 0;
  for (int i = 3; i >= 0; --i) {
    raw = (raw << 8) | static_cast<unsigned char>(bytes[at + i]);
    stored = (stored << 8) | static_cast<unsigned char>(bytes[at + 4 + i]);
  }
  EXPECT_EQ(raw, payload.size());
  EXPECT_EQ(stored, bytes.size() - at - 8 - 4);
}

TEST(EnvelopeTest, PayloadBelowMinBytesIsStoredUncompressed) {
  const std::string payload = text_payload(1023);
  for (auto algorithm : {compression_id::zstd, compression_id::lz4}) {
    const std::string bytes =
        encode_envelope(sample_header(), {}, payload, {.algorithm = algorithm, .min_bytes = 1024});
    decoded_envelope out;
    ASSERT_TRUE(decode_envelope(bytes, out).ok());
    EXPECT_EQ(out.compression, compression_id::none);
    EXPECT_EQ(out.payload, payload);
  }
}

TEST(EnvelopeTest, IncompressiblePayloadIsStoredUncompressed) {
  const std::string payload = random_payload(8192, 11);
  for (auto algorithm : {compression_id::zstd, compression_id::lz4}) {
    const std::string bytes =
        encode_envelope(sample_header(), {}, payload, {.algorithm = algorithm, .min_bytes = 0});
    EXPECT_EQ(bytes.size(), header_bytes + 2 + 4 + payload.size() + 4);
    decoded_envelope out;
    ASSERT_TRUE(decode_envelope(bytes, out).ok());
    EXPECT_EQ(out.compression, compression_id::none);
    EXPECT_EQ(out.payload, payload);
  }
}

TEST(EnvelopeTest, ZstdLevelFromPolicyIsUsed) {
  const std::string payload =
      text_payload(64 * 1024) + random_payload(256, 5) + text_payload(64 * 1024);
  const std::string fast =
      encode_envelope(sample_header(), {}, payload,
                      {.algorithm = compression_id::zstd, .min_bytes = 0, .level = 1});
  const std::string strong =
      encode_envelope(sample_header(), {}, payload,
                      {.algorithm = compression_id::zstd, .min_bytes = 0, .level = 19});
  EXPECT_NE(fast, strong);
  decoded_envelope out;
  ASSERT_TRUE(decode_envelope(strong, out).ok());
  EXPECT_EQ(out.payload, payload);
}

// ---- what the decoder rejects -------------------------------------------------------------------

TEST(EnvelopeTest, TruncatedBytesAreCorruption) {
  const std::vector<std::string> tags{"tag-one", "two"};
  for (auto algorithm : {compression_id::none, compression_id::zstd}) {
    const std::string bytes = encode_envelope(sample_header(), tags, text_payload(300),
                                              {.algorithm = algorithm, .min_bytes = 0});
    for (std::size_t len = 0; len < bytes.size(); ++len) {
      decoded_envelope out;
      const status s = decode_envelope(std::string_view(bytes).substr(0, len), out);
      ASSERT_EQ(s.code(), errc::corruption) << "prefix of " << len << " bytes";
    }
  }
}

TEST(EnvelopeTest, TruncatedHeaderIsReportedAsSuch) {
  const std::string bytes = encode_envelope(sample_header(), {}, "v");
  expect_corruption(std::string_view(bytes).substr(0, 50), "envelope: truncated header");
  expect_corruption("", "envelope: truncated header");
}

TEST(EnvelopeTest, EverySingleBitFlipIsCorruption) {
  const std::vector<std::string> tags{"t1"};
  const std::string bytes = encode_envelope(sample_header(), tags, "some payload bytes");
  for (std::size_t bit = 0; bit < bytes.size() * 8; ++bit) {
    std::string damaged = bytes;
    damaged[bit / 8] = static_cast<char>(damaged[bit / 8] ^ (1 << (bit % 8)));
    decoded_envelope out;
    ASSERT_EQ(decode_envelope(damaged, out).code(), errc::corruption) << "bit " << bit;
  }
}

TEST(EnvelopeTest, ChecksumMismatchIsCorruption) {
  std::string bytes = encode_envelope(sample_header(), {}, "payload");
  bytes[bytes.size() - 6] ^= 0x01;  // inside the payload
  expect_corruption(bytes, "envelope: checksum mismatch");
}

TEST(EnvelopeTest, BadMagicIsCorruption) {
  std::string bytes = encode_envelope(sample_header(), {}, "payload");
  bytes[0] = 'x';
  expect_corruption(reseal(bytes), "envelope: bad magic 0x78");
}

TEST(EnvelopeTest, UnknownFormatVersionIsCorruption) {
  std::string bytes = encode_envelope(sample_header(), {}, "payload");
  bytes[1] = 2;
  expect_corruption(reseal(bytes), "envelope: unsupported format version 2");
}

TEST(EnvelopeTest, ReservedFlagBitsAreCorruption) {
  for (unsigned bit : {6u, 7u}) {
    std::string bytes = encode_envelope(sample_header(), {}, "payload");
    bytes[flags_offset] = static_cast<char>(bytes[flags_offset] | (1u << bit));
    expect_corruption(reseal(bytes), "envelope: reserved flag bits set");
  }
}

TEST(EnvelopeTest, UnknownCodecIsCorruption) {
  std::string bytes = encode_envelope(sample_header(), {}, "payload");
  bytes[flags_offset] = static_cast<char>((bytes[flags_offset] & ~0x07) | 0x05);
  expect_corruption(reseal(bytes), "envelope: unknown codec 5");
}

TEST(EnvelopeTest, UnknownCompressionIsCorruption) {
  std::string bytes = encode_envelope(sample_header(), {}, "payload");
  bytes[flags_offset] = static_cast<char>(bytes[flags_offset] | 0x18);
  expect_corruption(reseal(bytes), "envelope: unknown compression 3");
}

TEST(EnvelopeTest, StaleUntilBeforeFreshUntilIsCorruption) {
  std::string bytes = encode_envelope(sample_header(), {}, "payload");
  put_i64(bytes, stale_offset, sample_header().fresh_until_ms - 1);
  expect_corruption(reseal(bytes), "envelope: stale_until before fresh_until");
}

TEST(EnvelopeTest, ErrorUntilBeforeFreshUntilIsCorruption) {
  std::string bytes = encode_envelope(sample_header(), {}, "payload");
  put_i64(bytes, error_offset, sample_header().fresh_until_ms - 1);
  expect_corruption(reseal(bytes), "envelope: error_until before fresh_until");
}

TEST(EnvelopeTest, TagCountBeyondTheBytesIsTruncatedTags) {
  const std::vector<std::string> tags{"a"};
  std::string bytes = encode_envelope(sample_header(), tags, "");
  // One tag plus a 4-byte payload length leave 7 bytes: too few for 5 tag length fields.
  bytes[tag_count_offset] = 5;
  expect_corruption(reseal(bytes), "envelope: truncated tags");
  bytes[tag_count_offset] = static_cast<char>(0xFF);
  bytes[tag_count_offset + 1] = static_cast<char>(0xFF);
  expect_corruption(reseal(bytes), "envelope: truncated tags");
}

TEST(EnvelopeTest, TagLengthBeyondTheBytesIsTruncatedTags) {
  const std::vector<std::string> tags{"abc"};
  std::string bytes = encode_envelope(sample_header(), tags, "");
  bytes[tag_count_offset + 2] = 100;
  expect_corruption(reseal(bytes), "envelope: truncated tags");
}

TEST(EnvelopeTest, PayloadLengthBeyondTheBytesIsTruncatedPayload) {
  std::string bytes = encode_envelope(sample_header(), {}, "payload");
  put_u32(bytes, tag_count_offset + 2, 8);
  expect_corruption(reseal(bytes), "envelope: truncated payload");
  put_u32(bytes, tag_count_offset + 2, 0xFFFFFFFFu);
  expect_corruption(reseal(bytes), "envelope: truncated payload");
}

TEST(EnvelopeTest, BytesAfterThePayloadAreCorruption) {
  std::string bytes = encode_envelope(sample_header(), {}, "payload");
  bytes.insert(bytes.size() - 4, "!");
  expect_corruption(reseal(bytes), "envelope: trailing bytes after payload");
}

TEST(EnvelopeTest, MissingPayloadLengthIsCorruption) {
  const std::vector<std::string> tags{"abcd"};
  std::string bytes = encode_envelope(sample_header(), tags, "");
  // Drop the payload length field: the tag now runs into the checksum area.
  bytes.erase(bytes.size() - 8, 4);
  expect_corruption(reseal(bytes), "envelope: truncated payload length");
}

TEST(EnvelopeTest, NegativeEntryWithPayloadIsCorruption) {
  std::string bytes = encode_envelope(sample_header(), {}, "payload");
  bytes[flags_offset] = static_cast<char>(bytes[flags_offset] | 0x20);
  expect_corruption(reseal(bytes), "envelope: negative entry carries a payload");
}

TEST(EnvelopeTest, CompressedNegativeEntryIsCorruption) {
  envelope_header h = sample_header();
  h.negative = true;
  std::string bytes = encode_envelope(h, {}, "");
  bytes[flags_offset] = static_cast<char>(bytes[flags_offset] | 0x08);
  expect_corruption(reseal(bytes), "envelope: negative entry is marked compressed");
}

TEST(EnvelopeTest, UncompressedPayloadOverTheLimitIsRejected) {
  const std::string bytes = encode_envelope(sample_header(), {}, std::string(2000, 'x'));
  expect_corruption(bytes, "envelope: payload of 2000 bytes exceeds the limit of 1999", 1999);
  decoded_envelope out;
  EXPECT_TRUE(decode_envelope(bytes, out, 2000).ok());
}

TEST(EnvelopeTest, DecompressionBombIsRejectedBeforeDecompressing) {
  const std::string zeros(std::size_t{8} << 20, '\0');
  for (auto algorithm : {compression_id::zstd, compression_id::lz4}) {
    const std::string bytes =
        encode_envelope(sample_header(), {}, zeros, {.algorithm = algorithm, .min_bytes = 0});
    ASSERT_LT(bytes.size(), std::size_t{64} << 10);
    expect_corruption(bytes, "exceeds the limit of 1048576", std::size_t{1} << 20);
  }
}

TEST(EnvelopeTest, RecordedSizeDifferentFromZstdFrameIsCorruption) {
  const std::string payload = text_payload(5000);
  std::string bytes = encode_envelope(sample_header(), {}, payload,
                                      {.algorithm = compression_id::zstd, .min_bytes = 0});
  put_u32(bytes, tag_count_offset + 2, 4999);
  expect_corruption(reseal(bytes), "differs from recorded size");
}

TEST(EnvelopeTest, RecordedSizeDifferentFromLz4OutputIsCorruption) {
  const std::string payload = text_payload(5000);
  for (std::uint32_t recorded : {4999u, 5001u}) {
    std::string bytes = encode_envelope(sample_header(), {}, payload,
                                        {.algorithm = compression_id::lz4, .min_bytes = 0});
    put_u32(bytes, tag_count_offset + 2, recorded);
    decoded_envelope out;
    EXPECT_EQ(decode_envelope(reseal(bytes), out).code(), errc::corruption) << recorded;
  }
}

TEST(EnvelopeTest, DamagedCompressedStreamIsCorruptionNotACrash) {
  const std::string payload = text_payload(5000);
  for (auto algorithm : {compression_id::zstd, compression_id::lz4}) {
    const std::string clean =
        encode_envelope(sample_header(), {}, payload, {.algorithm = algorithm, .min_bytes = 0});
    const std::size_t stream_start = tag_count_offset + 2 + 8;
    std::mt19937 rng(99);
    int rejected = 0;
    for (int round = 0; round < 300; ++round) {
      std::string bytes = clean;
      const std::size_t at = stream_start + rng() % (bytes.size() - stream_start - 4);
      bytes[at] = static_cast<char>(rng() & 0xFFu);
      decoded_envelope out;
      const status s = decode_envelope(reseal(bytes), out);
      // lz4 carries no checksum of its own, so a flipped literal can still decode; it must then
      // decode to exactly the recorded size.
      if (s.ok()) {
        EXPECT_EQ(out.payload.size(), payload.size());
      } else {
        EXPECT_EQ(s.code(), errc::corruption);
        ++rejected;
      }
    }
    EXPECT_GT(rejected, 0);
  }
}

TEST(EnvelopeTest, ZstdStreamWithAppendedFrameIsCorruption) {
  const std::string payload = text_payload(5000);
  std::string bytes = encode_envelope(sample_header(), {}, payload,
                                      {.algorithm = compression_id::zstd, .min_bytes = 0});
  const std::size_t at = tag_count_offset + 2;
  std::uint32_t stored = 0;
  for (int i = 3; i >= 0; --i)
    stored = (stored << 8) | static_cast<unsigned char>(bytes[at + 4 + i]);
  const std::string frame = bytes.substr(at + 8, stored);
  bytes.insert(bytes.size() - 4, frame);
  put_u32(bytes, at + 4, stored * 2);
  expect_corruption(reseal(bytes), "envelope: zstd frame does not span the stored payload");
}

TEST(EnvelopeTest, RandomBytesAreRejectedWithoutCrashing) {
  std::mt19937 rng(1234);
  for (int round = 0; round < 20000; ++round) {
    std::string bytes = random_payload(rng() % 200, static_cast<unsigned>(round));
    if (round % 2 == 0 && bytes.size() >= 3) {
      bytes[0] = static_cast<char>(envelope_magic);
      bytes[1] = static_cast<char>(envelope_version);
      bytes[2] = static_cast<char>(bytes[2] & 0x1F);
    }
    if (round % 4 == 0 && bytes.size() >= 4) bytes = reseal(bytes);
    decoded_envelope out;
    const status s = decode_envelope(bytes, out);
    if (!s.ok()) {
      ASSERT_EQ(s.code(), errc::corruption);
    }
  }
}

// ---- encoder preconditions ----------------------------------------------------------------------

TEST(EnvelopeTest, EncodeThrowsForTagLongerThan65535Bytes) {
  const std::vector<std::string> tags{std::string(65536, 't')};
  EXPECT_THROW((void)encode_envelope(sample_header(), tags, ""), std::length_error);
}

TEST(EnvelopeTest, EncodeThrowsForMoreThan65535Tags) {
  const std::vector<std::string> tags(65536, "t");
  EXPECT_THROW((void)encode_envelope(sample_header(), tags, ""), std::length_error);
  const std::vector<std::string> max_tags(65535, "t");
  decoded_envelope out;
  ASSERT_TRUE(decode_envelope(encode_envelope(sample_header(), max_tags, ""), out).ok());
  EXPECT_EQ(out.tags.size(), 65535u);
}

TEST(EnvelopeTest, EncodeRejectsHeadersTheDecoderWouldReject) {
  envelope_header h = sample_header();
  h.stale_until_ms = h.fresh_until_ms - 1;
  EXPECT_THROW((void)encode_envelope(h, {}, ""), std::invalid_argument);
  h = sample_header();
  h.error_until_ms = h.fresh_until_ms - 1;
  EXPECT_THROW((void)encode_envelope(h, {}, ""), std::invalid_argument);
  h = sample_header();
  h.negative = true;
  EXPECT_THROW((void)encode_envelope(h, {}, "not empty"), std::invalid_argument);
  h = sample_header();
  h.codec = static_cast<codec_id>(4);
  EXPECT_THROW((void)encode_envelope(h, {}, ""), std::invalid_argument);
}

// ---- peek ---------------------------------------------------------------------------------------

TEST(EnvelopeTest, PeekReadsTheHeaderWithoutVerifyingTheChecksum) {
  const std::vector<std::string> tags{"t"};
  std::string bytes = encode_envelope(sample_header(), tags, "payload");
  bytes[bytes.size() - 6] ^= 0x40;
  envelope_header h;
  ASSERT_TRUE(peek_envelope_header(bytes, h).ok());
  expect_same_header(h, sample_header());
  ASSERT_TRUE(peek_envelope_header(std::string_view(bytes).substr(0, header_bytes), h).ok());
}

TEST(EnvelopeTest, PeekRejectsWhatTheHeaderAloneProvesCorrupt) {
  const std::string good = encode_envelope(sample_header(), {}, "payload");
  envelope_header h;
  EXPECT_EQ(peek_envelope_header(std::string_view(good).substr(0, header_bytes - 1), h).code(),
            errc::corruption);
  std::string bytes = good;
  bytes[0] = 0;
  EXPECT_EQ(peek_envelope_header(bytes, h).code(), errc::corruption);
  bytes = good;
  bytes[1] = 9;
  EXPECT_EQ(peek_envelope_header(bytes, h).code(), errc::corruption);
  bytes = good;
  bytes[flags_offset] = static_cast<char>(0x80);
  EXPECT_EQ(peek_envelope_header(bytes, h).code(), errc::corruption);
  bytes = good;
  put_i64(bytes, fresh_offset, std::numeric_limits<std::int64_t>::max());
  EXPECT_EQ(peek_envelope_header(bytes, h).code(), errc::corruption);
}

}  // namespace
}  // namespace layercache::detail
