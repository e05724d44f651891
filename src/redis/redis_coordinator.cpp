// redis_coordinator.cpp — leases, versioned writes, tags, namespaces and the bus, in Redis.
//
// Key names, for a layer with prefix P (docs/design.md):
//   P<key>                 the envelope, or a tombstone after a delete
//   P__lc:lease:<key>      hash {t: token, w: "1" once another instance waits}; PX lease_ttl
//   P__lc:tag:<tag>        set of keys carrying the tag; expires with its longest-lived key
//   P__lc:seq:<origin>     the origin's bus sequence counter; expires 24 h after its last
//                          message, so a silent origin restarts at 1 (a fresh start, not a loss)
//   P__lc:ns:<path>        a namespace's generation (never deleted: clear() skips it)
//   P__lc:nsv:<path>       "hi:lo", the version of its latest rotation (kept like the generation)
//   P__lc:fence            hash of the recent invalidations a late write must lose to, field ->
//                          "hi:lo" version: c (clear), p<prefix>, t<tag> (any), a<tags> (all:
//                          "<len>:<tag>" per tag, sorted); kept tombstone_ttl (clear() skips it)
//   P__lc:bus, P__lc:fill  the pub/sub channels: invalidations; lease wake-ups (payload = key)
// Versions compare as (hi, lo) 32-bit halves because Lua numbers are doubles; the scripts read a
// stored value's version from the envelope header (offset 35, docs/format.md) or the tombstone.
//
// Concurrency: scripts run atomically in Redis, which is what orders writes against leases and
// against each other; the bus message of a write is published by the same script, after the write,
// so a subscriber that drops its L1 copy and re-reads always sees the new value. In this process:
// `listener_mu_` guards the listener and is held while it runs (listen(null) waits for a running
// callback); `waiters_mu_` guards lease waiters; `leases_mu_` the leases being renewed; `seq_mu_`
// the last sequence number seen per origin and when (written by the subscriber thread; origins
// silent for longer than their sequence key lives are forgotten, which bounds the map). No lock is
// held across a Redis call. Leases: every write that does not run its script (breaker open, script
// failed) gives back the leases it carried; a write the script runs releases them itself.
#include "redis/redis_coordinator.hpp"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

#include "layercache/detail/envelope.hpp"
#include "redis/bus_message.hpp"
#include "redis/scan.hpp"
#include "redis/subscriber.hpp"
#include "redis/wire.hpp"

namespace layercache::redis_detail {

using std::chrono::milliseconds;
using steady = std::chrono::steady_clock;

bool is_tombstone(std::string_view b) noexcept {
  return b.size() == 10 && static_cast<unsigned char>(b[0]) == 0xA7 &&
         static_cast<unsigned char>(b[1]) == 0xFE;
}

std::uint64_t tombstone_version(std::string_view b) noexcept {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < 8 && 2 + i < b.size(); ++i) {
    v |= static_cast<std::uint64_t>(static_cast<unsigned char>(b[2 + i])) << (8 * i);
  }
  return v;
}

namespace {

// Shared by every script: tombstones, version extraction and comparison, message items.
constexpr std::string_view lua_prelude = R"lua(
local function is_tomb(v) return #v == 10 and string.byte(v, 1) == 167 and string.byte(v, 2) == 254 end
local function ver(v)
  local off = 36
  if is_tomb(v) then off = 3 end
  if #v < off + 7 then return -1, -1 end
  local a, b, c, d, e, f, g, h = string.byte(v, off, off + 7)
  return e + f * 256 + g * 65536 + h * 16777216, a + b * 256 + c * 65536 + d * 16777216
end
local function not_older(hi, lo, shi, slo) return hi > shi or (hi == shi and lo >= slo) end
local function parse_ver(s)
  local a, b = string.match(s, '^(%d+):(%d+)$')
  if not a then return nil end
  return tonumber(a), tonumber(b)
end
-- A version's wall milliseconds (version_clock.hpp: microseconds << 12 | counter).
local function ver_ms(hi, lo) return math.floor((hi * 1048576 + math.floor(lo / 4096)) / 1000) end
-- Records an invalidation in the fence hash (a newer one of the same field stays) and drops the
-- fences older than ttl ms before it, so the hash holds what a write retried within the tombstone
-- lifetime can still meet.
local function add_fence(fkey, field, hi, lo, ttl)
  local chi, clo = parse_ver(redis.call('HGET', fkey, field) or '')
  if not chi or not not_older(chi, clo, hi, lo) then redis.call('HSET', fkey, field, hi .. ':' .. lo) end
  local limit = ver_ms(hi, lo) - ttl
  local all = redis.call('HGETALL', fkey)
  for i = 1, #all, 2 do
    local fhi, flo = parse_ver(all[i + 1])
    if not fhi or ver_ms(fhi, flo) < limit then redis.call('HDEL', fkey, all[i]) end
  end
  redis.call('PEXPIRE', fkey, ttl)
end
-- "<len>:<tag>" per tag: the field of an all-tags invalidation (the caller sorts the tags).
local function combo(tags)
  local parts = {}
  for _, t in ipairs(tags) do parts[#parts + 1] = #t .. ':' .. t end
  return table.concat(parts)
end
-- The PEXPIRE below is seq_key_lifetime in C++: keep them equal.
local function announce(seqkey, channel, origin, op, vstr, la, lb)
  local seq = redis.call('INCR', seqkey)
  redis.call('PEXPIRE', seqkey, 86400000)
  local parts = {'lc1|', origin, '|', seq, '|', op, '|', vstr, '|', #la, '|', #lb, '|'}
  for _, s in ipairs(la) do parts[#parts + 1] = #s .. ':' .. s end
  for _, s in ipairs(lb) do parts[#parts + 1] = #s .. ':' .. s end
  redis.call('PUBLISH', channel, table.concat(parts))
end
)lua";

// KEYS: value, lease. ARGV: token, lease ms, force. -> {1, value} | {2[, tombstone hi, lo]} |
// {3, pttl}
constexpr std::string_view lua_acquire = R"lua(
local v = redis.call('GET', KEYS[1])
if v and not is_tomb(v) then return {1, v} end
if ARGV[3] == '1' or redis.call('EXISTS', KEYS[2]) == 0 then
  local w = redis.call('HGET', KEYS[2], 'w')
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 't', ARGV[1])
  if w then redis.call('HSET', KEYS[2], 'w', w) end
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  if v then
    local hi, lo = ver(v)
    return {2, hi, lo}
  end
  return {2}
end
redis.call('HSET', KEYS[2], 'w', '1')
return {3, redis.call('PTTL', KEYS[2])}
)lua";

// KEYS: lease. ARGV: token, lease ms.
constexpr std::string_view lua_renew = R"lua(
if redis.call('HGET', KEYS[1], 't') == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
)lua";

// KEYS: lease. ARGV: token, fill channel, key.
constexpr std::string_view lua_release = R"lua(
if redis.call('HGET', KEYS[1], 't') ~= ARGV[1] then return 0 end
local w = redis.call('HGET', KEYS[1], 'w')
redis.call('DEL', KEYS[1])
if w then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return 1
)lua";

