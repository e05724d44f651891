// libFuzzer target for the envelope decoder (docs/format.md).
//
// Properties checked on every input, beyond "no crash, no sanitizer report":
// - decode either succeeds or reports errc::corruption;
// - the input is also tried with its trailing checksum recomputed: random bytes almost never carry
//   a valid CRC, and without this the fuzzer would rarely get past it into the parser;
// - peek_envelope_header rejects nothing that decode accepts and reads the same header;
// - a decoded envelope re-encodes and decodes again to the same fields, and an uncompressed one
//   re-encodes to exactly the input bytes (the uncompressed encoding is canonical);
// - the SSE4.2 and portable CRC32C implementations agree.
//
// `envelope_fuzz --write-seeds=DIR` writes a seed corpus of valid envelopes and exits (used by
// tests/fuzz/run.sh, so the seeds always match the current encoder).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "core/crc32c.hpp"
#include "layercache/detail/envelope.hpp"

namespace layercache::detail {
namespace {

// Large enough for every seed, small enough that bogus recorded sizes do not slow the fuzzer down.
constexpr std::size_t fuzz_max_payload_bytes = std::size_t{1} << 20;

void require(bool condition, const char* what) {
  if (condition) return;
  std::fprintf(stderr, "envelope_fuzz: property violated: %s\n", what);
  std::abort();
}

bool same_header(const envelope_header& a, const envelope_header& b) {
  return a.fresh_until_ms == b.fresh_until_ms && a.stale_until_ms == b.stale_until_ms &&
         a.error_until_ms == b.error_until_ms && a.created_ms == b.created_ms &&
         a.version == b.version && a.type_fingerprint == b.type_fingerprint && a.codec == b.codec &&
         a.negative == b.negative;
}

void check_input(std::string_view bytes) {
  decoded_envelope first;
  const status decoded = decode_envelope(bytes, first, fuzz_max_payload_bytes);
  envelope_header peeked;
  const status peek = peek_envelope_header(bytes, peeked);
  if (!decoded.ok()) {
    require(decoded.code() == errc::corruption, "decode failed with a code other than corruption");
    return;
  }
  require(peek.ok(), "peek rejected an envelope that decode accepted");
  require(same_header(peeked, first.header), "peek and decode read different headers");
  require(first.payload.size() <= fuzz_max_payload_bytes, "payload exceeds max_payload_bytes");
  require(!first.header.negative || first.payload.empty(), "negative entry with a payload");

  const compression_policy policy{.algorithm = first.compression, .min_bytes = 0, .level = 1};
  const std::string again = encode_envelope(first.header, first.tags, first.payload, policy);
  if (first.compression == compression_id::none) {
    require(again == bytes, "uncompressed envelope did not re-encode to the same bytes");
  }
  decoded_envelope second;
  require(decode_envelope(again, second, fuzz_max_payload_bytes).ok(),
          "re-encoded envelope failed to decode");
  require(same_header(first.header, second.header), "header changed across a round trip");
  require(first.tags == second.tags, "tags changed across a round trip");
  require(first.payload == second.payload, "payload changed across a round trip");
}

std::string with_valid_checksum(std::string_view bytes) {
  std::string copy(bytes);
  const std::size_t body = copy.size() - 4;
  const std::uint32_t crc = crc32c(std::string_view(copy).substr(0, body));
  for (int i = 0; i < 4; ++i) copy[body + i] = static_cast<char>((crc >> (8 * i)) & 0xFFu);
  return copy;
}

std::vector<std::string> seed_envelopes() {
  envelope_header h;
  h.fresh_until_ms = 1'700'000'060'000;
  h.stale_until_ms = 1'700'000'120'000;
  h.error_until_ms = 1'700'003'600'000;
  h.created_ms = 1'700'000'000'000;
  h.version = 7;
  h.type_fingerprint = 0x9E3779B97F4A7C15ull;
  std::string text;
  for (int i = 0; text.size() < 3000; ++i) text += "{\"id\":" + std::to_string(i % 13) + "},";
  const std::vector<std::string> no_tags;
  const std::vector<std::string> tags{"user:1", "", "team:42"};

  std::vector<std::string> seeds;
  seeds.push_back(encode_envelope(h, no_tags, ""));
  seeds.push_back(encode_envelope(h, tags, "hello"));
  h.codec = codec_id::json;
  seeds.push_back(encode_envelope(h, tags, text));
  seeds.push_back(
      encode_envelope(h, tags, text, {.algorithm = compression_id::zstd, .min_bytes = 0}));
  h.codec = codec_id::msgpack;
  seeds.push_back(
      encode_envelope(h, no_tags, text, {.algorithm = compression_id::lz4, .min_bytes = 0}));
  h.codec = codec_id::custom;
  h.negative = true;
  seeds.push_back(encode_envelope(h, tags, ""));
  return seeds;
}

void write_seeds(const std::string& dir) {
  int index = 0;
  for (const std::string& seed : seed_envelopes()) {
    const std::string path = dir + "/seed_" + std::to_string(index++);
    std::ofstream file(path, std::ios::binary);
    file.write(seed.data(), static_cast<std::streamsize>(seed.size()));
    if (!file) {
      std::fprintf(stderr, "envelope_fuzz: cannot write %s\n", path.c_str());
      std::exit(1);
    }
  }
  std::fprintf(stderr, "envelope_fuzz: wrote %d seeds to %s\n", index, dir.c_str());
}

}  // namespace
}  // namespace layercache::detail

// libFuzzer calls this before parsing its own flags, so our flag never reaches it.
extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  constexpr std::string_view flag = "--write-seeds=";
  for (int i = 1; i < *argc; ++i) {
    const std::string_view arg = (*argv)[i];
    if (arg.substr(0, flag.size()) == flag) {
      layercache::detail::write_seeds(std::string(arg.substr(flag.size())));
      std::exit(0);
    }
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace layercache::detail;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  if (crc32c_hardware_available()) {
    layercache::detail::require(
        crc32c_extend_hardware(0, bytes) == crc32c_extend_portable(0, bytes),
        "hardware and portable CRC32C disagree");
  }
  check_input(bytes);
  if (size >= 4) check_input(with_valid_checksum(bytes));
  return 0;
}
