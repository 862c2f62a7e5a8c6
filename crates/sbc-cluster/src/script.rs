//! The Lua scripts Redis runs for us, and the key names. Every script reads Redis'
//! own clock (`TIME`), so nodes with skewed clocks agree; Redis 7 replicates scripts by
//! their effects, so `TIME` in a script is allowed.
//!
//! Owns: script texts, key layout. Must not: hold connections.

/// Admission, one round trip: the concurrent-call lease check, the media-stream lease
/// check and the GCRA call-rate check, in that order (a call refused for concurrency or
/// streams spends no rate).
///
/// KEYS[1]: the tenant's GCRA key (its theoretical arrival time, µs).
/// KEYS[2]: the tenant's call lease set (member = node:call, score = expiry, µs).
/// KEYS[3]: the tenant's stream lease set (member = node:call:i for the call's i-th
/// stream, 1-based; one member per stream, so ZCARD counts streams and each expires or is
/// removed on its own: nothing to decrement, nothing to go negative).
/// ARGV: emission interval µs (1e6 / rate), burst, max concurrent calls, member, TTL µs,
/// max media streams (0: no limit), streams this call opens.
/// Returns {code, retry_after_ms, live calls, live streams}: code 0 admitted, 1 call rate,
/// 2 concurrent calls, 3 media streams.
///
/// GCRA (the virtual-scheduling form of ITU-T I.371): a call at `now` is admitted if
/// `max(tat, now) - now <= (burst - 1) * T`; then `tat = max(tat, now) + T`. In any window
/// of length t at most `rate * t + burst` calls are admitted.
pub const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local live = redis.call('ZCARD', KEYS[2])
local streams = redis.call('ZCARD', KEYS[3])
if live >= tonumber(ARGV[3]) then
  return {2, 0, live, streams}
end
local smax = tonumber(ARGV[6])
local n = tonumber(ARGV[7])
if smax > 0 and streams + n > smax then
  return {3, 0, live, streams}
end
local T = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = now
local v = redis.call('GET', KEYS[1])
if v then tat = tonumber(v) end
if tat < now then tat = now end
local wait = tat - now - (burst - 1) * T
if wait > 0 then
  return {1, math.ceil(wait / 1000), live, streams}
end
local new_tat = tat + T
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[4])
redis.call('PEXPIRE', KEYS[2], math.ceil(ttl / 1000) + 1000)
if n > 0 then
  for i = 1, n do
    redis.call('ZADD', KEYS[3], now + ttl, ARGV[4] .. ':' .. i)
  end
  redis.call('PEXPIRE', KEYS[3], math.ceil(ttl / 1000) + 1000)
end
return {0, 0, live + 1, streams + n}
"#;

/// Renew (or re-add, after an outage) this node's leases of one tenant in one set
/// (calls or streams).
/// KEYS[1]: the lease set. ARGV: TTL µs, then the members.
pub const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl / 1000) + 1000)
return #ARGV - 1
"#;

/// Heartbeat: announce this node, forget silent ones, count the live.
/// KEYS[1]: the node set. ARGV: node id, live window µs. Returns the live count.
pub const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"#;

/// Usage of one tenant: live call and stream leases cluster-wide and this node's.
/// KEYS[1]: the call lease set, KEYS[2]: the stream lease set. ARGV: `node:` prefix.
/// Returns {calls, my calls, streams, my streams}.
pub const USAGE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local p = ARGV[1]
local out = {}
for k = 1, 2 do
  local members = redis.call('ZRANGEBYSCORE', KEYS[k], now, '+inf')
  local mine = 0
  for _, m in ipairs(members) do
    if string.sub(m, 1, #p) == p then mine = mine + 1 end
  end
  out[#out + 1] = #members
  out[#out + 1] = mine
end
return out
"#;

/// Every script, in the order the worker loads them.
pub const ALL: [&str; 4] = [ADMIT, RENEW, HEARTBEAT, USAGE];

/// Key names under a prefix. Tenant ids are config names (no braces, no spaces).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }
    /// The tenant's GCRA state.
    pub fn rate(&self, tenant: &str) -> String {
        format!("{}:rate:{{{tenant}}}", self.prefix)
    }
    /// The tenant's call lease set.
    pub fn leases(&self, tenant: &str) -> String {
        format!("{}:calls:{{{tenant}}}", self.prefix)
    }
    /// The tenant's stream lease set (same hash slot as its other keys).
    pub fn streams(&self, tenant: &str) -> String {
        format!("{}:streams:{{{tenant}}}", self.prefix)
    }
    /// The live-node set.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
}