// KEYS: seq, fence, then per write: value, lease, tag sets... ARGV: bus channel, fill channel,
// origin, tombstone ms, n, quiet, tag-set key prefix length (a fill loses a tie: two instances'
// versions can be equal when their clocks read the same millisecond, and a delete or set of that
// millisecond must not be undone by a fetch that began in it), then per write 8 fields: kind
// (s|f|d), hi, lo, bytes (d: the version, 8 bytes LE), px ('0' = no expiry), token, tag count,
// key. -> per write 1 stored, 0 refused. A token is checked only for a fill (a fill whose lease
// was taken over must not land), but any write carrying one releases it: a fill turned into a
// tombstone (too big, already expired) gives its lease back in the same step as it deletes, so a
// woken waiter never reads the older value.
// A value not newer than a clear, a prefix or a tag invalidation covering it (the fence hash) is
// refused like one not newer than the key's tombstone: a write acknowledged before the
// invalidation but reaching Redis after it (queued, retried) would otherwise outlive it, since the
// invalidation could not tombstone a key it did not find.
// Namespaces: after the 8 fields, a level count and per level the 1-based offset and length of
// its generation in the key; KEYS gain per level the generation key and the rotation-version key
// (before the tag sets). A set or delete written under a generation that is no longer the
// namespace's (its instance had not heard of a rotation yet) goes to the current generation when
// it is newer than that rotation, and is refused otherwise (it belonged to what the rotation
// dropped); a fill under an old generation is refused. The key a redirected write lands on is
// computed here, not declared in KEYS (Redis Cluster needs the namespace's slot: issue #12).
constexpr std::string_view lua_write = R"lua(
local n = tonumber(ARGV[5])
local tagpre = tonumber(ARGV[7])
local valpre = ARGV[8]
local ai, ki = 9, 3
local out, keys = {}, {}
local vhi, vlo = 0, 0
local fences = {}
do
  local f = redis.call('HGETALL', KEYS[2])
  for i = 1, #f, 2 do
    local fhi, flo = parse_ver(f[i + 1])
    if fhi then fences[#fences + 1] = {string.sub(f[i], 1, 1), string.sub(f[i], 2), fhi, flo} end
  end
end
-- Whether an invalidation not older than (hi, lo) covers the key with these tag-set keys.
local function fenced(kind, key, hi, lo, tag0, ntags)
  if #fences == 0 then return false end
  local mine = {}
  for t = tag0, tag0 + ntags - 1 do mine[string.sub(KEYS[t], tagpre + 1)] = true end
  for _, f in ipairs(fences) do
    local newer = not not_older(hi, lo, f[3], f[4]) or (kind == 'f' and hi == f[3] and lo == f[4])
    if newer then
      local what, subject = f[1], f[2]
      if what == 'c' then return true end
      if what == 'p' and string.sub(key, 1, #subject) == subject then return true end
      if what == 't' and mine[subject] then return true end
      if what == 'a' then
        local pos, all = 1, true
        while pos <= #subject do
          local colon = string.find(subject, ':', pos, true)
          if not colon then all = false break end
          local len = tonumber(string.sub(subject, pos, colon - 1))
          if not len or not mine[string.sub(subject, colon + 1, colon + len)] then all = false break end
          pos = colon + 1 + len
        end
        if all then return true end
      end
    end
  end
  return false
end
for i = 1, n do
  local kind, hi, lo, bytes, px, token = ARGV[ai], tonumber(ARGV[ai + 1]), tonumber(ARGV[ai + 2]), ARGV[ai + 3], ARGV[ai + 4], ARGV[ai + 5]
  local ntags, key, nlevels = tonumber(ARGV[ai + 6]), ARGV[ai + 7], tonumber(ARGV[ai + 8])
  local vkey, lkey = KEYS[ki], KEYS[ki + 1]
  local ok, tell = true, kind ~= 'f'
  local shift = 0
  for l = 1, nlevels do
    local off, len = tonumber(ARGV[ai + 7 + 2 * l]) + shift, tonumber(ARGV[ai + 8 + 2 * l])
    local cur = redis.call('GET', KEYS[ki + 2 * l]) or '0'
    if ok and string.sub(key, off, off + len - 1) ~= cur then
      local rhi, rlo = parse_ver(redis.call('GET', KEYS[ki + 1 + 2 * l]) or '')
      if kind == 'f' or (rhi and not_older(rhi, rlo, hi, lo)) then ok = false
      else
        key = string.sub(key, 1, off - 1) .. cur .. string.sub(key, off + len)
        shift = shift + #cur - len
        vkey = valpre .. key
      end
    end
  end
  local tag0 = ki + 2 + 2 * nlevels
  ai = ai + 9 + 2 * nlevels
  ki = tag0 + ntags
  if kind == 'f' and token ~= '' and redis.call('HGET', lkey, 't') ~= token then ok = false end
  if ok and kind ~= 'd' and fenced(kind, key, hi, lo, tag0, ntags) then ok = false end
  if ok then
    local cur = redis.call('GET', vkey)
    if cur then
      local shi, slo = ver(cur)
      if not not_older(hi, lo, shi, slo) or (kind == 'f' and hi == shi and lo == slo) then ok = false
      elseif kind == 'f' and not is_tomb(cur) then tell = true end
    end
  end
  if ok then
    if kind == 'd' then
      redis.call('SET', vkey, '\167\254' .. bytes, 'PX', ARGV[4])
    elseif px == '0' then
      redis.call('SET', vkey, bytes)
    else
      redis.call('SET', vkey, bytes, 'PX', px)
    end
    for t = tag0, tag0 + ntags - 1 do
      local ttl = redis.call('PTTL', KEYS[t])
      redis.call('SADD', KEYS[t], key)
      if px == '0' then redis.call('PERSIST', KEYS[t])
      elseif ttl ~= -1 and ttl < tonumber(px) then redis.call('PEXPIRE', KEYS[t], px) end
    end
    if tell then
      keys[#keys + 1] = key
      if not_older(hi, lo, vhi, vlo) then vhi, vlo = hi, lo end
    end
  end
  if token ~= '' and redis.call('HGET', lkey, 't') == token then
    local w = redis.call('HGET', lkey, 'w')
    redis.call('DEL', lkey)
    if w then redis.call('PUBLISH', ARGV[2], key) end
  end
  out[i] = ok and 1 or 0
end
if #keys > 0 and ARGV[6] ~= '1' then
  announce(KEYS[1], ARGV[1], ARGV[3], 'k', vhi .. ':' .. vlo, keys, {})
end
return out
)lua";

// KEYS: seq, fence, tag sets... ARGV: bus channel, origin, all ('1'|'0'), tombstone ms, value-key
// prefix, tombstone version (8 bytes LE), hi, lo, then the tags (sorted). -> the matched keys.
// A member whose stored value is newer than the invalidation (written by a host whose clock runs
// ahead) survives it, and so must its membership: a later, newer invalidation of the tag has to
// find it. Only members tombstoned here or already gone leave the sets. The invalidation is also
// recorded in the fence hash, for the writes of covered keys still on their way (lua_write).
constexpr std::string_view lua_tags = R"lua(
local tagkeys = {}
for t = 3, #KEYS do tagkeys[#tagkeys + 1] = KEYS[t] end
local members
if ARGV[3] == '1' then members = redis.call('SINTER', unpack(tagkeys))
else members = redis.call('SUNION', unpack(tagkeys)) end
local hi, lo = tonumber(ARGV[7]), tonumber(ARGV[8])
local gone, survivors = {}, 0
for _, m in ipairs(members) do
  local vkey = ARGV[5] .. m
  local cur = redis.call('GET', vkey)
  local left = true
  if cur and not is_tomb(cur) then
    local shi, slo = ver(cur)
    if not_older(hi, lo, shi, slo) then redis.call('SET', vkey, '\167\254' .. ARGV[6], 'PX', ARGV[4])
    else left = false end
  end
  if left then gone[#gone + 1] = m else survivors = survivors + 1 end
end
if ARGV[3] ~= '1' and survivors == 0 then
  for _, tk in ipairs(tagkeys) do redis.call('DEL', tk) end
else
  for _, tk in ipairs(tagkeys) do
    for _, m in ipairs(gone) do redis.call('SREM', tk, m) end
  end
end
local tags = {}
for a = 9, #ARGV do tags[#tags + 1] = ARGV[a] end
if ARGV[3] == '1' then add_fence(KEYS[2], 'a' .. combo(tags), hi, lo, tonumber(ARGV[4]))
else
  for _, t in ipairs(tags) do add_fence(KEYS[2], 't' .. t, hi, lo, tonumber(ARGV[4])) end
end
announce(KEYS[1], ARGV[1], ARGV[2], ARGV[3] == '1' and 'T' or 't', hi .. ':' .. lo, tags, members)
return members
)lua";

// KEYS: fence. ARGV: field, hi, lo, tombstone ms. -> 1. A prefix invalidation or a clear records
// itself before it starts removing keys: a write landing while it walks is refused too.
constexpr std::string_view lua_fence = R"lua(
add_fence(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
return 1
)lua";

// KEYS: seq. ARGV: bus channel, origin, op, version, count of A, then A items, B items. -> 1
constexpr std::string_view lua_announce = R"lua(
local la, lb, na = {}, {}, tonumber(ARGV[5])
for a = 6, 5 + na do la[#la + 1] = ARGV[a] end
for a = 6 + na, #ARGV do lb[#lb + 1] = ARGV[a] end
announce(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], la, lb)
return 1
)lua";

// KEYS: namespace generation, seq, rotation version. ARGV: bus channel, origin, path, hi, lo.
// -> the new generation. The rotation's version (the newest, if two race) lets lua_write tell a
// write issued before the rotation from one issued after it by an instance that had not heard.
constexpr std::string_view lua_rotate = R"lua(
local g = redis.call('INCR', KEYS[1])
local hi, lo = tonumber(ARGV[4]), tonumber(ARGV[5])
local chi, clo = parse_ver(redis.call('GET', KEYS[3]) or '')
if not chi or not not_older(chi, clo, hi, lo) then redis.call('SET', KEYS[3], hi .. ':' .. lo) end
announce(KEYS[2], ARGV[1], ARGV[2], 'r', hi .. ':' .. lo, {ARGV[3]}, {tostring(g)})
return g
)lua";

