// detail/envelope.hpp — encoding and decoding of the envelope stored in byte layers.
//
// Not API: used by cache_stack's templates and by byte layers' tests. The format is specified byte
// by byte in docs/format.md; decode_envelope() validates every length and field and never reads out
// of bounds, whatever the input (it is fuzzed: tests/fuzz/envelope_fuzz.cpp).
//
// Thread-safety: free functions without shared state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "layercache/clock.hpp"
#include "layercache/status.hpp"

namespace layercache::detail {

inline constexpr std::uint8_t envelope_magic = 0xA7;
inline constexpr std::uint8_t envelope_version = 1;

enum class codec_id : std::uint8_t { identity = 0, json = 1, msgpack = 2, custom = 3 };
enum class compression_id : std::uint8_t { none = 0, zstd = 1, lz4 = 2 };

struct envelope_header {
  unix_ms fresh_until_ms = 0;  // serve without question until then
  unix_ms stale_until_ms = 0;  // may be served stale (while revalidating) until then; >= fresh
  unix_ms error_until_ms = 0;  // may be served if the fetcher fails until then; >= fresh
  unix_ms created_ms = 0;
  std::uint64_t version = 0;           // monotonic per key (distributed coherence)
  std::uint64_t type_fingerprint = 0;  // detail::type_fingerprint<T>(); 0 = unknown
  codec_id codec = codec_id::identity;
  bool negative = false;  // a cached "not found": payload is empty
};

// How encode_envelope compresses the payload.
struct compression_policy {
  compression_id algorithm = compression_id::none;
  std::size_t min_bytes = 1024;  // payloads shorter than this are stored uncompressed
  int level = 1;                 // zstd level (ignored by lz4)
};

// Encodes an envelope. Compresses the payload when the policy says so and it helps (a payload that
// does not shrink is stored uncompressed). Never fails for valid input; throws std::length_error
// for a tag longer than 65535 bytes, more than 65535 tags or a payload of 4 GiB or more, and
// std::invalid_argument for a header the decoder would reject (stale/error before fresh, a negative
// entry with a payload, an unknown codec or compression).
std::string encode_envelope(const envelope_header& header, std::span<const std::string> tags,
                            std::string_view payload, const compression_policy& policy = {});

struct decoded_envelope {
  envelope_header header;
  compression_id compression = compression_id::none;  // as stored
  std::vector<std::string> tags;
  std::string payload;  // decompressed
};

// Decodes and validates `bytes`. On failure returns errc::corruption with the reason and leaves
// `out` unspecified. Rejects payloads that decompress to more than `max_payload_bytes`.
status decode_envelope(std::string_view bytes, decoded_envelope& out,
                       std::size_t max_payload_bytes = std::size_t{64} << 20);

// Reads only the fixed header (no checksum verification, no payload copy): cheap expiry checks.
status peek_envelope_header(std::string_view bytes, envelope_header& out);

}  // namespace layercache::detail
