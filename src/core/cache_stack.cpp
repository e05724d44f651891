// cache_stack.cpp — construction and destruction of a cache_stack, and its metrics. The read
// and write paths live in stack_reads.cpp and stack_writes.cpp (stack_impl.hpp has the map).
#include "layercache/cache_stack.hpp"

#include "core/stack_impl.hpp"

namespace layercache {

cache_stack::cache_stack(std::vector<std::shared_ptr<layer>> layers, stack_options options)
    : impl_(std::make_unique<impl>()) {
  options.validate();
  if (layers.empty()) throw invalid_argument_error("cache_stack: at least one layer is required");
  impl& m = *impl_;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    if (!layers[i])
      throw invalid_argument_error("cache_stack: layer " + std::to_string(i) + " is null");
    const layer_info& info = layers[i]->info();
    if (info.kind == layer_kind::objects) {
      auto* mem = dynamic_cast<memory_layer*>(layers[i].get());
      if (i != 0 || mem == nullptr) {
        throw invalid_argument_error("cache_stack: a memory layer may only be the first layer");
      }
      m.l1 = mem;
    } else {
      auto* b = dynamic_cast<byte_layer*>(layers[i].get());
      if (b == nullptr) {
        throw invalid_argument_error("cache_stack: layer '" + info.name +
                                     "' says it stores bytes but is not a byte_layer");
      }
      m.bytes.push_back(b);
      m.compress.push_back(policy_for(info));
    }
  }
  m.stats = std::make_unique<byte_layer_stats[]>(m.bytes.size());
  for (std::size_t i = 0; i < m.bytes.size() && m.coord == nullptr; ++i) {
    if (auto* c = m.bytes[i]->coordination()) {
      m.coord = c;
      m.coord_at = i;
    }
  }
  m.local_byte_layers = m.bytes.size() > (m.coord != nullptr ? 1U : 0U);
  m.layers = std::move(layers);
  for (auto& l : m.layers) {
    impl* self = &m;
    const std::string name = l->info().name;
    l->attach([self, name](event_type type, std::string_view key, const status& detail) {
      self->emit(type, name, key, detail);
    });
  }
  m.options = std::move(options);
  m.clock = m.options.clock ? m.options.clock : default_clock();
  l1_ = m.l1;
  if (!m.bytes.empty()) {
    impl* self = &m;
    m.writer = std::make_unique<detail::write_behind>(
        m.bytes,
        detail::write_behind::options{.threads = m.options.write_threads,
                                      .max_pending = m.options.max_pending_writes,
                                      .batch = 256,
                                      .flush_timeout = m.options.shutdown_flush_timeout,
                                      .retry_for = m.options.write_retry_for,
                                      .max_retained = m.options.max_retained_writes,
                                      .coord = m.coord,
                                      .coord_at = m.coord_at},
        [self](std::size_t j, std::string_view key, const status& s) {
          self->stats[j].errors.fetch_add(1, std::memory_order_relaxed);
          self->emit(event_type::layer_error, self->bytes[j]->info().name, key, s);
        },
        [self](std::size_t j, std::size_t n) {
          self->stats[j].writes.fetch_add(n, std::memory_order_relaxed);
        },
        [self](std::string_view key, std::uint64_t hash) {
          // Redis holds a newer version than the write we made: our L1 copy is the older one.
          self->cas_rejections.fetch_add(1, std::memory_order_relaxed);
          self->flights.invalidate(key, hash);
          if (self->l1 != nullptr) self->l1->erase(key, hash, removal_cause::invalidated);
        },
        [self](std::string_view key, std::uint64_t hash) {
          // A write of the key was given up: what L1 holds (or a fetch in flight would store) may
          // disagree with the byte layers for good.
          self->flights.invalidate(key, hash);
          if (self->l1 != nullptr) self->l1->erase(key, hash, removal_cause::invalidated);
        });
  }
  if (m.coord != nullptr) {
    m.bus = m.make_bus_sink();
    m.coord->listen(m.bus.get());
  }
}

cache_stack::~cache_stack() {
  if (impl_->coord != nullptr) impl_->coord->unlisten(impl_->bus.get());  // no callback after it
  impl_->writer.reset();  // flush queued writes (bounded) while layers and sinks are valid
  for (auto& l : impl_->layers) l->attach({});  // layers may outlive the stack
}

const std::vector<std::shared_ptr<layer>>& cache_stack::layers() const noexcept {
  return impl_->layers;
}

const stack_options& cache_stack::options() const noexcept { return impl_->options; }

metrics_snapshot cache_stack::metrics() const {
  const impl& m = *impl_;
  metrics_snapshot out;
  std::size_t b = 0;
  for (const auto& l : m.layers) {
    if (l.get() == m.l1) {
      out.layers.push_back(m.l1->metrics());
      continue;
    }
    const byte_layer_stats& st = m.stats[b++];
    layer_metrics lm;
    lm.name = l->info().name;
    lm.hits = st.hits.load(std::memory_order_relaxed);
    lm.misses = st.misses.load(std::memory_order_relaxed);
    lm.errors = st.errors.load(std::memory_order_relaxed);
    lm.writes = st.writes.load(std::memory_order_relaxed);
    lm.expirations = st.expirations.load(std::memory_order_relaxed);
    lm.read_latency = st.latency.summary();
    l->contribute_metrics(lm);
    out.layers.push_back(std::move(lm));
  }
  out.fetches = m.fetches.load(std::memory_order_relaxed);
  out.fetch_errors = m.fetch_errors.load(std::memory_order_relaxed);
  out.dedupes = m.dedupes.load(std::memory_order_relaxed);
  out.wait_timeouts = m.wait_timeouts.load(std::memory_order_relaxed);
  out.negative_hits = m.negative_hits.load(std::memory_order_relaxed);
  out.stale_fills = m.stale_fills.load(std::memory_order_relaxed);
  out.fetch_latency = m.fetch_latency.summary();
  out.pending_writes = m.writer ? m.writer->queued() : 0;
  out.retained_writes = m.writer ? m.writer->retained() : 0;
  out.schema_misses = m.schema_misses.load(std::memory_order_relaxed);
  out.lease_grants = m.lease_grants.load(std::memory_order_relaxed);
  out.lease_waits = m.lease_waits.load(std::memory_order_relaxed);
  out.lease_takeovers = m.lease_takeovers.load(std::memory_order_relaxed);
  out.coordination_fallbacks = m.coordination_fallbacks.load(std::memory_order_relaxed);
  out.cas_rejections = m.cas_rejections.load(std::memory_order_relaxed);
  out.bus_received = m.bus_received.load(std::memory_order_relaxed);
  out.bus_resyncs = m.bus_resyncs.load(std::memory_order_relaxed);
  return out;
}

}  // namespace layercache