// How long an origin's sequence key lives after its last message (the PEXPIRE in lua_prelude). An
// origin silent for longer restarts at 1; a receiver forgets origins it has not heard from for
// longer, so its memory is bounded by the origins active in that window.
constexpr std::int64_t seq_key_lifetime_ms = 86'400'000;
// How often a receiver looks for such origins (a sweep of the whole map).
constexpr std::int64_t origin_sweep_every_ms = seq_key_lifetime_ms / 24;

enum script_id : std::size_t {
  s_acquire,
  s_renew,
  s_release,
  s_write,
  s_tags,
  s_announce,
  s_rotate,
  s_fence,
  s_count
};

std::string le64(std::uint64_t v) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>(v >> (8 * i));
  return out;
}

// One namespace level of a stack key ("@ns:<len>:<name>#<gen>:", nested levels in a row): its
// path ("a/b") and where its generation's digits are in the key.
struct ns_level {
  std::string path;
  std::size_t offset = 0;
  std::size_t length = 0;
};

std::vector<ns_level> ns_levels(std::string_view key) {
  std::vector<ns_level> out;
  std::string path;
  std::size_t pos = 0;
  constexpr std::string_view marker = "@ns:";
  auto digits = [&](std::size_t from) {
    std::size_t end = from;
    while (end < key.size() && key[end] >= '0' && key[end] <= '9') ++end;
    return end;
  };
  while (key.substr(pos, marker.size()) == marker) {
    const std::size_t len_at = pos + marker.size();
    const std::size_t len_end = digits(len_at);
    std::size_t len = 0;
    if (len_end == len_at || len_end >= key.size() || key[len_end] != ':' ||
        std::from_chars(key.data() + len_at, key.data() + len_end, len).ec != std::errc()) {
      break;
    }
    const std::size_t name_at = len_end + 1;
    if (name_at + len >= key.size() || key[name_at + len] != '#') break;
    const std::size_t gen_at = name_at + len + 1;
    const std::size_t gen_end = digits(gen_at);
    if (gen_end == gen_at || gen_end >= key.size() || key[gen_end] != ':') break;
    const std::string_view name = key.substr(name_at, len);
    path = path.empty() ? std::string(name) : path + "/" + std::string(name);
    out.push_back({path, gen_at, gen_end - gen_at});
    pos = gen_end + 1;
  }
  return out;
}

