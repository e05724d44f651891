#include "layercache/options.hpp"

#include "layercache/error.hpp"

namespace layercache {

std::string_view to_string(event_type type) noexcept {
  switch (type) {
    case event_type::fetch_error:
      return "fetch_error";
    case event_type::layer_error:
      return "layer_error";
    case event_type::corruption:
      return "corruption";
    case event_type::wait_timeout:
      return "wait_timeout";
    case event_type::stale_fill:
      return "stale_fill";
    case event_type::breaker_open:
      return "breaker_open";
    case event_type::breaker_half_open:
      return "breaker_half_open";
    case event_type::breaker_closed:
      return "breaker_closed";
    case event_type::coordination_degraded:
      return "coordination_degraded";
    case event_type::bus_resync:
      return "bus_resync";
    case event_type::schema_mismatch:
      return "schema_mismatch";
  }
  return "unknown";
}

void stack_options::validate() const {
  if (ttl.count() <= 0) throw invalid_argument_error("stack_options: ttl must be > 0");
  if (negative_ttl.count() < 0) {
    throw invalid_argument_error("stack_options: negative_ttl must be >= 0");
  }
  if (max_key_bytes == 0 || max_key_bytes > 65535) {
    throw invalid_argument_error("stack_options: max_key_bytes must be in [1, 65535]");
  }
  if (wait_deadline.count() < 0) {
    throw invalid_argument_error("stack_options: wait_deadline must be >= 0");
  }
  if (write_threads == 0) throw invalid_argument_error("stack_options: write_threads must be >= 1");
  if (max_pending_writes == 0) {
    throw invalid_argument_error("stack_options: max_pending_writes must be >= 1");
  }
  if (write_retry_for.count() < 0) {
    throw invalid_argument_error("stack_options: write_retry_for must be >= 0");
  }
  if (max_retained_writes == 0) {
    throw invalid_argument_error("stack_options: max_retained_writes must be >= 1");
  }
  if (shutdown_flush_timeout.count() < 0) {
    throw invalid_argument_error("stack_options: shutdown_flush_timeout must be >= 0");
  }
}

void get_options::validate_fields() const {
  if (ttl && ttl->count() <= 0) throw invalid_argument_error("get_options: ttl must be > 0");
  if (negative_ttl && negative_ttl->count() < 0) {
    throw invalid_argument_error("get_options: negative_ttl must be >= 0");
  }
  if (wait_deadline && wait_deadline->count() < 0) {
    throw invalid_argument_error("get_options: wait_deadline must be >= 0");
  }
}

void set_options::validate() const {
  if (ttl && ttl->count() <= 0) throw invalid_argument_error("set_options: ttl must be > 0");
}

}  // namespace layercache
