// snapshot.cpp — cache_stack::export_snapshot / import_snapshot.
//
// File layout (docs/format.md, "Snapshot file"), little-endian:
//   "LCSNAP" | u16 version (1) | i64 created_ms
//   entries: u32 key_len | key | u32 envelope_len | envelope        (repeated)
//   u64 entry_count | u32 crc32c of every byte before it
// The reader checks size bounds, the checksum and the count before applying anything, then checks
// each envelope as any byte-layer read would.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>
#include <random>
#include <unordered_map>

#include "core/crc32c.hpp"
#include "layercache/cache_stack.hpp"
#include "layercache/detail/envelope.hpp"
#include "layercache/detail/hash.hpp"

namespace layercache {
namespace {

constexpr char snapshot_magic[6] = {'L', 'C', 'S', 'N', 'A', 'P'};
constexpr std::uint16_t snapshot_version = 1;
constexpr std::size_t header_size = 6 + 2 + 8;
constexpr std::size_t trailer_size = 8 + 4;

template <class U>
void put(std::string& out, U v) {
  char buf[sizeof(U)];
  std::memcpy(buf, &v, sizeof(U));
  out.append(buf, sizeof(U));
}

template <class U>
bool get(std::string_view in, std::size_t& pos, U& v) {
  if (in.size() - pos < sizeof(U)) return false;
  std::memcpy(&v, in.data() + pos, sizeof(U));
  pos += sizeof(U);
  return true;
}

status io_error(const std::string& what, const std::filesystem::path& path, int err) {
  return status(err == ENOSPC ? errc::resource_exhausted : errc::unavailable,
                what + " " + path.string() + ": " + std::strerror(err));
}

// Writes `data` to `path` via a temporary file in the same directory, fsynced and renamed, so the
// final name holds either the old snapshot or the complete new one.
status write_atomically(const std::filesystem::path& path, const std::string& data) {
  std::random_device rd;
  std::filesystem::path tmp = path;
  tmp += ".tmp." + std::to_string(::getpid()) + "." + std::to_string(rd());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return io_error("snapshot: cannot create", tmp, errno);
  std::size_t written = 0;
  while (written < data.size()) {
    const ssize_t n = ::write(fd, data.data() + written, data.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return io_error("snapshot: cannot write", tmp, err);
    }
    written += static_cast<std::size_t>(n);
  }
  // Close even when fsync failed: the descriptor must not leak.
  const int sync_rc = ::fsync(fd);
  const int sync_err = errno;
  const int close_rc = ::close(fd);
  if (sync_rc != 0 || close_rc != 0) {
    const int err = sync_rc != 0 ? sync_err : errno;
    ::unlink(tmp.c_str());
    return io_error("snapshot: cannot sync", tmp, err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return io_error("snapshot: cannot rename into", path, err);
  }
  const auto dir = path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  if (const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
    (void)::fsync(dfd);  // the rename itself durable; best effort
    ::close(dfd);
  }
  return {};
}

struct parsed_entry {
  std::string_view key;
  std::string_view envelope;
};

status read_snapshot(const std::filesystem::path& path, const snapshot_options& options,
                     std::string& data, std::vector<parsed_entry>& entries) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec)
    return status(errc::unavailable,
                  "snapshot: cannot stat " + path.string() + ": " + ec.message());
  if (size > options.max_bytes) {
    return status(errc::resource_exhausted, "snapshot: " + path.string() + " is " +
                                                std::to_string(size) + " bytes, over max_bytes (" +
                                                std::to_string(options.max_bytes) + ")");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return status(errc::unavailable, "snapshot: cannot open " + path.string());
  data.resize(static_cast<std::size_t>(size));
  in.read(data.data(), static_cast<std::streamsize>(size));
  if (static_cast<std::uint64_t>(in.gcount()) != size) {
    return status(errc::unavailable, "snapshot: short read of " + path.string());
  }
  auto corrupt = [&](const std::string& why) {
    return status(errc::corruption, "snapshot: " + path.string() + ": " + why);
  };
  if (data.size() < header_size + trailer_size) return corrupt("too short");
  if (std::memcmp(data.data(), snapshot_magic, sizeof snapshot_magic) != 0) {
    return corrupt("not a snapshot (bad magic)");
  }
  std::size_t pos = sizeof snapshot_magic;
  std::uint16_t version = 0;
  std::int64_t created = 0;
  (void)get(data, pos, version);
  (void)get(data, pos, created);
  if (version != snapshot_version) return corrupt("unsupported version " + std::to_string(version));
  const std::size_t body_end = data.size() - trailer_size;
  std::uint64_t count = 0;
  std::uint32_t crc = 0;
  std::size_t tpos = body_end;
  (void)get(data, tpos, count);
  (void)get(data, tpos, crc);
  if (detail::crc32c(std::string_view(data.data(), body_end + 8)) != crc) {
    return corrupt("checksum mismatch");
  }
  const std::string_view body(data.data(), body_end);
  while (pos < body_end) {
    std::uint32_t klen = 0, elen = 0;
    if (!get(body, pos, klen) || body_end - pos < klen) return corrupt("truncated key");
    const std::string_view key(data.data() + pos, klen);
    pos += klen;
    if (!get(body, pos, elen) || body_end - pos < elen) return corrupt("truncated envelope");
    entries.push_back({key, std::string_view(data.data() + pos, elen)});
    pos += elen;
  }
  if (entries.size() != count) return corrupt("entry count does not match");
  return {};
}

std::vector<byte_layer*> byte_layers_of(const std::vector<std::shared_ptr<layer>>& layers) {
  std::vector<byte_layer*> out;
  for (const auto& l : layers) {
    if (auto* b = dynamic_cast<byte_layer*>(l.get())) out.push_back(b);
  }
  return out;
}

}  // namespace

snapshot_result cache_stack::export_snapshot(const std::filesystem::path& path,
                                             const snapshot_options& options) {
  snapshot_result result;
  if (options.max_bytes == 0) {
    result.error = status(errc::invalid_argument, "snapshot: max_bytes must be > 0");
    return result;
  }
  const auto clock = this->options().clock ? this->options().clock : default_clock();
  const unix_ms now = clock->now_ms();
  std::string data;
  data.append(snapshot_magic, sizeof snapshot_magic);
  put<std::uint16_t>(data, snapshot_version);
  put<std::int64_t>(data, now);
  bool too_big = false;
  auto add = [&](std::string_view key, std::string_view envelope) {
    if (data.size() + 8 + key.size() + envelope.size() + trailer_size > options.max_bytes) {
      too_big = true;
      return false;
    }
    put<std::uint32_t>(data, static_cast<std::uint32_t>(key.size()));
    data.append(key);
    put<std::uint32_t>(data, static_cast<std::uint32_t>(envelope.size()));
    data.append(envelope);
    ++result.stats.entries;
    return true;
  };

  // Queued writes first, so the byte layers hold what this process wrote.
  (void)flush(this->options().shutdown_flush_timeout);

  // Byte layers' entries, nearest layer first for a key. They carry the full remaining lifetime,
  // where an L1 entry's expiry is capped by the memory layer's ttl.
  // A deque never moves its elements, so stored_at's views of the keys stay valid while it grows.
  std::deque<std::pair<std::string, std::string>> stored;
  std::unordered_map<std::string_view, std::size_t> stored_at;
  std::uint64_t stored_bytes = 0;
  for (byte_layer* b : byte_layers_of(layers())) {
    status s = b->scan([&](std::string_view key, std::string_view envelope) {
      detail::envelope_header h;
      if (!detail::peek_envelope_header(envelope, h).ok()) return true;  // corrupt: not exported
      if (h.fresh_until_ms <= now) {
        ++result.stats.skipped_expired;
        return true;
      }
      if (stored_at.count(key) != 0) return true;  // a nearer layer already gave this key
      stored_bytes += key.size() + envelope.size();
      if (stored_bytes > options.max_bytes) {
        too_big = true;
        return false;
      }
      stored.emplace_back(std::string(key), std::string(envelope));
      stored_at.emplace(stored.back().first, stored.size() - 1);
      return true;
    });
    // A layer that cannot enumerate (or failed mid-way) leaves the snapshot with what the others
    // had; the status says so.
    if (!s.ok() && s.code() != errc::invalid_argument) result.error.update(s);
    if (too_big) break;
  }

  // L1 decides the value (it is what this process serves); when a byte layer holds the same value,
  // its envelope is exported so the entry keeps its full lifetime.
  std::vector<bool> used(stored.size(), false);
  if (l1_ != nullptr && !too_big) {
    l1_->scan([&](std::string_view key, const memory_layer::hit& h) {
      std::string payload;
      if (!h.negative) h.ops->encode(h.value.get(), payload);
      if (auto it = stored_at.find(key); it != stored_at.end()) {
        detail::decoded_envelope env;
        const std::string& bytes_stored = stored[it->second].second;
        if (detail::decode_envelope(bytes_stored, env).ok() && env.header.negative == h.negative &&
            env.header.type_fingerprint == h.ops->fingerprint && env.payload == payload) {
          used[it->second] = true;
          return add(key, bytes_stored);
        }
        used[it->second] = true;  // L1 differs (the byte layer fell behind): L1 wins
      }
      detail::envelope_header header;
      header.fresh_until_ms =
          h.expires_at_ms != 0 ? h.expires_at_ms : now + this->options().ttl.count();
      header.stale_until_ms = header.error_until_ms = header.fresh_until_ms;
      header.created_ms = now;
      header.type_fingerprint = h.ops->fingerprint;
      header.codec = h.ops->codec;
      header.negative = h.negative;
      return add(key, detail::encode_envelope(header, {}, payload));
    });
  }
  for (std::size_t i = 0; i < stored.size() && !too_big; ++i) {
    if (!used[i] && !add(stored[i].first, stored[i].second)) break;
  }
  if (too_big) {
    result.error = status(errc::resource_exhausted, "snapshot: entries exceed max_bytes (" +
                                                        std::to_string(options.max_bytes) +
                                                        "); nothing written");
    result.stats = {};
    return result;
  }
  put<std::uint64_t>(data, result.stats.entries);
  put<std::uint32_t>(data, detail::crc32c(data));
  result.stats.bytes = data.size();
  result.error.update(write_atomically(path, data));
  return result;
}

snapshot_result cache_stack::import_snapshot(const std::filesystem::path& path,
                                             const snapshot_options& options) {
  return import_snapshot_erased(path, options, nullptr);
}

snapshot_result cache_stack::import_snapshot_erased(const std::filesystem::path& path,
                                                    const snapshot_options& options,
                                                    const detail::type_ops* ops) {
  snapshot_result result;
  const std::vector<byte_layer*> bytes = byte_layers_of(layers());
  if (bytes.empty() && ops == nullptr) {
    result.error = status(errc::invalid_argument,
                          "import_snapshot: the stack has no byte layer; use import_snapshot<T>");
    return result;
  }
  // Writes queued before the import must not land on top of it.
  (void)flush(this->options().shutdown_flush_timeout);
  std::string data;
  std::vector<parsed_entry> entries;
  result.error = read_snapshot(path, options, data, entries);
  if (!result.error.ok()) return result;
  result.stats.bytes = data.size();
  const auto clock = this->options().clock ? this->options().clock : default_clock();
  const unix_ms now = clock->now_ms();

  std::vector<byte_write> writes;
  std::vector<std::string> keys;  // validated keys, stable storage for byte_write
  keys.reserve(entries.size());
  for (const auto& e : entries) {
    detail::decoded_envelope env;
    if (!detail::decode_envelope(e.envelope, env).ok() || e.key.empty() ||
        e.key.size() > this->options().max_key_bytes) {
      result.error.update(status(errc::corruption, "import_snapshot: skipped a corrupt entry"));
      continue;
    }
    if (env.header.fresh_until_ms <= now) {
      ++result.stats.skipped_expired;
      continue;
    }
    bool stored = false;
    if (ops != nullptr && l1_ != nullptr) {
      if (env.header.type_fingerprint == ops->fingerprint && env.header.codec == ops->codec) {
        std::shared_ptr<const void> value;
        if (!env.header.negative) {
          try {
            value = ops->decode(env.payload);
          } catch (...) {
            result.error.update(
                status(errc::corruption,
                       "import_snapshot: payload of '" + std::string(e.key) + "' does not decode"));
            continue;
          }
        }
        l1_->insert(e.key, detail::hash_key(e.key), value, ops, env.header.negative,
                    env.header.fresh_until_ms, value ? ops->weigh(value.get()) : 0);
        stored = true;
      } else {
        ++result.stats.skipped_type;
      }
    }
    if (!bytes.empty()) {
      keys.emplace_back(e.key);
      writes.push_back(byte_write{keys.back(), e.envelope, env.header.fresh_until_ms});
      stored = true;
    }
    if (stored) ++result.stats.entries;
  }
  // Batches keep one pipeline / write batch bounded.
  constexpr std::size_t batch = 512;
  for (byte_layer* b : bytes) {
    for (std::size_t i = 0; i < writes.size(); i += batch) {
      const std::size_t n = std::min(batch, writes.size() - i);
      result.error.update(b->set_many(std::span<const byte_write>(writes.data() + i, n)));
    }
  }
  return result;
}

}  // namespace layercache
