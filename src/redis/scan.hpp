// scan.hpp — walking the keys that match a pattern with SCAN, batch by batch: the loop that
// clear(), scan() and prefix invalidation share. Not API.
//
// Thread-safety: a free function; as thread-safe as the client it is given.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "layercache/status.hpp"
#include "redis/redis_client.hpp"

namespace layercache::redis_detail {

// SCANs `pattern` (already glob-escaped) with COUNT `count`, each call bounded by `deadline`, and
// hands each batch of keys to `on_batch`, which may set `stop` to end the walk early. Every SCAN's
// outcome goes through `outcome` (the caller's breaker accounting); the first failure — of a SCAN,
// an unexpected reply (named after `layer`), or a batch — ends the walk and is returned. SCAN is
// bounded per call, and the walk ends when the cursor wraps to 0 (Redis guarantees it does); keys
// written meanwhile may or may not be seen.
status scan_batches(
    redis_client& client, const std::string& pattern, std::string_view count,
    std::chrono::milliseconds deadline, std::string_view layer,
    const std::function<status(const status&)>& outcome,
    const std::function<status(const std::vector<reply>& keys, bool& stop)>& on_batch);

}  // namespace layercache::redis_detail
