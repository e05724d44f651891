// redis_layer.cpp — byte_layer over the internal redis_client.
//
// Concurrency: all state is either immutable after create() or atomic, except the event sink
// (guarded by sink_mu_, held while the sink runs so attach({}) can wait for a running call) and the
// breaker (internally locked). Calls run on the caller's thread; the client does the multiplexing.
// Breaker accounting: transport errors and deadline misses count as failures; a reply, including
// a nil reply, counts as success; misuse errors (invalid_argument, resource_exhausted) count as
// neither, because they say nothing about Redis's health. Reads and writes have separate breakers:
// their deadlines differ (50 ms vs 200 ms by default), and a Redis slow enough to miss every read
// deadline but fast enough for writes must still stop costing each miss a full read deadline —
// with one breaker, the successful background writes would keep resetting it.
#include "layercache/redis_layer.hpp"

#include <atomic>
#include <mutex>

#include "core/circuit_breaker.hpp"
#include "layercache/error.hpp"
#include "redis/hiredis_client.hpp"
#include "redis/redis_client.hpp"
#include "redis/redis_coordinator.hpp"
#include "redis/scan.hpp"
#include "redis/wire.hpp"

namespace layercache {

using redis_detail::reply;
using redis_detail::result;

void redis_layer_options::validate() const {
  if (url.empty()) throw invalid_argument_error("redis_layer: url must not be empty");
  if (ttl.count() < 0) throw invalid_argument_error("redis_layer: ttl must be >= 0");
  if (read_deadline.count() <= 0)
    throw invalid_argument_error("redis_layer: read_deadline must be > 0");
  if (write_deadline.count() <= 0) {
    throw invalid_argument_error("redis_layer: write_deadline must be > 0");
  }
  if (max_value_bytes == 0)
    throw invalid_argument_error("redis_layer: max_value_bytes must be > 0");
  if (connections == 0) throw invalid_argument_error("redis_layer: connections must be >= 1");
  if (connect_timeout.count() <= 0) {
    throw invalid_argument_error("redis_layer: connect_timeout must be > 0");
  }
  if (breaker_failures == 0)
    throw invalid_argument_error("redis_layer: breaker_failures must be >= 1");
  if (breaker_open_for.count() <= 0) {
    throw invalid_argument_error("redis_layer: breaker_open_for must be > 0");
  }
  if (name.empty()) throw invalid_argument_error("redis_layer: name must not be empty");
  if (lease_ttl.count() <= 0) throw invalid_argument_error("redis_layer: lease_ttl must be > 0");
  if (lease_poll.count() <= 0) throw invalid_argument_error("redis_layer: lease_poll must be > 0");
  if (lease_wait.count() <= 0) throw invalid_argument_error("redis_layer: lease_wait must be > 0");
  if (tombstone_ttl.count() <= 0) {
    throw invalid_argument_error("redis_layer: tombstone_ttl must be > 0");
  }
  if (bus_down_l1_ttl.count() <= 0) {
    throw invalid_argument_error("redis_layer: bus_down_l1_ttl must be > 0");
  }
}

namespace {

std::int64_t steady_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The message of an unattributed client status without its "<code>: " prefix, so that the layer
// failure built from it reads "redis: timeout: redis: no reply ..." and not "... timeout:
// timeout:".
std::string bare_message(const status& s) {
  std::string m = s.message();
  if (!s.failures().empty()) return m;
  const std::string_view code = to_string(s.code());
  if (m.size() > code.size() + 1 && m.compare(0, code.size(), code) == 0 &&
      m.compare(code.size(), 2, ": ") == 0) {
    m.erase(0, code.size() + 2);
  }
  return m;
}

}  // namespace

struct redis_layer::impl {
  redis_layer_options options;
  layer_info info;
  std::shared_ptr<const ::layercache::clock> clock;
  std::unique_ptr<redis_detail::redis_client> client;
  std::unique_ptr<detail::circuit_breaker> read_breaker;
  std::unique_ptr<detail::circuit_breaker> write_breaker;
  std::atomic<std::uint64_t> timeouts{0};
  // Last member but the sink: destroyed first, while the client and breakers it uses still exist.
  std::unique_ptr<detail::coordinator> coordinator;

  // Recursive: the sink may call back into the cache, which may raise another event here.
  std::recursive_mutex sink_mu;
  layer_event_sink sink;

  void emit(event_type type, std::string_view key, const status& s) {
    std::lock_guard lock(sink_mu);
    if (sink) sink(type, key, s);
  }