std::uint64_t envelope_version(std::string_view env) {
  detail::envelope_header h;
  return detail::peek_envelope_header(env, h).ok() ? h.version : 0;
}

class redis_coordinator final : public detail::coordinator {
 public:
  explicit redis_coordinator(coordinator_context ctx) : ctx_(std::move(ctx)), o_(*ctx_.options) {
    std::random_device rd;
    rng_.seed((static_cast<std::uint64_t>(rd()) << 32) ^ rd() ^
              static_cast<std::uint64_t>(steady::now().time_since_epoch().count()));
    origin_ = rng_() | 1;  // never 0: 0 means "unknown" in messages
    const std::string base = o_.prefix + std::string(internal_marker);
    lease_prefix_ = base + "lease:";
    tag_prefix_ = base + "tag:";
    ns_prefix_ = base + "ns:";
    nsv_prefix_ = base + "nsv:";
    seq_key_ = base + "seq:" + std::to_string(origin_);
    bus_channel_ = base + "bus";
    fill_channel_ = base + "fill";
    fence_key_ = base + "fence";
    const std::string_view bodies[s_count] = {lua_acquire, lua_renew,    lua_release, lua_write,
                                              lua_tags,    lua_announce, lua_rotate,  lua_fence};
    for (std::size_t i = 0; i < s_count; ++i) {
      scripts_[i].source = std::string(lua_prelude) + std::string(bodies[i]);
    }
    subscriber_options so;
    so.url = o_.url;
    so.channels = {bus_channel_, fill_channel_};
    so.connect_timeout = o_.connect_timeout;
    sub_ = std::make_unique<subscriber>(
        so, [this](std::string_view ch, std::string_view payload) { on_message(ch, payload); },
        [this](bool up) { on_state(up); });
    renewer_ = std::jthread([this](std::stop_token stop) { renew_loop(stop); });
  }

  ~redis_coordinator() override {
    renewer_.request_stop();
    leases_cv_.notify_all();
    renewer_ = {};
    sub_.reset();  // no callback runs after this
  }

  void listen(detail::bus_listener* listener) override {
    std::lock_guard lock(listener_mu_);
    listeners_.push_back(listener);
  }
  void unlisten(detail::bus_listener* listener) override {
    std::lock_guard lock(listener_mu_);
    std::erase(listeners_, listener);
  }
  std::uint64_t origin() const noexcept override { return origin_; }
  bool bus_up() const noexcept override { return sub_->subscribed(); }
  milliseconds bus_down_l1_ttl() const noexcept override { return o_.bus_down_l1_ttl; }
  milliseconds lease_wait() const noexcept override { return o_.lease_wait; }

  detail::lease_answer acquire(std::string_view key, bool force) override {
    detail::lease_answer out;
    if (!ctx_.read_allowed()) {
      out.error = ctx_.read_outcome(status(errc::unavailable, "circuit breaker open"));
      return out;
    }
    const std::string vkey = o_.prefix + std::string(key);
    const std::string lkey = lease_prefix_ + std::string(key);
    const std::string token = new_token();
    const std::string ms = std::to_string(o_.lease_ttl.count());
    const std::string_view keys[] = {vkey, lkey};
    const std::string_view args[] = {token, ms, force ? "1" : "0"};
    const std::uint64_t seen = watch(key);
    detail::lease_answer answer = acquire_once(keys, args, token, key);
    if (answer.type == detail::lease_answer::kind::held) {
      answer.wakeups = seen;
    } else {
      stop_waiting(key);
    }
    return answer;
  }

  detail::lease_answer acquire_once(std::span<const std::string_view> keys,
                                    std::span<const std::string_view> args,
                                    const std::string& token, std::string_view key) {
    detail::lease_answer out;
    result r = run(s_acquire, keys, args, o_.read_deadline);
    status s = ctx_.read_outcome(r.error);
    if (!s.ok()) {
      out.error = std::move(s);
      return out;
    }
    const reply& v = r.value;
    if (v.type != reply::kind::array || v.elements.empty() ||
        v.elements[0].type != reply::kind::integer) {
      out.error = status(errc::internal, "unexpected reply to the lease script");
      return out;
    }
    switch (v.elements[0].integer) {
      case 1:
        if (v.elements.size() == 2 && v.elements[1].type == reply::kind::string) {
          out.type = detail::lease_answer::kind::value;
          out.bytes = std::move(r.value.elements[1].str);
          return out;
        }
        break;
      case 2:
        out.type = detail::lease_answer::kind::granted;
        out.token = token;
        if (v.elements.size() == 3 && v.elements[1].type == reply::kind::integer &&
            v.elements[2].type == reply::kind::integer && v.elements[1].integer >= 0 &&
            v.elements[2].integer >= 0) {
          out.tombstone = (static_cast<std::uint64_t>(v.elements[1].integer) << 32) |
                          static_cast<std::uint64_t>(v.elements[2].integer);
        }
        hold(key, token);
        return out;
      case 3:
        out.type = detail::lease_answer::kind::held;
        if (v.elements.size() == 2 && v.elements[1].type == reply::kind::integer) {
          out.held_for = milliseconds(std::max<long long>(0, v.elements[1].integer));
        }
        return out;
      default:
        break;
    }
    out.type = detail::lease_answer::kind::failed;
    out.error = status(errc::internal, "unexpected reply to the lease script");
    return out;
  }

