// snapshot.hpp — options and results of cache_stack::export_snapshot / import_snapshot.
//
// A snapshot is one file holding a stack's live entries as envelopes (docs/format.md, "Snapshot
// file"): versioned, checksummed, written to a temporary name and renamed into place (a crash
// never leaves a half-written snapshot under the final name), owner-only permissions. Expiry is
// absolute, so an imported entry keeps its remaining lifetime; entries already expired at import
// are skipped.
//
//   auto r = cache.export_snapshot("/var/cache/app/warm.lcsnap");
//   if (!r.error.ok()) log_warn(r.error.message());
//   ... after a deploy ...
//   auto in = cache.import_snapshot<page>("/var/cache/app/warm.lcsnap");
//
// Thread-safety: plain values.
#pragma once

#include <cstdint>

#include "layercache/status.hpp"

namespace layercache {

struct snapshot_options {
  // Largest snapshot written or read, in bytes; exceeding it is errc::resource_exhausted (export
  // writes nothing, import reads nothing). Must be > 0. Default 1 GiB.
  std::uint64_t max_bytes = std::uint64_t{1} << 30;
};

struct snapshot_stats {
  std::uint64_t entries = 0;          // entries written (export) or stored (import)
  std::uint64_t bytes = 0;            // file size
  std::uint64_t skipped_expired = 0;  // entries not exported / imported because they had expired
  std::uint64_t skipped_type = 0;     // typed import: entries of another type (byte layers only)
};

struct snapshot_result {
  status error;  // ok, or why the snapshot could not be written / read / applied
  snapshot_stats stats;
};

}  // namespace layercache