  std::string full_key(std::string_view key) const {
    std::string k;
    k.reserve(options.prefix.size() + key.size());
    k.append(options.prefix).append(key);
    return k;
  }

  status refused() const {
    return status::layer_error(info.name, errc::unavailable, "circuit breaker open: redis skipped");
  }

  // Feeds a breaker and the counters from one outcome; returns the status to report (named).
  status account(detail::circuit_breaker& breaker, const status& s) {
    if (s.ok()) {
      breaker.on_success();
      return {};
    }
    const errc code = s.code();
    if (code == errc::timeout) timeouts.fetch_add(1, std::memory_order_relaxed);
    if (code == errc::timeout || code == errc::unavailable || code == errc::internal) {
      breaker.on_failure(steady_ms());
    }
    return status::layer_error(info.name, code, bare_message(s));
  }
  status read_outcome(const status& s) { return account(*read_breaker, s); }
  status write_outcome(const status& s) { return account(*write_breaker, s); }

  std::unique_ptr<detail::circuit_breaker> make_breaker(std::string_view what) {
    impl* self = this;
    const std::string label(what);
    return std::make_unique<detail::circuit_breaker>(
        detail::circuit_breaker::options{options.breaker_failures, options.breaker_open_for},
        [self, label](detail::circuit_breaker::state, detail::circuit_breaker::state to) {
          using st = detail::circuit_breaker::state;
          const event_type type = to == st::open        ? event_type::breaker_open
                                  : to == st::half_open ? event_type::breaker_half_open
                                                        : event_type::breaker_closed;
          // An ok status carries no message, so the open and half-open details are failures
          // (the layer is skipped: unavailable) that say which breaker moved; closed is ok.
          const std::string text =
              label + " circuit breaker " + std::string(detail::circuit_breaker::name(to));
          self->emit(
              type, "",
              to == st::closed
                  ? status()
                  : status::layer_error(
                        self->info.name, errc::unavailable,
                        to == st::open
                            ? text + ": redis skipped for " +
                                  std::to_string(self->options.breaker_open_for.count()) + " ms"
                            : text + ": one probe let through"));
        });
  }