  void await_fill(std::string_view key, std::uint64_t seen, steady::time_point until) override {
    const auto end = std::min(until, steady::now() + o_.lease_poll);
    std::unique_lock lock(waiters_mu_);
    auto it = waiters_.find(std::string(key));
    if (it == waiters_.end()) return;  // not registered: nothing to wait on
    // `w` stays valid: unordered_map references survive rehashing, and only the last waiter of a
    // key erases it.
    waiter& w = it->second;
    waiters_cv_.wait_until(lock, end, [&] { return w.wakeups != seen; });
    if (--w.count == 0) waiters_.erase(std::string(key));
  }

  void stop_waiting(std::string_view key) override {
    std::lock_guard lock(waiters_mu_);
    auto it = waiters_.find(std::string(key));
    if (it != waiters_.end() && --it->second.count == 0) waiters_.erase(it);
  }

  // Registers a waiter for `key` before its acquire is sent; returns the wake-up count seen.
  std::uint64_t watch(std::string_view key) {
    std::lock_guard lock(waiters_mu_);
    waiter& w = waiters_[std::string(key)];
    ++w.count;
    return w.wakeups;
  }

  void release(std::string_view key, std::string_view token) override {
    unhold(key, token);
    std::vector<std::string> argv = {
        "EVALSHA",     sha(s_release),  "1", lease_prefix_ + std::string(key), std::string(token),
        fill_channel_, std::string(key)};
    if (argv[1].empty()) {
      argv[0] = "EVAL";
      argv[1] = scripts_[s_release].source;
    }
    ctx_.client->execute_async(std::move(argv), o_.write_deadline, [](result) {});
  }

  // Turns a value write that will not be stored into a tombstone of its version. It keeps the
  // lease it carried: the write script releases it together with the tombstone.
  static void to_tombstone(detail::coordinated_write& w) {
    w.version = envelope_version(w.bytes);
    w.type = detail::coordinated_write::kind::del;
    w.tags = {};
  }

  // Gives back the leases of writes whose script will not run (or did not run to the end): the
  // renewer stops renewing them and waiting instances are woken, instead of every other instance
  // waiting lease_wait for each key while this one is cut off from writing.
  void release_leases(std::span<const detail::coordinated_write> writes) {
    for (const auto& w : writes) {
      if (!w.lease.empty()) release(w.key, w.lease);
    }
  }

  detail::coordinated_result write(std::span<const detail::coordinated_write> writes) override {
    if (!writes.empty() && !ctx_.write_allowed()) {
      release_leases(writes);
      detail::coordinated_result out;
      out.rejected.assign(writes.size(), false);
      out.error = ctx_.write_outcome(status(errc::unavailable, "circuit breaker open"));
      return out;
    }
    return write_batch(writes, /*quiet=*/false);
  }

  // One write script for a batch (the caller has asked the write breaker); `quiet` leaves the
  // announcement to the caller (a prefix invalidation announces once for all its batches).
  detail::coordinated_result write_batch(std::span<const detail::coordinated_write> writes,
                                         bool quiet) {
    detail::coordinated_result out;
    out.rejected.assign(writes.size(), false);
    if (writes.empty()) return out;
    std::vector<std::string> keys{seq_key_, fence_key_};
    std::vector<std::string> args{bus_channel_,
                                  fill_channel_,
                                  std::to_string(origin_),
                                  std::to_string(o_.tombstone_ttl.count()),
                                  std::to_string(writes.size()),
                                  quiet ? "1" : "0",
                                  std::to_string(tag_prefix_.size()),
                                  o_.prefix};
    std::vector<std::size_t> sent;  // index in `writes` of each entry sent
    status oversize;
    for (std::size_t i = 0; i < writes.size(); ++i) {
      detail::coordinated_write w = writes[i];
      if (w.type != detail::coordinated_write::kind::del && w.bytes.size() > o_.max_value_bytes) {
        oversize.update(status::layer_error(
            o_.name, errc::resource_exhausted,
            "value of " + std::to_string(w.bytes.size()) + " bytes for key '" + std::string(w.key) +
                "' exceeds max_value_bytes (" + std::to_string(o_.max_value_bytes) + ")"));
        // Not storing must not leave an older value behind: a tombstone of the same version.
        to_tombstone(w);
      }
      std::int64_t px = 0;
      if (w.type != detail::coordinated_write::kind::del) {
        px = px_for(w.expires_at_ms, ctx_.clock->now_ms(), o_.ttl);
        if (w.expires_at_ms != 0 && px <= 0) {
          // Already expired: nothing to keep, and nothing older may stay either.
          to_tombstone(w);
          px = 0;
        }
      }
      keys.push_back(o_.prefix + std::string(w.key));
      keys.push_back(lease_prefix_ + std::string(w.key));
      const std::vector<ns_level> levels = ns_levels(w.key);
      for (const auto& l : levels) {
        keys.push_back(ns_prefix_ + l.path);
        keys.push_back(nsv_prefix_ + l.path);
      }
      for (const auto& t : w.tags) keys.push_back(tag_prefix_ + t);
      const bool del = w.type == detail::coordinated_write::kind::del;
      const std::uint64_t version = del ? w.version : envelope_version(w.bytes);
      if (!w.lease.empty()) unhold(w.key, w.lease);
      args.emplace_back(del ? "d" : w.type == detail::coordinated_write::kind::fill ? "f" : "s");
      args.push_back(std::to_string(version >> 32));
      args.push_back(std::to_string(version & 0xFFFFFFFFu));
      args.push_back(del ? le64(version) : std::string(w.bytes));
      args.push_back(std::to_string(px));
      args.emplace_back(w.lease);
      args.push_back(std::to_string(w.tags.size()));
      args.emplace_back(w.key);
      args.push_back(std::to_string(levels.size()));
      for (const auto& l : levels) {
        args.push_back(std::to_string(l.offset + 1));
        args.push_back(std::to_string(l.length));
      }
      sent.push_back(i);
    }
    if (sent.empty()) {
      out.error = oversize;
      return out;
    }
    args[4] = std::to_string(sent.size());
    std::vector<std::string_view> kv(keys.begin(), keys.end());
    std::vector<std::string_view> av(args.begin(), args.end());
    result r = run(s_write, kv, av, o_.write_deadline);
    status s = ctx_.write_outcome(r.error);
    if (s.ok() && (r.value.type != reply::kind::array || r.value.elements.size() != sent.size())) {
      s = status::layer_error(o_.name, errc::internal, "unexpected reply to the write script");
    }
    if (s.ok()) {
      for (std::size_t k = 0; k < sent.size(); ++k) {
        out.rejected[sent[k]] = r.value.elements[k].integer == 0;
      }
    } else {
      // The script failed or its reply was lost: a lease it did not release must not stay held
      // until it expires (release checks the token, so one the script did release is untouched).
      release_leases(writes);
    }
    s.update(oversize);
    out.error = std::move(s);
    return out;
  }

