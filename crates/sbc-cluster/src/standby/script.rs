//! The hot standby's Lua scripts and key layout (issue #16).
//!
//! Keys under the cluster's `key_prefix` P (no Redis Cluster hash tags: the scripts touch
//! call hashes named inside the script, which standalone Redis and Sentinel setups allow
//! and Redis Cluster does not; sbc-cluster supports the first two only):
//! - `P:call:<id>`: one hash per call, `<id>` = `<origin node>:<call ref hex>` (the node
//!   the call started on keeps naming it after a takeover). Fields: `owner`, `epoch`,
//!   `tenant`, `run` (the run id of the process that created it), `lease` (the call's
//!   quota lease ticket, hex), one field per
//!   [`sbc_core::standby::ReplicaPart`] and `media_secret` (the sealed SRTP keys).
//! - `P:node:<node>:calls`: the set of call ids `<node>` owns.
//! - `P:node:<node>:changes`: `<node>`'s change stream (XADD MAXLEN ~), entries
//!   `call <id> op put|del parts <fields>`.
//! - `P:node:<node>:marker`: this process's run id; its absence means Redis lost the data
//!   (a restart without persistence) and every live call is written again.
//!
//! Owns: script texts and key names. Must not: hold connections.

/// Write some parts of one call if this node owns it (or the call is new).
/// KEYS: hash, node call set, node stream, node marker.
/// ARGV: node, tenant, id, stream maxlen, known (`1`: this node wrote the call before, so
/// a missing hash means another node claimed and ended it), parts (for the stream
/// entry), lease ticket (`` = none), run id, then field / value pairs.
/// A new call (`known` = 0) whose hash a previous run of this node left (same number,
/// owner this node, another run id) starts from an empty hash, so no field of the dead
/// call survives into the new one.
/// Returns `{1, epoch}` written, `{0, owner}` refused (another node owns the call), `{2}`
/// the marker is gone (Redis lost its data: republish).
pub const PUT: &str = r#"
if redis.call('EXISTS', KEYS[4]) == 0 then return {2} end
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then return {0, owner} end
if not owner and ARGV[5] == '1' then return {0, ''} end
if owner and ARGV[5] == '0' and redis.call('HGET', KEYS[1], 'run') ~= ARGV[8] then
  redis.call('DEL', KEYS[1])
  owner = false
end
if not owner then
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'epoch', 1, 'tenant', ARGV[2], 'run', ARGV[8])
end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'lease', ARGV[7]) end
for i = 9, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'call', ARGV[3], 'op', 'put', 'parts', ARGV[6])
return {1, tonumber(redis.call('HGET', KEYS[1], 'epoch'))}
"#;

/// The call ended here: delete its hash and set member if this node still owns it.
/// KEYS: hash, node call set, node stream. ARGV: node, id, stream maxlen.
/// Returns 1 deleted, 0 owned by another node (left alone).
pub const REMOVE: &str = r#"
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'call', ARGV[2], 'op', 'del')
return 1
"#;

/// Heartbeat ownership check: which of these calls this node no longer owns.
/// KEYS: node marker. ARGV: node, hash key prefix (`P:call:`), then ids.
/// Returns `{0}` when the marker is gone (republish), else `{1, lost ids...}`.
pub const OWNED: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local out = {1}
for i = 3, #ARGV do
  local o = redis.call('HGET', ARGV[2] .. ARGV[i], 'owner')
  if o ~= ARGV[1] then out[#out + 1] = ARGV[i] end
end
return out
"#;

/// Some time after a process started (so its standby could claim them first): the calls
/// a previous run of this node left (owned by it, written by another run, not in `keep`)
/// died with it; delete them.
/// KEYS: node call set, node marker, node stream. ARGV: node, hash key prefix, run id,
/// stream maxlen, then ids to keep (calls this run holds).
/// Returns the number of calls deleted.
pub const RESET: &str = r#"
local keep = {}
for i = 5, #ARGV do keep[ARGV[i]] = true end
local n = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local h = ARGV[2] .. id
  if not keep[id] and redis.call('HGET', h, 'run') ~= ARGV[3] then
    if redis.call('HGET', h, 'owner') == ARGV[1] then
      redis.call('DEL', h)
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'call', id, 'op', 'del')
      n = n + 1
    end
    redis.call('SREM', KEYS[1], id)
  end
end
return n
"#;