  std::int64_t px_for(unix_ms expires_at_ms) const {
    return redis_detail::px_for(expires_at_ms, clock->now_ms(), options.ttl);
  }
};

redis_layer::redis_layer(std::unique_ptr<impl> state) : impl_(std::move(state)) {}
redis_layer::~redis_layer() = default;

std::shared_ptr<redis_layer> redis_layer::create(redis_layer_options options) {
  options.validate();
  auto m = std::make_unique<impl>();
  m->options = std::move(options);
  const auto& o = m->options;
  m->info = layer_info{o.name, layer_kind::bytes, o.ttl, true, o.compress, o.compress_min_bytes};
  m->clock = o.clock ? o.clock : default_clock();
  redis_detail::client_options co;
  co.url = o.url;
  co.connections = o.connections;
  co.connect_timeout = o.connect_timeout;
  m->client = redis_detail::make_hiredis_client(co);  // throws for a malformed URL
  m->read_breaker = m->make_breaker("read");
  m->write_breaker = m->make_breaker("write");
  // Rejected credentials are a configuration error worth failing loudly for; an unreachable
  // server is not (the layer reconnects in the background and reads fall through meanwhile).
  result probe = m->client->execute({"PING"}, o.connect_timeout + o.read_deadline);
  if (!probe.error.ok() && probe.error.code() == errc::invalid_argument) {
    throw invalid_argument_error(bare_message(probe.error));
  }
  if (m->options.coordinate) {
    impl* self = m.get();
    redis_detail::coordinator_context ctx;
    ctx.client = m->client.get();
    ctx.options = &m->options;
    ctx.clock = m->clock;
    ctx.read_allowed = [self] { return self->read_breaker->allow(steady_ms()); };
    ctx.write_allowed = [self] { return self->write_breaker->allow(steady_ms()); };
    ctx.read_outcome = [self](const status& st) { return self->read_outcome(st); };
    ctx.write_outcome = [self](const status& st) { return self->write_outcome(st); };
    m->coordinator = redis_detail::make_redis_coordinator(std::move(ctx));
  }
  return std::shared_ptr<redis_layer>(new redis_layer(std::move(m)));
}

const layer_info& redis_layer::info() const noexcept { return impl_->info; }
bool redis_layer::connected() const noexcept { return impl_->client->connected(); }
detail::coordinator* redis_layer::coordination() noexcept { return impl_->coordinator.get(); }

void redis_layer::attach(layer_event_sink sink) {
  std::lock_guard lock(impl_->sink_mu);
  impl_->sink = std::move(sink);
}

void redis_layer::contribute_metrics(layer_metrics& out) const {
  out.timeouts = impl_->timeouts.load(std::memory_order_relaxed);
  out.breaker_opens = impl_->read_breaker->opens() + impl_->write_breaker->opens();
  // The read breaker is what decides whether reads reach Redis, the state a dashboard wants.
  out.breaker_state = std::string(detail::circuit_breaker::name(impl_->read_breaker->current()));
}

byte_read redis_layer::get(std::string_view key) {
  impl& m = *impl_;
  if (!m.read_breaker->allow(steady_ms())) return {m.refused(), std::nullopt};
  const std::string k = m.full_key(key);
  result r = m.client->execute({"GET", k}, m.options.read_deadline);
  status s = m.read_outcome(r.error);
  if (!s.ok()) return {std::move(s), std::nullopt};
  if (r.value.type == reply::kind::string) {
    if (redis_detail::is_tombstone(r.value.str)) {
      byte_read absent;  // a delete's version: absent, and a fence for the layers below
      absent.deleted_version = redis_detail::tombstone_version(r.value.str);
      return absent;
    }
    return {{}, std::move(r.value.str)};
  }
  if (r.value.type == reply::kind::nil) return {};
  return {status::layer_error(m.info.name, errc::internal, "unexpected reply type to GET"), {}};
}

std::vector<byte_read> redis_layer::get_many(std::span<const std::string> keys) {
  impl& m = *impl_;
  std::vector<byte_read> out(keys.size());
  if (keys.empty()) return out;
  if (!m.read_breaker->allow(steady_ms())) {
    for (auto& r : out) r.error = m.refused();
    return out;
  }
  std::vector<std::string> full;
  full.reserve(keys.size());
  for (const auto& k : keys) full.push_back(m.full_key(k));
  std::vector<std::string_view> argv;
  argv.reserve(keys.size() + 1);
  argv.emplace_back("MGET");
  for (const auto& k : full) argv.emplace_back(k);
  result r = m.client->execute(argv, m.options.read_deadline);
  status s = m.read_outcome(r.error);
  if (s.ok() && (r.value.type != reply::kind::array || r.value.elements.size() != keys.size())) {
    s = status::layer_error(m.info.name, errc::internal, "unexpected reply to MGET");
  }
  if (!s.ok()) {
    for (auto& o : out) o.error = s;
    return out;
  }
  for (std::size_t i = 0; i < keys.size(); ++i) {
    reply& e = r.value.elements[i];
    if (e.type != reply::kind::string) continue;
    if (redis_detail::is_tombstone(e.str)) {
      out[i].deleted_version = redis_detail::tombstone_version(e.str);
    } else {
      out[i].bytes = std::move(e.str);
    }
  }
  return out;
}

status redis_layer::set(std::string_view key, std::string_view bytes, unix_ms expires_at_ms) {
  const byte_write w{key, bytes, expires_at_ms};
  return set_many(std::span<const byte_write>(&w, 1));
}

status redis_layer::set_many(std::span<const byte_write> writes) {
  impl& m = *impl_;
  if (writes.empty()) return {};
  if (!m.write_breaker->allow(steady_ms())) return m.refused();
  std::vector<std::vector<std::string>> commands;
  commands.reserve(writes.size());
  status oversize;
  for (const auto& w : writes) {
    std::string k = m.full_key(w.key);
    const std::int64_t px = m.px_for(w.expires_at_ms);
    if (w.bytes.size() > m.options.max_value_bytes) {
      oversize.update(status::layer_error(
          m.info.name, errc::resource_exhausted,
          "value of " + std::to_string(w.bytes.size()) + " bytes for key '" + std::string(w.key) +
              "' exceeds max_value_bytes (" + std::to_string(m.options.max_value_bytes) + ")"));
      // Not storing must not leave an older value behind.
      commands.push_back({"DEL", std::move(k)});
    } else if (w.expires_at_ms != 0 && px <= 0) {
      commands.push_back({"DEL", std::move(k)});  // already expired: nothing to keep
    } else if (px > 0) {
      commands.push_back({"SET", std::move(k), std::string(w.bytes), "PX", std::to_string(px)});
    } else {
      commands.push_back({"SET", std::move(k), std::string(w.bytes)});
    }
  }
  std::vector<result> results = m.client->execute_pipeline(commands, m.options.write_deadline);
  status transport;
  for (const auto& r : results) {
    if (!r.error.ok()) {
      transport = r.error;
      break;
    }
  }
  status out = m.write_outcome(transport);
  out.update(oversize);
  return out;
}

status redis_layer::del(std::string_view key) {
  impl& m = *impl_;
  if (!m.write_breaker->allow(steady_ms())) return m.refused();
  const std::string k = m.full_key(key);
  return m.write_outcome(m.client->execute({"DEL", k}, m.options.write_deadline).error);
}

status redis_layer::del_many(std::span<const std::string> keys) {
  impl& m = *impl_;
  if (keys.empty()) return {};
  if (!m.write_breaker->allow(steady_ms())) return m.refused();
  std::vector<std::string> full;
  full.reserve(keys.size());
  for (const auto& k : keys) full.push_back(m.full_key(k));
  std::vector<std::string_view> argv;
  argv.reserve(keys.size() + 1);
  argv.emplace_back("DEL");
  for (const auto& k : full) argv.emplace_back(k);
  return m.write_outcome(m.client->execute(argv, m.options.write_deadline).error);
}

status redis_layer::clear() {
  impl& m = *impl_;
  if (!m.write_breaker->allow(steady_ms())) return m.refused();
  // Namespace generations and bus sequence counters survive a clear: resetting a generation would
  // let instances that remember the old one disagree with those that read it afresh.
  // (The prefix "ns" keeps the rotation versions, "nsv:", too.)
  const std::string keep_ns = m.options.prefix + std::string(redis_detail::internal_marker) + "ns";
  const std::string keep_seq =
      m.options.prefix + std::string(redis_detail::internal_marker) + "seq:";
  // The fences of recent invalidations (this clear's included) must outlive it.
  const std::string keep_fence =
      m.options.prefix + std::string(redis_detail::internal_marker) + "fence";
  return redis_detail::scan_batches(
      *m.client, redis_detail::glob_escape(m.options.prefix) + "*", "1000",
      m.options.write_deadline, m.info.name, [&](const status& st) { return m.write_outcome(st); },
      [&](const std::vector<reply>& keys, bool&) -> status {
        std::vector<std::string_view> argv;
        argv.reserve(keys.size() + 1);
        argv.emplace_back("UNLINK");
        for (const auto& k : keys) {
          if (k.str.compare(0, keep_ns.size(), keep_ns) == 0 ||
              k.str.compare(0, keep_seq.size(), keep_seq) == 0 || k.str == keep_fence) {
            continue;
          }
          argv.emplace_back(k.str);
        }
        if (argv.size() == 1) return {};
        return m.write_outcome(m.client->execute(argv, m.options.write_deadline).error);
      });
}

status redis_layer::scan(
    const std::function<bool(std::string_view key, std::string_view bytes)>& visit) {
  impl& m = *impl_;
  if (!m.read_breaker->allow(steady_ms())) return m.refused();
  return redis_detail::scan_batches(
      *m.client, redis_detail::glob_escape(m.options.prefix) + "*", "500", m.options.write_deadline,
      m.info.name, [&](const status& st) { return m.read_outcome(st); },
      [&](const std::vector<reply>& keys, bool& stop) -> status {
        if (keys.empty()) return {};
        std::vector<std::string_view> argv;
        argv.reserve(keys.size() + 1);
        argv.emplace_back("MGET");
        for (const auto& k : keys) argv.emplace_back(k.str);
        result values = m.client->execute(argv, m.options.write_deadline);
        status v = m.read_outcome(values.error);
        if (!v.ok()) return v;
        if (values.value.type != reply::kind::array ||
            values.value.elements.size() != keys.size()) {
          return status::layer_error(m.info.name, errc::internal, "unexpected reply to MGET");
        }
        for (std::size_t i = 0; i < keys.size(); ++i) {
          const reply& e = values.value.elements[i];
          if (e.type != reply::kind::string) continue;  // deleted between SCAN and MGET
          if (redis_detail::is_tombstone(e.str)) continue;
          if (keys[i].str.compare(m.options.prefix.size(), redis_detail::internal_marker.size(),
                                  redis_detail::internal_marker) == 0) {
            continue;  // coordination state (leases, tag sets, ...), not an entry
          }
          const std::string_view key =
              std::string_view(keys[i].str).substr(m.options.prefix.size());
          if (!visit(key, e.str)) {
            stop = true;
            return {};
          }
        }
        return {};
      });
}

}  // namespace layercache