  status invalidate_tags(std::span<const std::string> tags, bool all, std::uint64_t version,
                         std::vector<std::string>& removed) override {
    if (tags.empty()) return {};
    if (!ctx_.write_allowed()) return ctx_.write_outcome(status(errc::unavailable, "breaker open"));
    // Sorted and unique: an all-tags fence is found by its set of tags, in any order.
    std::vector<std::string> sorted(tags.begin(), tags.end());
    std::sort(sorted.begin(), sorted.end());
    sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
    std::vector<std::string> keys{seq_key_, fence_key_};
    for (const auto& t : sorted) keys.push_back(tag_prefix_ + t);
    std::vector<std::string> args{bus_channel_,
                                  std::to_string(origin_),
                                  all ? "1" : "0",
                                  std::to_string(o_.tombstone_ttl.count()),
                                  o_.prefix,
                                  le64(version),
                                  std::to_string(version >> 32),
                                  std::to_string(version & 0xFFFFFFFFu)};
    for (const auto& t : sorted) args.push_back(t);
    std::vector<std::string_view> kv(keys.begin(), keys.end());
    std::vector<std::string_view> av(args.begin(), args.end());
    result r = run(s_tags, kv, av, o_.write_deadline);
    status s = ctx_.write_outcome(r.error);
    if (!s.ok()) return s;
    if (r.value.type != reply::kind::array) {
      return status::layer_error(o_.name, errc::internal, "unexpected reply to the tag script");
    }
    for (auto& e : r.value.elements) removed.push_back(std::move(e.str));
    return {};
  }

  status invalidate_prefix(std::string_view prefix, std::uint64_t version) override {
    if (!ctx_.write_allowed()) return ctx_.write_outcome(status(errc::unavailable, "breaker open"));
    if (status f = fence("p" + std::string(prefix), version); !f.ok()) return f;
    // SCAN in bounded steps (a script scanning everything would block Redis), tombstoning each
    // batch with the write script (quiet), then one announcement for the whole prefix.
    const std::string internal = o_.prefix + std::string(internal_marker);
    status walked = scan_batches(*ctx_.client, glob_escape(o_.prefix + std::string(prefix)) + "*",
                                 "1000", o_.write_deadline, o_.name, ctx_.write_outcome,
                                 [&](const std::vector<reply>& found, bool&) -> status {
                                   std::vector<std::string> users;
                                   users.reserve(found.size());
                                   for (const auto& k : found) {
                                     if (k.str.compare(0, internal.size(), internal) != 0) {
                                       users.push_back(k.str.substr(o_.prefix.size()));
                                     }
                                   }
                                   std::vector<detail::coordinated_write> dels(users.size());
                                   for (std::size_t i = 0; i < users.size(); ++i) {
                                     dels[i].type = detail::coordinated_write::kind::del;
                                     dels[i].key = users[i];
                                     dels[i].version = version;
                                   }
                                   return write_batch(dels, /*quiet=*/true).error;
                                 });
    if (!walked.ok()) return walked;
    return announce('p', version, {std::string(prefix)}, {});
  }

  status fence_clear(std::uint64_t version) override {
    if (!ctx_.write_allowed()) return ctx_.write_outcome(status(errc::unavailable, "breaker open"));
    return fence("c", version);
  }

  status announce_clear(std::uint64_t version) override { return announce('c', version, {}, {}); }

  std::optional<std::uint64_t> generation(std::string_view path, status& error) override {
    if (!ctx_.read_allowed()) {
      error = ctx_.read_outcome(status(errc::unavailable, "circuit breaker open"));
      return std::nullopt;
    }
    const std::string k = ns_prefix_ + std::string(path);
    result r = ctx_.client->execute({"GET", k}, o_.read_deadline);
    error = ctx_.read_outcome(r.error);
    if (!error.ok()) return std::nullopt;
    if (r.value.type == reply::kind::nil) return 0;
    std::uint64_t g = 0;
    if (r.value.type != reply::kind::string || !parse_u64(r.value.str, g)) {
      error = status::layer_error(
          o_.name, errc::corruption,
          "namespace generation of '" + std::string(path) + "' is not a number");
      return std::nullopt;
    }
    return g;
  }

  std::optional<std::uint64_t> rotate(std::string_view path, std::uint64_t version,
                                      status& error) override {
    if (!ctx_.write_allowed()) {
      error = ctx_.write_outcome(status(errc::unavailable, "circuit breaker open"));
      return std::nullopt;
    }
    const std::string gen_key = ns_prefix_ + std::string(path);
    const std::string ver_key = nsv_prefix_ + std::string(path);
    const std::string origin = std::to_string(origin_);
    const std::string hi = std::to_string(version >> 32);
    const std::string lo = std::to_string(version & 0xFFFFFFFFu);
    const std::string_view keys[] = {gen_key, seq_key_, ver_key};
    const std::string_view args[] = {bus_channel_, origin, path, hi, lo};
    result r = run(s_rotate, keys, args, o_.write_deadline);
    error = ctx_.write_outcome(r.error);
    if (!error.ok()) return std::nullopt;
    if (r.value.type != reply::kind::integer || r.value.integer < 0) {
      error = status::layer_error(o_.name, errc::internal, "unexpected reply to the rotate script");
      return std::nullopt;
    }
    return static_cast<std::uint64_t>(r.value.integer);
  }