/// Claim every call of the peer: owner + epoch compare-and-set, the call moved to this
/// node's set, its quota leases (`peer:ticket` and `peer:ticket:i` in the tenant's lease
/// sets, Cluster I's members) renamed to this node with the same expiry. A call another
/// node claimed first is left alone (so a second claim, or a second claimant, gets
/// nothing). Returns each claimed call's parts too, read in the same atomic step, so a
/// takeover installs exactly what the store held at the claim (not the warm copy, which
/// may be a stream entry behind).
/// KEYS: peer call set, node call set, node stream.
/// ARGV: node, peer, hash key prefix (`P:call:`), key prefix (`P:`), stream maxlen.
/// Returns `{{id, epoch, streams (-1: no lease), {field, value, ...}}, ...}`.
pub const CLAIM: &str = r#"
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local h = ARGV[3] .. id
  local owner = redis.call('HGET', h, 'owner')
  if owner == ARGV[2] then
    local epoch = redis.call('HINCRBY', h, 'epoch', 1)
    redis.call('HSET', h, 'owner', ARGV[1])
    redis.call('SREM', KEYS[1], id)
    redis.call('SADD', KEYS[2], id)
    local streams = -1
    local tenant = redis.call('HGET', h, 'tenant')
    local ticket = redis.call('HGET', h, 'lease')
    if tenant and ticket then
      streams = 0
      local old = ARGV[2] .. ':' .. ticket
      local new = ARGV[1] .. ':' .. ticket
      local ck = ARGV[4] .. 'calls:{' .. tenant .. '}'
      local score = redis.call('ZSCORE', ck, old)
      if score then
        redis.call('ZREM', ck, old)
        redis.call('ZADD', ck, score, new)
      end
      local sk = ARGV[4] .. 'streams:{' .. tenant .. '}'
      for i = 1, 4096 do
        local s = redis.call('ZSCORE', sk, old .. ':' .. i)
        if not s then break end
        redis.call('ZREM', sk, old .. ':' .. i)
        redis.call('ZADD', sk, s, new .. ':' .. i)
        streams = i
      end
    end
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'call', id, 'op', 'put', 'parts', 'owner')
    out[#out + 1] = {id, epoch, streams, redis.call('HGETALL', h)}
  elseif not owner then
    redis.call('SREM', KEYS[1], id)
  end
end
return out
"#;

/// The writer's scripts, in the index order `run_scripts` takes.
pub const WRITER: [&str; 4] = [PUT, REMOVE, OWNED, RESET];
pub const PUT_I: usize = 0;
pub const REMOVE_I: usize = 1;
pub const OWNED_I: usize = 2;
pub const RESET_I: usize = 3;
/// The takeover's script.
pub const CLAIMER: [&str; 1] = [CLAIM];

/// The hash field holding the sealed secret of the media part.
pub const SECRET_FIELD: &str = "media_secret";

/// Key names of the standby store.
#[derive(Debug, Clone)]
pub struct StandbyKeys {
    prefix: String,
}

impl StandbyKeys {
    pub fn new(prefix: &str) -> StandbyKeys {
        StandbyKeys {
            prefix: prefix.to_string(),
        }
    }
    /// `P:` (Cluster I's lease keys are `P:calls:{tenant}`, `P:streams:{tenant}`).
    pub fn prefix(&self) -> String {
        format!("{}:", self.prefix)
    }
    /// `P:call:` (a call's hash is this plus its id).
    pub fn call_prefix(&self) -> String {
        format!("{}:call:", self.prefix)
    }
    pub fn call(&self, id: &str) -> String {
        format!("{}:call:{id}", self.prefix)
    }
    pub fn calls(&self, node: &str) -> String {
        format!("{}:node:{node}:calls", self.prefix)
    }
    pub fn stream(&self, node: &str) -> String {
        format!("{}:node:{node}:changes", self.prefix)
    }
    pub fn marker(&self, node: &str) -> String {
        format!("{}:node:{node}:marker", self.prefix)
    }
    /// The associated data sealing a call's secret: key prefix, call id, part.
    pub fn aad(&self, id: &str, field: &str) -> String {
        format!("{}:{id}:{field}", self.prefix)
    }
}

/// A call id: `<origin node>:<call ref, 16 hex digits>`.
pub fn call_id(origin: &str, call: sbc_core::media::CallRef) -> String {
    format!("{origin}:{call}")
}

/// The call ref of an id (`None` if it does not end in hex digits).
pub fn call_ref(id: &str) -> Option<sbc_core::media::CallRef> {
    let (_, hex) = id.rsplit_once(':')?;
    u64::from_str_radix(hex, 16)
        .ok()
        .map(sbc_core::media::CallRef)
}
