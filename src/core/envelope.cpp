// The envelope layout is specified byte by byte in docs/format.md; the offsets below must match it
// (tests/unit/envelope_test.cpp pins them with a golden encoding).
#include "layercache/detail/envelope.hpp"

#include <lz4.h>
#include <zstd.h>

#include <bit>
#include <climits>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <utility>

#include "core/crc32c.hpp"

namespace layercache::detail {
namespace {

constexpr std::size_t off_magic = 0;
constexpr std::size_t off_format_version = 1;
constexpr std::size_t off_flags = 2;
constexpr std::size_t off_fresh_until = 3;
constexpr std::size_t off_stale_until = 11;
constexpr std::size_t off_error_until = 19;
constexpr std::size_t off_created = 27;
constexpr std::size_t off_version = 35;
constexpr std::size_t off_type_fingerprint = 43;
constexpr std::size_t fixed_header_bytes = 51;
constexpr std::size_t checksum_bytes = 4;
// Header, a zero tag count, an empty uncompressed payload's length, the checksum.
constexpr std::size_t min_envelope_bytes = fixed_header_bytes + 2 + 4 + checksum_bytes;

constexpr unsigned codec_mask = 0x07u;  // bits 0-2
constexpr unsigned compression_shift = 3;
constexpr unsigned compression_mask = 0x18u;  // bits 3-4
constexpr unsigned negative_bit = 0x20u;      // bit 5
constexpr unsigned reserved_mask = 0xC0u;     // bits 6-7

constexpr unsigned max_codec = static_cast<unsigned>(codec_id::custom);
constexpr unsigned max_compression = static_cast<unsigned>(compression_id::lz4);
constexpr std::size_t max_u16 = std::numeric_limits<std::uint16_t>::max();
constexpr std::size_t max_u32 = std::numeric_limits<std::uint32_t>::max();

template <class U>
U byteswap_if_big_endian(U v) noexcept {
  if constexpr (std::endian::native == std::endian::big) {
    if constexpr (sizeof(U) == 8) return __builtin_bswap64(v);
    if constexpr (sizeof(U) == 4) return __builtin_bswap32(v);
    if constexpr (sizeof(U) == 2) return __builtin_bswap16(v);
  }
  return v;
}

// memcpy because no field is aligned in the wire format.
template <class U>
U load_le(const char* p) noexcept {
  U v;
  std::memcpy(&v, p, sizeof v);
  return byteswap_if_big_endian(v);
}

template <class U>
void store_le(char* p, U v) noexcept {
  v = byteswap_if_big_endian(v);
  std::memcpy(p, &v, sizeof v);
}

std::int64_t load_i64(const char* p) noexcept {
  return static_cast<std::int64_t>(load_le<std::uint64_t>(p));
}

void store_i64(char* p, std::int64_t v) noexcept {
  store_le<std::uint64_t>(p, static_cast<std::uint64_t>(v));
}

status corruption(std::string message) { return status(errc::corruption, std::move(message)); }

std::string hex_byte(unsigned b) {
  constexpr char digits[] = "0123456789abcdef";
  return {'0', 'x', digits[(b >> 4) & 0xFu], digits[b & 0xFu]};
}

struct zstd_cctx_deleter {
  void operator()(ZSTD_CCtx* c) const noexcept { ZSTD_freeCCtx(c); }
};
struct zstd_dctx_deleter {
  void operator()(ZSTD_DCtx* d) const noexcept { ZSTD_freeDCtx(d); }
};

// ZSTD_compress/ZSTD_decompress allocate and free a context (tens to hundreds of KiB) per call,
// which dominates the cost for small values; one context per thread is reused instead. The
// *CCtx/*DCtx entry points ignore any sticky parameters, so results are identical to the one-shot
// functions.
ZSTD_CCtx* thread_cctx() noexcept {
  thread_local std::unique_ptr<ZSTD_CCtx, zstd_cctx_deleter> ctx(ZSTD_createCCtx());
  return ctx.get();
}

ZSTD_DCtx* thread_dctx() noexcept {
  thread_local std::unique_ptr<ZSTD_DCtx, zstd_dctx_deleter> ctx(ZSTD_createDCtx());
  return ctx.get();
}

// Compresses `src` into `dst` (capacity `cap`); returns 0 when compression failed.
std::size_t zstd_compress_into(char* dst, std::size_t cap, std::string_view src, int level) {
  ZSTD_CCtx* ctx = thread_cctx();
  const std::size_t n = ctx != nullptr
                            ? ZSTD_compressCCtx(ctx, dst, cap, src.data(), src.size(), level)
                            : ZSTD_compress(dst, cap, src.data(), src.size(), level);
  return ZSTD_isError(n) ? 0 : n;
}

std::size_t lz4_compress_into(char* dst, std::size_t cap, std::string_view src) {
  const int n =
      LZ4_compress_default(src.data(), dst, static_cast<int>(src.size()), static_cast<int>(cap));
  return n > 0 ? static_cast<std::size_t>(n) : 0;
}

std::size_t compress_bound(compression_id algorithm, std::size_t n) {
  if (algorithm == compression_id::zstd) return ZSTD_compressBound(n);
  return static_cast<std::size_t>(LZ4_compressBound(static_cast<int>(n)));
}

void validate_for_encoding(const envelope_header& h, std::span<const std::string> tags,
                           std::string_view payload, const compression_policy& policy) {
  if (static_cast<unsigned>(h.codec) > max_codec) {
    throw std::invalid_argument("encode_envelope: unknown codec id");
  }
  if (static_cast<unsigned>(policy.algorithm) > max_compression) {
    throw std::invalid_argument("encode_envelope: unknown compression id");
  }
  // The decoder rejects these, so writing them would only produce entries nobody can read.
  if (h.stale_until_ms < h.fresh_until_ms || h.error_until_ms < h.fresh_until_ms) {
    throw std::invalid_argument(
        "encode_envelope: stale_until and error_until must be >= fresh_until");
  }
  if (h.negative && !payload.empty()) {
    throw std::invalid_argument("encode_envelope: a negative entry has no payload");
  }
  if (tags.size() > max_u16) throw std::length_error("encode_envelope: more than 65535 tags");
  for (const std::string& tag : tags) {
    if (tag.size() > max_u16) {
      throw std::length_error("encode_envelope: tag longer than 65535 bytes");
    }
  }
  if (payload.size() > max_u32) {
    throw std::length_error("encode_envelope: payload of 4 GiB or more");
  }
}

// Checks everything the fixed header alone can prove. Shared by decode and peek so both reject
// exactly the same headers.
status parse_fixed_header(std::string_view bytes, envelope_header& h, compression_id& compression) {
  if (bytes.size() < fixed_header_bytes) {
    return corruption("envelope: truncated header (" + std::to_string(bytes.size()) + " of " +
                      std::to_string(fixed_header_bytes) + " bytes)");
  }
  const char* p = bytes.data();
  const auto magic = static_cast<unsigned char>(p[off_magic]);
  if (magic != envelope_magic) return corruption("envelope: bad magic " + hex_byte(magic));
  const auto format = static_cast<unsigned char>(p[off_format_version]);
  if (format != envelope_version) {
    return corruption("envelope: unsupported format version " + std::to_string(format));
  }
  const auto flags = static_cast<unsigned char>(p[off_flags]);
  if ((flags & reserved_mask) != 0) {
    return corruption("envelope: reserved flag bits set (flags " + hex_byte(flags) + ")");
  }
  const unsigned codec = flags & codec_mask;
  if (codec > max_codec) return corruption("envelope: unknown codec " + std::to_string(codec));
  const unsigned comp = (flags & compression_mask) >> compression_shift;
  if (comp > max_compression) {
    return corruption("envelope: unknown compression " + std::to_string(comp));
  }
  h.codec = static_cast<codec_id>(codec);
  compression = static_cast<compression_id>(comp);
  h.negative = (flags & negative_bit) != 0;
  if (h.negative && compression != compression_id::none) {
    return corruption("envelope: negative entry is marked compressed");
  }
  h.fresh_until_ms = load_i64(p + off_fresh_until);
  h.stale_until_ms = load_i64(p + off_stale_until);
  h.error_until_ms = load_i64(p + off_error_until);
  h.created_ms = load_i64(p + off_created);
  h.version = load_le<std::uint64_t>(p + off_version);
  h.type_fingerprint = load_le<std::uint64_t>(p + off_type_fingerprint);
  if (h.stale_until_ms < h.fresh_until_ms) {
    return corruption("envelope: stale_until before fresh_until");
  }
  if (h.error_until_ms < h.fresh_until_ms) {
    return corruption("envelope: error_until before fresh_until");
  }
  return status();
}

status decompress_into(compression_id compression, std::string_view stored, std::size_t raw_size,
                       std::string& dst) {
  if (compression == compression_id::zstd) {
    const unsigned long long content = ZSTD_getFrameContentSize(stored.data(), stored.size());
    if (content == ZSTD_CONTENTSIZE_ERROR) return corruption("envelope: invalid zstd frame header");
    if (content == ZSTD_CONTENTSIZE_UNKNOWN) {
      return corruption("envelope: zstd frame without content size");
    }
    if (content != raw_size) {
      return corruption("envelope: zstd content size " + std::to_string(content) +
                        " differs from recorded size " + std::to_string(raw_size));
    }
    // Exactly one frame, filling the stored bytes: no appended frames or trailing garbage.
    const std::size_t frame = ZSTD_findFrameCompressedSize(stored.data(), stored.size());
    if (ZSTD_isError(frame) || frame != stored.size()) {
      return corruption("envelope: zstd frame does not span the stored payload");
    }
    dst.resize(raw_size);
    ZSTD_DCtx* ctx = thread_dctx();
    const std::size_t n =
        ctx != nullptr
            ? ZSTD_decompressDCtx(ctx, dst.data(), raw_size, stored.data(), stored.size())
            : ZSTD_decompress(dst.data(), raw_size, stored.data(), stored.size());
    if (ZSTD_isError(n)) {
      return corruption(std::string("envelope: zstd decompression failed: ") +
                        ZSTD_getErrorName(n));
    }
    if (n != raw_size) return corruption("envelope: decompressed size mismatch");
    return status();
  }
  // lz4 block API sizes are ints.
  if (raw_size > static_cast<std::size_t>(LZ4_MAX_INPUT_SIZE) ||
      stored.size() > static_cast<std::size_t>(INT_MAX)) {
    return corruption("envelope: lz4 payload too large");
  }
  dst.resize(raw_size);
  const int n = LZ4_decompress_safe(stored.data(), dst.data(), static_cast<int>(stored.size()),
                                    static_cast<int>(raw_size));
  if (n < 0) return corruption("envelope: lz4 decompression failed");
  if (static_cast<std::size_t>(n) != raw_size) {
    return corruption("envelope: decompressed size mismatch");
  }
  return status();
}

}  // namespace

std::string encode_envelope(const envelope_header& header, std::span<const std::string> tags,
                            std::string_view payload, const compression_policy& policy) {
  validate_for_encoding(header, tags, payload, policy);

  std::size_t prefix = fixed_header_bytes + 2;
  for (const std::string& tag : tags) prefix += 2 + tag.size();

  // Compress straight into the output buffer so the common path makes one allocation; if the
  // result does not pay for the extra 4-byte length field, the same buffer is reused for the raw
  // payload (its capacity, sized for the compression bound, is already large enough).
  std::string out;
  compression_id used = compression_id::none;
  const std::size_t n = payload.size();
  if (policy.algorithm != compression_id::none && n > 0 && n >= policy.min_bytes &&
      (policy.algorithm != compression_id::lz4 ||
       n <= static_cast<std::size_t>(LZ4_MAX_INPUT_SIZE))) {
    const std::size_t bound = compress_bound(policy.algorithm, n);
    out.resize(prefix + 8 + bound + checksum_bytes);
    char* dst = out.data() + prefix + 8;
    const std::size_t stored = policy.algorithm == compression_id::zstd
                                   ? zstd_compress_into(dst, bound, payload, policy.level)
                                   : lz4_compress_into(dst, bound, payload);
    if (stored != 0 && stored + 4 < n) {
      used = policy.algorithm;
      store_le<std::uint32_t>(out.data() + prefix, static_cast<std::uint32_t>(n));
      store_le<std::uint32_t>(out.data() + prefix + 4, static_cast<std::uint32_t>(stored));
      out.resize(prefix + 8 + stored + checksum_bytes);
      // Encoded values may sit in write queues: do not pin a buffer sized for the worst case.
      if (out.capacity() - out.size() > out.size()) out.shrink_to_fit();
    }
  }
  if (used == compression_id::none) {
    out.resize(prefix + 4 + n + checksum_bytes);
    store_le<std::uint32_t>(out.data() + prefix, static_cast<std::uint32_t>(n));
    if (n > 0) std::memcpy(out.data() + prefix + 4, payload.data(), n);
  }

  char* p = out.data();
  p[off_magic] = static_cast<char>(envelope_magic);
  p[off_format_version] = static_cast<char>(envelope_version);
  const unsigned flags = static_cast<unsigned>(header.codec) |
                         (static_cast<unsigned>(used) << compression_shift) |
                         (header.negative ? negative_bit : 0u);
  p[off_flags] = static_cast<char>(flags);
  store_i64(p + off_fresh_until, header.fresh_until_ms);
  store_i64(p + off_stale_until, header.stale_until_ms);
  store_i64(p + off_error_until, header.error_until_ms);
  store_i64(p + off_created, header.created_ms);
  store_le<std::uint64_t>(p + off_version, header.version);
  store_le<std::uint64_t>(p + off_type_fingerprint, header.type_fingerprint);
  std::size_t pos = fixed_header_bytes;
  store_le<std::uint16_t>(p + pos, static_cast<std::uint16_t>(tags.size()));
  pos += 2;
  for (const std::string& tag : tags) {
    store_le<std::uint16_t>(p + pos, static_cast<std::uint16_t>(tag.size()));
    pos += 2;
    if (!tag.empty()) std::memcpy(p + pos, tag.data(), tag.size());
    pos += tag.size();
  }

  const std::size_t body = out.size() - checksum_bytes;
  store_le<std::uint32_t>(p + body, crc32c(std::string_view(p, body)));
  return out;
}

status decode_envelope(std::string_view bytes, decoded_envelope& out,
                       std::size_t max_payload_bytes) {
  if (status s = parse_fixed_header(bytes, out.header, out.compression); !s.ok()) return s;
  if (bytes.size() < min_envelope_bytes) {
    return corruption("envelope: truncated (" + std::to_string(bytes.size()) + " bytes, minimum " +
                      std::to_string(min_envelope_bytes) + ")");
  }
  // Verified before the variable part is parsed so that damaged bytes are reported as such rather
  // than as whatever structural error the damage happens to cause.
  const std::size_t end = bytes.size() - checksum_bytes;
  const char* p = bytes.data();
  if (load_le<std::uint32_t>(p + end) != crc32c(bytes.substr(0, end))) {
    return corruption("envelope: checksum mismatch");
  }

  std::size_t pos = fixed_header_bytes;
  const std::size_t tag_count = load_le<std::uint16_t>(p + pos);
  pos += 2;
  // Every tag needs at least its length field: checked before sizing the vector so a bogus count
  // cannot make us allocate.
  if (tag_count * 2 > end - pos) return corruption("envelope: truncated tags");
  out.tags.resize(tag_count);
  for (std::string& tag : out.tags) {
    if (end - pos < 2) return corruption("envelope: truncated tags");
    const std::size_t len = load_le<std::uint16_t>(p + pos);
    pos += 2;
    if (len > end - pos) return corruption("envelope: truncated tags");
    tag.assign(p + pos, len);
    pos += len;
  }

  const compression_id compression = out.compression;
  const std::size_t length_fields = compression == compression_id::none ? 4 : 8;
  if (end - pos < length_fields) return corruption("envelope: truncated payload length");
  std::size_t raw_size = load_le<std::uint32_t>(p + pos);
  const std::size_t stored_size = load_le<std::uint32_t>(p + pos + length_fields - 4);
  pos += length_fields;
  if (stored_size > end - pos) return corruption("envelope: truncated payload");
  if (stored_size < end - pos) return corruption("envelope: trailing bytes after payload");
  if (compression == compression_id::none) raw_size = stored_size;
  if (out.header.negative && raw_size != 0) {
    return corruption("envelope: negative entry carries a payload");
  }
  if (raw_size > max_payload_bytes) {
    return corruption("envelope: payload of " + std::to_string(raw_size) +
                      " bytes exceeds the limit of " + std::to_string(max_payload_bytes));
  }
  const std::string_view stored = bytes.substr(pos, stored_size);
  if (compression == compression_id::none) {
    out.payload.assign(stored.data(), stored.size());
    return status();
  }
  return decompress_into(compression, stored, raw_size, out.payload);
}

status peek_envelope_header(std::string_view bytes, envelope_header& out) {
  compression_id ignored = compression_id::none;
  return parse_fixed_header(bytes, out, ignored);
}

}  // namespace layercache::detail