  // Origins whose sequence this instance remembers (bounded: see forget_idle_origins_locked).
  std::size_t origins_tracked() {
    std::lock_guard lock(seq_mu_);
    return last_seq_.size();
  }

 private:
  struct script {
    std::string source;
  };
  // Digests learnt with SCRIPT LOAD (empty until then). Shared with the load callbacks.
  struct digest_table {
    std::mutex mu;
    std::string sha[s_count];
    bool loading[s_count] = {};
  };
  struct waiter {
    std::size_t count = 0;
    std::uint64_t wakeups = 0;
  };

  static bool parse_u64(std::string_view s, std::uint64_t& out) {
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    return !s.empty() && ec == std::errc() && end == s.data() + s.size();
  }

  std::string new_token() {
    std::lock_guard lock(rng_mu_);
    static constexpr char hex[] = "0123456789abcdef";
    std::string t(32, '0');
    for (int half = 0; half < 2; ++half) {
      std::uint64_t v = rng_();
      for (int i = 0; i < 16; ++i) {
        t[static_cast<std::size_t>(half * 16 + i)] = hex[v & 15];
        v >>= 4;
      }
    }
    return t;
  }

  std::string sha(script_id id) {
    std::lock_guard lock(digests_->mu);
    return digests_->sha[id];
  }

  // EVALSHA when the script's digest is known, EVAL otherwise (which also caches the script in
  // Redis) — and NOSCRIPT (a restarted or flushed Redis) falls back to EVAL too, so no call ever
  // fails for a missing script. The digest is learnt once with an asynchronous SCRIPT LOAD.
  result run(script_id id, std::span<const std::string_view> keys,
             std::span<const std::string_view> args, milliseconds deadline) {
    const std::string digest = sha(id);
    const std::string nkeys = std::to_string(keys.size());
    std::vector<std::string_view> argv;
    argv.reserve(3 + keys.size() + args.size());
    argv.emplace_back(digest.empty() ? "EVAL" : "EVALSHA");
    argv.emplace_back(digest.empty() ? std::string_view(scripts_[id].source)
                                     : std::string_view(digest));
    argv.emplace_back(nkeys);
    argv.insert(argv.end(), keys.begin(), keys.end());
    argv.insert(argv.end(), args.begin(), args.end());
    result r = ctx_.client->execute(argv, deadline);
    if (!digest.empty() && r.value.type == reply::kind::error &&
        r.value.str.compare(0, 8, "NOSCRIPT") == 0) {
      argv[0] = "EVAL";
      argv[1] = scripts_[id].source;
      r = ctx_.client->execute(argv, deadline);
    }
    if (digest.empty()) learn_sha(id);
    return r;
  }

  void learn_sha(script_id id) {
    {
      std::lock_guard lock(digests_->mu);
      if (digests_->loading[id]) return;
      digests_->loading[id] = true;
    }
    // The callback may run after this coordinator is gone (the client outlives it): it only
    // touches the digest table it shares.
    ctx_.client->execute_async({"SCRIPT", "LOAD", scripts_[id].source}, o_.write_deadline,
                               [digests = digests_, id](result r) {
                                 std::lock_guard lock(digests->mu);
                                 digests->loading[id] = false;
                                 if (r.error.ok() && r.value.type == reply::kind::string) {
                                   digests->sha[id] = std::move(r.value.str);
                                 }
                               });
  }

  status announce(char op, std::uint64_t version, std::vector<std::string> a,
                  std::vector<std::string> b) {
    if (!ctx_.write_allowed()) return ctx_.write_outcome(status(errc::unavailable, "breaker open"));
    std::vector<std::string> args{
        bus_channel_, std::to_string(origin_), std::string(1, op),
        std::to_string(version >> 32) + ":" + std::to_string(version & 0xFFFFFFFFu),
        std::to_string(a.size())};
    for (auto& s : a) args.push_back(std::move(s));
    for (auto& s : b) args.push_back(std::move(s));
    const std::string_view keys[] = {seq_key_};
    std::vector<std::string_view> av(args.begin(), args.end());
    return ctx_.write_outcome(run(s_announce, keys, av, o_.write_deadline).error);
  }

  // Records an invalidation that late writes must lose to (lua_fence); the caller asked the
  // write breaker.
  status fence(const std::string& field, std::uint64_t version) {
    const std::string hi = std::to_string(version >> 32);
    const std::string lo = std::to_string(version & 0xFFFFFFFFu);
    const std::string ttl = std::to_string(o_.tombstone_ttl.count());
    const std::string_view keys[] = {fence_key_};
    const std::string_view args[] = {field, hi, lo, ttl};
    return ctx_.write_outcome(run(s_fence, keys, args, o_.write_deadline).error);
  }

  // ---- leases held by this process: renewed until filled or released ------------------------
  // A new lease needs no renewal before lease_ttl / 3, so the renewer is not woken for it.
  void hold(std::string_view key, const std::string& token) {
    std::lock_guard lock(leases_mu_);
    leases_[token] = std::string(key);
  }
  void unhold(std::string_view key, std::string_view token) {
    (void)key;
    std::lock_guard lock(leases_mu_);
    leases_.erase(std::string(token));
  }

  void renew_loop(std::stop_token stop) {
    const milliseconds every = std::max(milliseconds(1), o_.lease_ttl / 3);
    std::unique_lock lock(leases_mu_);
    while (!stop.stop_requested()) {
      leases_cv_.wait_for(lock, stop, every, [] { return false; });
      if (stop.stop_requested()) return;
      std::vector<std::pair<std::string, std::string>> held(leases_.begin(), leases_.end());
      lock.unlock();
      const std::string ms = std::to_string(o_.lease_ttl.count());
      for (auto& [token, key] : held) {
        std::vector<std::string> argv = {"EVALSHA",           sha(s_renew), "1",
                                         lease_prefix_ + key, token,        ms};
        if (argv[1].empty()) {
          argv[0] = "EVAL";
          argv[1] = scripts_[s_renew].source;
        }
        ctx_.client->execute_async(std::move(argv), o_.write_deadline, [](result) {});
      }
      lock.lock();
    }
  }

