// disk_layer_testing.hpp — a seam for tests of the disk layer; not API.
//
// Lets a test store bytes exactly as given, without the 8-byte expiry prefix, to simulate a record
// damaged on disk, and pause a read between finding a dead entry and deleting it, to make a race
// deterministic. Free of RocksDB headers like every header in src/disk/.
//
// Thread-safety: as disk_layer.
#pragma once

#include <functional>
#include <string_view>

#include "layercache/disk_layer.hpp"
#include "layercache/status.hpp"

namespace layercache::detail {

struct disk_layer_testing {
  // Writes `raw` as the stored value of `key` (no expiry prefix, no size check).
  static status put_raw(disk_layer& layer, std::string_view key, std::string_view raw);
  // Installs `hook`, run by a read that found an expired or damaged entry, before it deletes the
  // entry (outside every lock of the layer). Empty function: none. Not for concurrent install.
  static void on_lazy_delete(disk_layer& layer, std::function<void()> hook);
};

}  // namespace layercache::detail
