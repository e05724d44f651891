// layercache.hpp — umbrella header: everything a user of the memory layer needs. The Redis and disk
// layers have their own headers (redis_layer.hpp, disk_layer.hpp) and libraries.
// Thread-safety: as stated by each header it includes (cache_stack and every layer are
// thread-safe).
#pragma once

#include "layercache/cache_namespace.hpp"
#include "layercache/cache_stack.hpp"
#include "layercache/clock.hpp"
#include "layercache/codec.hpp"
#include "layercache/error.hpp"
#include "layercache/events.hpp"
#include "layercache/layer.hpp"
#include "layercache/memory_layer.hpp"
#include "layercache/metrics.hpp"
#include "layercache/options.hpp"
#include "layercache/status.hpp"