  // ---- the bus (subscriber thread) -----------------------------------------------------------
  void wake(std::string_view key) {
    {
      std::lock_guard lock(waiters_mu_);
      if (waiters_.empty()) return;
      auto it = waiters_.find(std::string(key));
      if (it == waiters_.end()) return;
      ++it->second.wakeups;
    }
    waiters_cv_.notify_all();
  }

  void wake_all() {
    {
      std::lock_guard lock(waiters_mu_);
      for (auto& [k, w] : waiters_) ++w.wakeups;
    }
    waiters_cv_.notify_all();
  }

  void on_state(bool up) {
    if (!up) {
      had_loss_ = true;
      std::lock_guard lock(listener_mu_);
      for (auto* l : listeners_) l->on_down();
      return;
    }
    {
      // A new subscription: sequences restart from whatever comes next.
      std::lock_guard lock(seq_mu_);
      last_seq_.clear();
    }
    wake_all();  // a wake-up may have been lost with the old connection
    if (!had_loss_) return;
    had_loss_ = false;
    std::lock_guard lock(listener_mu_);
    for (auto* l : listeners_) l->on_lost("the bus subscription was lost and restored");
  }

  void on_message(std::string_view channel, std::string_view payload) {
    if (channel == fill_channel_) {
      wake(payload);
      return;
    }
    std::string why;
    std::optional<bus_message> m = parse_bus_message(payload, &why);
    if (!m) return;  // not ours (someone else publishing on the channel): nothing to do
    if (m->origin == origin_) return;
    const bool gap = sequence_gap(m->origin, m->seq);
    if (m->op == 'k' || m->op == 't' || m->op == 'T') {
      for (const auto& k : m->op == 'k' ? m->a : m->b) wake(k);
    }
    std::lock_guard lock(listener_mu_);
    for (auto* l : listeners_) deliver(*l, *m, gap);
  }

  // Records `seq` as the newest message of `origin`; true when messages of it were lost since the
  // previous one. Seq 1 is a fresh start, not a loss: the origin's counter expired after
  // seq_key_lifetime without a message and INCR began again (or Redis restarted, which broke the
  // subscription and is reported as a loss by on_state). Any other jump is a loss.
  bool sequence_gap(std::uint64_t origin, std::uint64_t seq) {
    const unix_ms now = ctx_.clock->now_ms();
    std::lock_guard lock(seq_mu_);
    forget_idle_origins_locked(now);
    auto [it, fresh] = last_seq_.try_emplace(origin, origin_seq{seq, now});
    if (fresh) return false;
    const bool gap = seq != 1 && seq != it->second.seq + 1;
    it->second = origin_seq{seq, now};
    return gap;
  }

  // Forgets origins silent for longer than their sequence key lives: their key has expired, so
  // their next message is a fresh start (seq 1) anyway. Sweeps at most every
  // origin_sweep_every_ms (and after the clock went back).
  void forget_idle_origins_locked(unix_ms now) {
    if (now >= last_sweep_ms_ && now - last_sweep_ms_ < origin_sweep_every_ms) return;
    last_sweep_ms_ = now;
    std::erase_if(last_seq_,
                  [&](const auto& e) { return now - e.second.seen_ms > seq_key_lifetime_ms; });
  }

  static void deliver(detail::bus_listener& l, const bus_message& m, bool gap) {
    if (gap) l.on_lost("a gap in the bus sequence of another instance");
    switch (m.op) {
      case 'k':
        l.on_keys(m.a);
        break;
      case 't':
      case 'T':
        l.on_tags(m.a, m.op == 'T', m.b, m.version);
        break;
      case 'p':
        if (!m.a.empty()) l.on_prefix(m.a.front(), m.version);
        break;
      case 'c':
        l.on_clear(m.version);
        break;
      case 'r': {
        std::uint64_t g = 0;
        if (m.a.size() == 1 && m.b.size() == 1 && parse_u64(m.b.front(), g)) {
          l.on_rotate(m.a.front(), g);
        }
        break;
      }
      default:
        break;
    }
  }

  coordinator_context ctx_;
  const redis_layer_options& o_;
  std::uint64_t origin_ = 0;
  std::string lease_prefix_, tag_prefix_, ns_prefix_, seq_key_, bus_channel_, fill_channel_;
  std::string fence_key_, nsv_prefix_;

  script scripts_[s_count];
  std::shared_ptr<digest_table> digests_ = std::make_shared<digest_table>();

  std::mutex rng_mu_;
  std::mt19937_64 rng_;

  std::mutex listener_mu_;
  std::vector<detail::bus_listener*> listeners_;

  std::mutex waiters_mu_;
  std::condition_variable waiters_cv_;
  std::unordered_map<std::string, waiter> waiters_;

  std::mutex leases_mu_;
  std::condition_variable_any leases_cv_;
  std::unordered_map<std::string, std::string> leases_;  // token -> key

  struct origin_seq {
    std::uint64_t seq = 0;
    unix_ms seen_ms = 0;  // when its last message arrived (ctx_.clock)
  };
  // Written by the subscriber thread; read by origins_tracked() (tests).
  std::mutex seq_mu_;
  std::unordered_map<std::uint64_t, origin_seq> last_seq_;  // per origin, guarded by seq_mu_
  unix_ms last_sweep_ms_ = 0;                               // guarded by seq_mu_
  // Subscriber thread only.
  bool had_loss_ = false;

  std::unique_ptr<subscriber> sub_;
  std::jthread renewer_;
};

}  // namespace

std::unique_ptr<detail::coordinator> make_redis_coordinator(coordinator_context context) {
  return std::make_unique<redis_coordinator>(std::move(context));
}

std::size_t bus_origins_tracked(detail::coordinator& c) {
  auto* rc = dynamic_cast<redis_coordinator*>(&c);
  return rc != nullptr ? rc->origins_tracked() : 0;
}

}  // namespace layercache::redis_detail
