//! sbc-cluster: every tenant's quotas shared by several gateways through Redis (or
//! Valkey), implementing [`sbc_core::cluster::ClusterAdmission`].
//!
//! Per admission, one round trip: a Lua script ([`script::ADMIT`]) checks the tenant's
//! concurrent-call leases (a sorted set, member = node:call, score = expiry, expired ones
//! removed in the same script), its media-stream leases (a second sorted set, one member
//! node:call:i per stream the INVITE's offer opens) and its call rate (GCRA on Redis'
//! clock), and adds the call's leases. Streams a re-INVITE or UPDATE adds later
//! ([`CallLease::grow_streams`]) are checked without waiting: against the tenant's
//! cluster-wide stream count this node learned at its last heartbeat (or admission) plus
//! its own leases since, and leased asynchronously (fire and forget, renewed and released
//! with the call). Bound: nodes adding streams mid-call within one heartbeat interval
//! can together pass the limit by at most what they added in that interval. The owner renews its leases every `renew_secs`; a dead node's leases
//! expire within `lease_ttl_secs`. Leases, never INCR/DECR counters: nothing can go
//! negative or leak.
//!
//! The SIP core never waits: [`RedisCluster::request`] hands the request to this crate's
//! worker task and returns; the answer goes to the sink the driver installed. Each request
//! has a deadline (`timeout_ms`): a timer answers it from this node's local share
//! ([`share::LocalShare`]: limit / live nodes) if Redis has not answered by then, and
//! from then on requests are answered from the share at once (a *fallback episode*, logged
//! on entry and exit, `sbc_cluster_fallback` = 1) until a heartbeat round trip succeeds.
//!
//! Sentinel: the master is resolved with `SENTINEL get-master-addr-by-name` and checked
//! with `ROLE`; any connection error, timeout or `READONLY` reply drops the connection and
//! the next attempt resolves the master again, so a promotion is followed without restart.
//!
//! The hot standby store (issue #16: this node's calls replicated, its peer's tailed and
//! claimed on takeover) is [`standby`]; it shares this crate's connection code
//! (`connect_with`, `run_scripts`) and adopts claimed calls' leases through
//! [`RedisCluster::adopt_lease`].
//!
//! Owns: the Redis connection, the worker task, this node's leases, the share state.
//! Must not: touch SIP or media (media never waits on Redis: nothing here is on the
//! packet path).
#![forbid(unsafe_code)]

pub mod error;
pub mod resp;
pub mod script;
pub mod share;
pub mod standby;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sbc_core::admission::{Refusal, RefusalCause, QUOTA_RETRY_AFTER};
use sbc_core::cluster::{
    AnswerSink, CallLease, ClusterAdmission, ClusterAnswer, ClusterCounts, ClusterInfo,
    ClusterRequest, ClusterStatus, ClusterVerdict, CountsFuture, DecisionMode, LeaseGuard, Ticket,
};
use sbc_core::config::cluster::HEARTBEAT_LIVE_FACTOR;
use sbc_core::config::{ClusterSettings, RedisEndpoint};
use sbc_core::tenant::TenantId;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

pub use error::ClusterError;
use resp::{Connection, Value};
use script::Keys;
use share::LocalShare;

/// Admission requests queued for the worker. Past it a request is answered from the
/// local share at once (the worker is behind; waiting would only miss the deadline).
const REQUEST_QUEUE: usize = 4096;
/// Requests pipelined in one round trip.
const MAX_BATCH: usize = 64;
/// Leases renewed per script call (a renewal is one pipelined round trip of these).
const RENEW_CHUNK: usize = 500;
/// Deadline of a maintenance round trip (heartbeat, renewal, release, connect): longer
/// than an admission's, since no caller waits on it.
pub(crate) const MAINTENANCE_TIMEOUT: Duration = Duration::from_millis(500);

/// A tenant's usage as the cluster sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterUsage {
    /// Live leases of the tenant, all nodes.
    pub cluster_calls: u32,
    /// Of those, this node's.
    pub node_calls: u32,
    /// Live media-stream leases of the tenant, all nodes.
    pub cluster_streams: u32,
    /// Of those, this node's.
    pub node_streams: u32,
    /// Live nodes (from heartbeats).
    pub live_nodes: u32,
}

struct Shared {
    settings: ClusterSettings,
    keys: Keys,
    runtime: tokio::runtime::Handle,
    sink: Mutex<Option<AnswerSink>>,
    share: Mutex<LocalShare>,
    /// This node's leases (calls' and streams'): member → its lease set's key.
    leases: Mutex<HashMap<String, String>>,
    fallback: AtomicBool,
    live_nodes: AtomicU32,
    /// Lease changes for the worker, in order (an add and a later remove of the same
    /// member are never reordered).
    releases: mpsc::UnboundedSender<LeaseOp>,
}

/// A lease change the worker sends to Redis: (set key, member).
#[derive(Debug)]
enum LeaseOp {
    Add(String, String),
    Remove(String, String),
}

impl Shared {
    fn lock_share(&self) -> std::sync::MutexGuard<'_, LocalShare> {
        // The share state is counters consistent at every step: carry on after a panic.
        self.share.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, answer: ClusterAnswer) {
        let sink = self.sink.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match sink {
            Some(sink) => sink(answer),
            None => debug!("cluster answer without a sink dropped"),
        }
    }

    fn member(&self, ticket: Ticket) -> String {
        format!("{}:{:016x}", self.settings.node_id, ticket.0)
    }

    /// The (set key, member) pairs of a call's leases: its call member, then one per
    /// stream (`member:i`, 1-based, as [`script::ADMIT`] names them).
    fn lease_members(
        &self,
        tenant: &TenantId,
        member: &str,
        streams: u32,
    ) -> Vec<(String, String)> {
        let t = tenant.as_str();
        let mut v = Vec::with_capacity(1 + streams as usize);
        v.push((self.keys.leases(t), member.to_string()));
        let sk = self.keys.streams(t);
        v.extend((1..=streams).map(|i| (sk.clone(), format!("{member}:{i}"))));
        v
    }

    /// The leases of an admitted call and its `streams` media streams (registered for
    /// renewal, counted in the share).
    fn lease(self: &Arc<Self>, tenant: &TenantId, member: String, streams: u32) -> LeaseGuard {
        let members = self.lease_members(tenant, &member, streams);
        {
            let mut leases = self.lock_leases();
            for (k, m) in &members {
                leases.insert(m.clone(), k.clone());
            }
        }
        self.lock_share().call_started(tenant, streams);
        LeaseGuard(Box::new(Lease {
            shared: self.clone(),
            tenant: tenant.clone(),
            streams,
            members,
        }))
    }

    /// Give back leases Redis granted to a call no one holds (answered from the share
    /// meanwhile).
    fn give_back(&self, tenant: &TenantId, member: &str, streams: u32) {
        for (k, m) in self.lease_members(tenant, member, streams) {
            let _ = self.releases.send(LeaseOp::Remove(k, m));
        }
    }

    /// Decide from the local share and answer.
    fn answer_share(self: &Arc<Self>, req: &ClusterRequest) {
        let nodes = self.live_nodes.load(Ordering::Relaxed).max(1);
        let decided =
            self.lock_share()
                .decide(&req.tenant, &req.limits, req.streams, nodes, Instant::now());
        let verdict = match decided {
            Ok(()) => {
                ClusterVerdict::Admit(self.lease(&req.tenant, self.member(req.ticket), req.streams))
            }
            Err(r) => ClusterVerdict::Refuse(r),
        };
        self.send(ClusterAnswer {
            ticket: req.ticket,
            mode: DecisionMode::LocalShare,
            verdict,
        });
    }

    /// Redis failed: start a fallback episode (logged once).
    fn enter_fallback(&self, error: &ClusterError) {
        metrics::counter!("sbc_cluster_redis_errors_total", "kind" => error.kind()).increment(1);
        if !self.fallback.swap(true, Ordering::SeqCst) {
            self.lock_share().reset_buckets();
            metrics::gauge!("sbc_cluster_fallback").set(1.0);
            metrics::counter!("sbc_cluster_fallbacks_total").increment(1);
            warn!(
                event = "cluster_fallback_entered",
                error = %error,
                live_nodes = self.live_nodes.load(Ordering::Relaxed),
                "Redis not answering: admitting from this node's share of each limit"
            );
        }
    }

    /// Redis answered: end the episode (logged once).
    fn leave_fallback(&self) {
        if self.fallback.swap(false, Ordering::SeqCst) {
            metrics::gauge!("sbc_cluster_fallback").set(0.0);
            info!(
                event = "cluster_fallback_left",
                "Redis answering again: cluster-wide admission is exact"
            );
        }
    }
}

/// A call's leases (the call's and its streams'): dropping it releases them all (ZREM,
/// queued to the worker).
struct Lease {
    shared: Arc<Shared>,
    tenant: TenantId,
    streams: u32,
    /// (set key, member) of each lease.
    members: Vec<(String, String)>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let mut leases = self.shared.lock_leases();
            for (_, m) in &self.members {
                leases.remove(m);
            }
        }
        self.shared
            .lock_share()
            .call_ended(&self.tenant, self.streams);
        for (k, m) in std::mem::take(&mut self.members) {
            let _ = self.shared.releases.send(LeaseOp::Remove(k, m));
        }
    }
}

impl CallLease for Lease {
    fn grow_streams(&mut self, streams: u32, limit: u32) -> Result<(), Refusal> {
        if streams <= self.streams {
            return Ok(());
        }
        let extra = streams - self.streams;
        let s = &self.shared;
        let fallback = s.fallback.load(Ordering::Relaxed);
        let nodes = s.live_nodes.load(Ordering::Relaxed).max(1);
        {
            let mut share = s.lock_share();
            if limit > 0 && !share.may_add_streams(&self.tenant, extra, limit, nodes, fallback) {
                return Err(Refusal {
                    cause: RefusalCause::MediaStreams,
                    retry_after: QUOTA_RETRY_AFTER,
                });
            }
            share.streams_added(&self.tenant, extra);
        }
        let key = s.keys.streams(self.tenant.as_str());
        let call_member = self
            .members
            .first()
            .map(|(_, m)| m.clone())
            .unwrap_or_default();
        let mut leases = s.lock_leases();
        for i in self.streams + 1..=streams {
            let m = format!("{call_member}:{i}");
            leases.insert(m.clone(), key.clone());
            self.members.push((key.clone(), m.clone()));
            let _ = s.releases.send(LeaseOp::Add(key.clone(), m));
        }
        self.streams = streams;
        Ok(())
    }
}

struct Job {
    req: ClusterRequest,
    asked: Instant,
    /// Set by whoever answers first: the worker or the deadline timer.
    answered: Arc<AtomicBool>,
}

enum Work {
    Admit(Job),
    Usage(TenantId, oneshot::Sender<Option<ClusterUsage>>),
}

/// Cluster-wide admission through Redis.
pub struct RedisCluster {
    shared: Arc<Shared>,
    work: mpsc::Sender<Work>,
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("node_id", &self.shared.settings.node_id)
            .field("fallback", &self.shared.fallback.load(Ordering::Relaxed))
            .finish()
    }
}

impl RedisCluster {
    /// Start the worker (on the current tokio runtime). It connects in the background;
    /// until it has, requests are answered from the local share (one live node assumed
    /// until a heartbeat says otherwise, so the share is the whole limit of this node).
    pub fn start(settings: ClusterSettings) -> Arc<RedisCluster> {
        let (work_tx, work_rx) = mpsc::channel(REQUEST_QUEUE);
        let (rel_tx, rel_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            keys: Keys::new(&settings.key_prefix),
            settings,
            runtime: tokio::runtime::Handle::current(),
            sink: Mutex::new(None),
            share: Mutex::new(LocalShare::default()),
            leases: Mutex::new(HashMap::new()),
            fallback: AtomicBool::new(true),
            live_nodes: AtomicU32::new(1),
            releases: rel_tx,
        });
        metrics::gauge!("sbc_cluster_fallback").set(1.0);
        tokio::spawn(worker(shared.clone(), work_rx, rel_rx));
        Arc::new(RedisCluster {
            shared,
            work: work_tx,
        })
    }

    /// Fallback state and live nodes now.
    pub fn status(&self) -> ClusterStatus {
        ClusterStatus {
            fallback: self.shared.fallback.load(Ordering::Relaxed),
            live_nodes: self.shared.live_nodes.load(Ordering::Relaxed),
        }
    }

    /// A tenant's cluster-wide usage from Redis (`None` if Redis does not answer).
    pub async fn usage(&self, tenant: &TenantId) -> Option<ClusterUsage> {
        let (tx, rx) = oneshot::channel();
        self.work.try_send(Work::Usage(tenant.clone(), tx)).ok()?;
        tokio::time::timeout(MAINTENANCE_TIMEOUT * 2, rx)
            .await
            .ok()?
            .ok()?
    }

    /// Take over the quota leases a claimed call held on its dead owner, already moved
    /// to this node's members (`node:ticket` and `node:ticket:i` for its `streams`
    /// streams) by the standby's claim script: renewed and released like this node's
    /// own from now on.
    pub fn adopt_lease(&self, tenant: &TenantId, ticket: Ticket, streams: u32) -> LeaseGuard {
        self.shared
            .lease(tenant, self.shared.member(ticket), streams)
    }

    /// Calls of `tenant` this node holds a lease for.
    pub fn node_calls(&self, tenant: &TenantId) -> u32 {
        self.shared.lock_share().live(tenant)
    }
}

impl ClusterInfo for RedisCluster {
    fn status(&self) -> ClusterStatus {
        RedisCluster::status(self)
    }

    fn node_calls(&self, tenant: &TenantId) -> u32 {
        RedisCluster::node_calls(self, tenant)
    }

    fn node_streams(&self, tenant: &TenantId) -> u32 {
        self.shared.lock_share().live_streams(tenant)
    }

    fn cluster_counts<'a>(&'a self, tenant: &'a TenantId) -> CountsFuture<'a> {
        Box::pin(async move {
            self.usage(tenant).await.map(|u| ClusterCounts {
                calls: u.cluster_calls,
                streams: u.cluster_streams,
            })
        })
    }
}

impl ClusterAdmission for RedisCluster {
    fn request(&self, req: ClusterRequest) {
        let shared = &self.shared;
        if shared.fallback.load(Ordering::Relaxed) {
            shared.answer_share(&req);
            return;
        }
        let answered = Arc::new(AtomicBool::new(false));
        let job = Job {
            req: req.clone(),
            asked: Instant::now(),
            answered: answered.clone(),
        };
        if self.work.try_send(Work::Admit(job)).is_err() {
            metrics::counter!("sbc_cluster_redis_errors_total", "kind" => "queue_full")
                .increment(1);
            shared.answer_share(&req);
            return;
        }
        // The deadline: if the worker has not answered by then, the share does.
        let timer_shared = shared.clone();
        let deadline = shared.settings.timeout;
        shared.runtime.spawn(async move {
            tokio::time::sleep(deadline).await;
            if !answered.swap(true, Ordering::SeqCst) {
                timer_shared.enter_fallback(&ClusterError::Timeout);
                timer_shared.answer_share(&req);
            }
        });
    }

    fn set_answer_sink(&self, sink: AnswerSink) {
        *self.shared.sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }
}

/// The live connection with its loaded scripts.
pub(crate) struct Link {
    pub(crate) conn: Connection,
    /// SHA1 of each script in `texts` order.
    shas: Vec<String>,
    /// The scripts loaded (EVAL's fallback when the server forgot one).
    texts: &'static [&'static str],
}

const ADMIT: usize = 0;
const RENEW: usize = 1;
const HEARTBEAT: usize = 2;
const USAGE: usize = 3;

pub(crate) async fn with_deadline<T>(
    d: Duration,
    f: impl std::future::Future<Output = Result<T, ClusterError>>,
) -> Result<T, ClusterError> {
    tokio::time::timeout(d, f)
        .await
        .unwrap_or(Err(ClusterError::Timeout))
}

/// Where the master is now.
async fn resolve(endpoint: &RedisEndpoint) -> Result<String, ClusterError> {
    match endpoint {
        RedisEndpoint::Direct(addr) => Ok(addr.clone()),
        RedisEndpoint::Sentinel {
            sentinels,
            master_name,
        } => {
            let mut last = ClusterError::Connect("no sentinel".into());
            for s in sentinels {
                let asked = with_deadline(MAINTENANCE_TIMEOUT, async {
                    let mut c = Connection::connect(s).await?;
                    let v = c
                        .call(&[
                            b"SENTINEL",
                            b"get-master-addr-by-name",
                            master_name.as_bytes(),
                        ])
                        .await?;
                    match v.array() {
                        Some([host, port]) => match (host.text(), port.text()) {
                            (Some(h), Some(p)) => Ok(if h.contains(':') {
                                format!("[{h}]:{p}")
                            } else {
                                format!("{h}:{p}")
                            }),
                            _ => Err(ClusterError::Protocol("bad master address".into())),
                        },
                        _ => Err(ClusterError::Connect(format!(
                            "sentinel {s} does not know master {master_name:?}"
                        ))),
                    }
                })
                .await;
                match asked {
                    Ok(addr) => return Ok(addr),
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
    }
}

/// Connect to the master, check it is one, load the admission scripts.
async fn connect(settings: &ClusterSettings) -> Result<Link, ClusterError> {
    connect_with(settings, &script::ALL).await
}

/// Connect to the master (resolved through the Sentinels if configured), check it is
/// one, load `scripts` (run later by their index in it with [`run_scripts`]).
pub(crate) async fn connect_with(
    settings: &ClusterSettings,
    scripts: &'static [&'static str],
) -> Result<Link, ClusterError> {
    with_deadline(MAINTENANCE_TIMEOUT * 2, async {
        let addr = resolve(&settings.redis).await?;
        let mut conn = Connection::connect(&addr).await?;
        let role = conn.call(&[b"ROLE"]).await?;
        let is_master = role
            .array()
            .and_then(|a| a.first())
            .and_then(Value::text)
            .is_some_and(|r| r == "master");
        if !is_master {
            return Err(ClusterError::ReadOnly);
        }
        let mut shas = Vec::new();
        for s in scripts {
            match conn.call(&[b"SCRIPT", b"LOAD", s.as_bytes()]).await? {
                Value::Error(e) => return Err(ClusterError::Server(e)),
                v => shas.push(
                    v.text()
                        .ok_or_else(|| ClusterError::Protocol("SCRIPT LOAD reply".into()))?,
                ),
            }
        }
        info!(event = "cluster_connected", redis = %addr, "connected to the Redis master");
        Ok(Link {
            conn,
            shas,
            texts: scripts,
        })
    })
    .await
}

/// Run script `which` for each argument set in one pipelined round trip (EVALSHA, then
/// EVAL for any the server does not know). Error replies map to [`ClusterError`]s.
pub(crate) async fn run_scripts<K: AsRef<[u8]>, A: AsRef<[u8]>>(
    link: &mut Link,
    which: usize,
    calls: &[(Vec<K>, Vec<A>)],
) -> Result<Vec<Value>, ClusterError> {
    let started = Instant::now();
    fn push<K: AsRef<[u8]>, A: AsRef<[u8]>>(
        conn: &mut Connection,
        cmd: &[u8],
        body: &[u8],
        keys: &[K],
        args: &[A],
    ) {
        let n = keys.len().to_string();
        let mut a: Vec<&[u8]> = vec![cmd, body, n.as_bytes()];
        a.extend(keys.iter().map(|k| k.as_ref()));
        a.extend(args.iter().map(|k| k.as_ref()));
        conn.push(&a);
    }
    for (keys, args) in calls {
        push(
            &mut link.conn,
            b"EVALSHA",
            link.shas[which].as_bytes(),
            keys,
            args,
        );
    }
    link.conn.flush().await?;
    let mut out = Vec::with_capacity(calls.len());
    for _ in calls {
        out.push(link.conn.read().await?);
    }
    let missing: Vec<usize> = (0..out.len())
        .filter(|i| matches!(&out[*i], Value::Error(e) if e.starts_with("NOSCRIPT")))
        .collect();
    if !missing.is_empty() {
        for i in &missing {
            let (keys, args) = &calls[*i];
            push(
                &mut link.conn,
                b"EVAL",
                link.texts[which].as_bytes(),
                keys,
                args,
            );
        }
        link.conn.flush().await?;
        for i in missing {
            out[i] = link.conn.read().await?;
        }
    }
    metrics::histogram!("sbc_cluster_redis_seconds").record(started.elapsed().as_secs_f64());
    for v in &out {
        if let Value::Error(e) = v {
            return Err(if e.starts_with("READONLY") {
                ClusterError::ReadOnly
            } else {
                ClusterError::Server(e.clone())
            });
        }
    }
    Ok(out)
}

fn micros(d: Duration) -> String {
    d.as_micros().to_string()
}

struct Worker {
    shared: Arc<Shared>,
    link: Option<Link>,
}

impl Worker {
    fn fail(&mut self, e: &ClusterError) {
        if self.link.take().is_some() {
            warn!(event = "cluster_link_lost", error = %e, "Redis connection dropped; the master is resolved again on reconnect");
        }
        self.shared.enter_fallback(e);
    }

    async fn ensure_link(&mut self) -> bool {
        if self.link.is_some() {
            return true;
        }
        match connect(&self.shared.settings).await {
            Ok(l) => {
                self.link = Some(l);
                // Leases admitted from the share (or renewed late) count again at once.
                self.renew().await;
                self.link.is_some()
            }
            Err(e) => {
                self.shared.enter_fallback(&e);
                false
            }
        }
    }

    async fn admit(&mut self, mut jobs: Vec<Job>) {
        let s = self.shared.clone();
        // Those the deadline timer answered already are not sent.
        jobs.retain(|j| !j.answered.load(Ordering::SeqCst));
        if jobs.is_empty() {
            return;
        }
        let Some(link) = self.link.as_mut() else {
            for j in jobs {
                if !j.answered.swap(true, Ordering::SeqCst) {
                    s.answer_share(&j.req);
                }
            }
            return;
        };
        let ttl = micros(s.settings.lease_ttl);
        let calls: Vec<(Vec<String>, Vec<String>)> = jobs
            .iter()
            .map(|j| {
                let t = j.req.tenant.as_str();
                let l = &j.req.limits;
                let interval = if l.calls_per_second > 0.0 {
                    1e6 / l.calls_per_second
                } else {
                    f64::MAX
                };
                (
                    vec![s.keys.rate(t), s.keys.leases(t), s.keys.streams(t)],
                    vec![
                        format!("{interval:.3}"),
                        l.call_burst.max(1).to_string(),
                        l.max_concurrent_calls.to_string(),
                        s.member(j.req.ticket),
                        ttl.clone(),
                        l.max_media_streams.to_string(),
                        j.req.streams.to_string(),
                    ],
                )
            })
            .collect();
        let oldest = jobs
            .iter()
            .map(|j| j.asked)
            .min()
            .unwrap_or_else(Instant::now);
        let left = s.settings.timeout.saturating_sub(oldest.elapsed());
        let replies = with_deadline(left, run_scripts(link, ADMIT, &calls)).await;
        let replies = match replies {
            Ok(r) => r,
            Err(e) => {
                self.fail(&e);
                for j in jobs {
                    if !j.answered.swap(true, Ordering::SeqCst) {
                        s.answer_share(&j.req);
                    }
                }
                return;
            }
        };
        for (j, v) in jobs.into_iter().zip(replies) {
            let nums: Vec<i64> = v
                .array()
                .map(|a| a.iter().filter_map(Value::int).collect())
                .unwrap_or_default();
            let (code, retry_ms) = (
                nums.first().copied().unwrap_or(-1),
                nums.get(1).copied().unwrap_or(0),
            );
            let member = s.member(j.req.ticket);
            if j.answered.swap(true, Ordering::SeqCst) {
                // Answered from the share meanwhile: give back what Redis granted.
                if code == 0 {
                    s.give_back(&j.req.tenant, &member, j.req.streams);
                }
                continue;
            }
            let live = nums
                .get(2)
                .and_then(|n| u32::try_from(*n).ok())
                .unwrap_or(0);
            let live_streams = nums.get(3).and_then(|n| u32::try_from(*n).ok());
            let verdict = match code {
                0 => {
                    let lease = s.lease(&j.req.tenant, member, j.req.streams);
                    s.lock_share().note_exact(&j.req.tenant, live, live_streams);
                    ClusterVerdict::Admit(lease)
                }
                1 => {
                    s.lock_share().note_exact(&j.req.tenant, live, live_streams);
                    ClusterVerdict::Refuse(Refusal {
                        cause: RefusalCause::CallRate,
                        retry_after: Duration::from_millis(
                            u64::try_from(retry_ms).unwrap_or(1).max(1),
                        ),
                    })
                }
                2 => {
                    s.lock_share().note_exact(&j.req.tenant, live, live_streams);
                    ClusterVerdict::Refuse(Refusal {
                        cause: RefusalCause::ConcurrentCalls,
                        retry_after: QUOTA_RETRY_AFTER,
                    })
                }
                3 => {
                    s.lock_share().note_exact(&j.req.tenant, live, live_streams);
                    ClusterVerdict::Refuse(Refusal {
                        cause: RefusalCause::MediaStreams,
                        retry_after: QUOTA_RETRY_AFTER,
                    })
                }
                _ => {
                    self.fail(&ClusterError::Protocol("bad admit reply".into()));
                    s.answer_share(&j.req);
                    continue;
                }
            };
            s.send(ClusterAnswer {
                ticket: j.req.ticket,
                mode: DecisionMode::Exact,
                verdict,
            });
        }
    }

    /// Apply lease changes in order: adds (streams a call grew by) through the renew
    /// script, removals as ZREM.
    async fn release(&mut self, ops: Vec<LeaseOp>) {
        let Some(link) = self.link.as_mut() else {
            // Redis is away: a removed lease expires within its TTL there; an added one
            // is re-added by the renewal after reconnecting.
            return;
        };
        let ttl = micros(self.shared.settings.lease_ttl);
        let mut items = Vec::with_capacity(ops.len());
        for op in &ops {
            match op {
                LeaseOp::Add(k, m) => {
                    let args: [&[u8]; 6] = [
                        b"EVALSHA",
                        link.shas[RENEW].as_bytes(),
                        b"1",
                        k.as_bytes(),
                        ttl.as_bytes(),
                        m.as_bytes(),
                    ];
                    items.push(args.to_vec());
                }
                LeaseOp::Remove(k, m) => {
                    items.push(vec![b"ZREM".as_slice(), k.as_bytes(), m.as_bytes()]);
                }
            }
        }
        let r = with_deadline(MAINTENANCE_TIMEOUT, async {
            for a in &items {
                link.conn.push(a);
            }
            link.conn.flush().await?;
            for _ in &items {
                if let Value::Error(e) = link.conn.read().await? {
                    return Err(if e.starts_with("READONLY") {
                        ClusterError::ReadOnly
                    } else {
                        ClusterError::Server(e)
                    });
                }
            }
            Ok(())
        })
        .await;
        if let Err(e) = r {
            self.fail(&e);
        }
    }

    async fn renew(&mut self) {
        // Grouped by lease set: a tenant's calls and its streams.
        let by_set: HashMap<String, Vec<String>> = {
            let leases = self.shared.lock_leases();
            let mut m: HashMap<String, Vec<String>> = HashMap::new();
            for (member, key) in leases.iter() {
                m.entry(key.clone()).or_default().push(member.clone());
            }
            m
        };
        if by_set.is_empty() {
            return;
        }
        let ttl = micros(self.shared.settings.lease_ttl);
        let mut calls = Vec::new();
        for (key, members) in &by_set {
            for chunk in members.chunks(RENEW_CHUNK) {
                let mut args = vec![ttl.clone()];
                args.extend(chunk.iter().cloned());
                calls.push((vec![key.clone()], args));
            }
        }
        let Some(link) = self.link.as_mut() else {
            return;
        };
        if let Err(e) = with_deadline(MAINTENANCE_TIMEOUT, run_scripts(link, RENEW, &calls)).await {
            self.fail(&e);
        }
    }

    async fn heartbeat(&mut self) {
        if !self.ensure_link().await {
            return;
        }
        let s = self.shared.clone();
        let window = s.settings.heartbeat_interval * HEARTBEAT_LIVE_FACTOR;
        let calls = [(
            vec![s.keys.nodes()],
            vec![s.settings.node_id.clone(), micros(window)],
        )];
        let Some(link) = self.link.as_mut() else {
            return;
        };
        match with_deadline(MAINTENANCE_TIMEOUT, run_scripts(link, HEARTBEAT, &calls)).await {
            Ok(v) => {
                let n = v
                    .first()
                    .and_then(Value::int)
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(1)
                    .max(1);
                if s.live_nodes.swap(n, Ordering::Relaxed) != n {
                    info!(
                        event = "cluster_nodes",
                        live_nodes = n,
                        "live gateway nodes changed"
                    );
                }
                metrics::gauge!("sbc_cluster_live_nodes").set(f64::from(n));
                s.leave_fallback();
            }
            Err(e) => {
                self.fail(&e);
                return;
            }
        }
        // Refresh the cluster-wide counts a fallback's share starts from, so they are at
        // most one heartbeat old when Redis goes away.
        let tenants = s.lock_share().known_tenants();
        if tenants.is_empty() {
            return;
        }
        let prefix = format!("{}:", s.settings.node_id);
        let calls: Vec<(Vec<String>, Vec<String>)> = tenants
            .iter()
            .map(|t| {
                let t = t.as_str();
                (
                    vec![s.keys.leases(t), s.keys.streams(t)],
                    vec![prefix.clone()],
                )
            })
            .collect();
        let Some(link) = self.link.as_mut() else {
            return;
        };
        match with_deadline(MAINTENANCE_TIMEOUT, run_scripts(link, USAGE, &calls)).await {
            Ok(replies) => {
                let mut share = s.lock_share();
                for (t, v) in tenants.iter().zip(replies) {
                    let nums: Vec<u32> = v
                        .array()
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::int)
                                .filter_map(|n| u32::try_from(n).ok())
                                .collect()
                        })
                        .unwrap_or_default();
                    if let Some(total) = nums.first() {
                        share.note_exact(t, *total, nums.get(2).copied());
                    }
                }
            }
            Err(e) => self.fail(&e),
        }
    }

    async fn usage(&mut self, tenant: &TenantId) -> Option<ClusterUsage> {
        let s = self.shared.clone();
        let link = self.link.as_mut()?;
        let calls = [(
            vec![
                s.keys.leases(tenant.as_str()),
                s.keys.streams(tenant.as_str()),
            ],
            vec![format!("{}:", s.settings.node_id)],
        )];
        match with_deadline(MAINTENANCE_TIMEOUT, run_scripts(link, USAGE, &calls)).await {
            Ok(v) => {
                let nums: Vec<i64> = v
                    .first()
                    .and_then(Value::array)
                    .map(|a| a.iter().filter_map(Value::int).collect())
                    .unwrap_or_default();
                Some(ClusterUsage {
                    cluster_calls: nums.first().and_then(|n| u32::try_from(*n).ok())?,
                    node_calls: nums.get(1).and_then(|n| u32::try_from(*n).ok())?,
                    cluster_streams: nums.get(2).and_then(|n| u32::try_from(*n).ok())?,
                    node_streams: nums.get(3).and_then(|n| u32::try_from(*n).ok())?,
                    live_nodes: s.live_nodes.load(Ordering::Relaxed),
                })
            }
            Err(e) => {
                self.fail(&e);
                None
            }
        }
    }
}

async fn worker(
    shared: Arc<Shared>,
    mut work: mpsc::Receiver<Work>,
    mut releases: mpsc::UnboundedReceiver<LeaseOp>,
) {
    let mut w = Worker { shared, link: None };
    let mut heartbeat = tokio::time::interval(w.shared.settings.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renew = tokio::time::interval(w.shared.settings.renew_interval);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            item = work.recv() => {
                let Some(item) = item else { return };
                let mut jobs = Vec::new();
                let mut usage = Vec::new();
                let mut next = Some(item);
                while let Some(item) = next.take() {
                    match item {
                        Work::Admit(j) => jobs.push(j),
                        Work::Usage(t, tx) => usage.push((t, tx)),
                    }
                    if jobs.len() < MAX_BATCH {
                        next = work.try_recv().ok();
                    }
                }
                w.admit(jobs).await;
                for (t, tx) in usage {
                    let _ = tx.send(w.usage(&t).await);
                }
            }
            item = releases.recv() => {
                let Some(item) = item else { return };
                let mut items = vec![item];
                while items.len() < MAX_BATCH * 4 {
                    match releases.try_recv() {
                        Ok(i) => items.push(i),
                        Err(_) => break,
                    }
                }
                w.release(items).await;
            }
            _ = heartbeat.tick() => w.heartbeat().await,
            _ = renew.tick() => w.renew().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_label_sets_match_the_catalog() {
        let mut kinds = ClusterError::KINDS.to_vec();
        kinds.push("queue_full");
        assert_eq!(kinds, sbc_core::metrics_catalog::CLUSTER_ERRORS);
        let modes = [DecisionMode::Exact, DecisionMode::LocalShare].map(DecisionMode::as_str);
        assert_eq!(modes, sbc_core::metrics_catalog::CLUSTER_MODES);
        let parts = sbc_core::standby::ReplicaPart::ALL.map(|p| p.field());
        assert_eq!(parts, sbc_core::metrics_catalog::STANDBY_PARTS);
        let reasons = standby::FenceReason::ALL.map(standby::FenceReason::as_str);
        assert_eq!(reasons, sbc_core::metrics_catalog::STANDBY_FENCE_REASONS);
        let reloads = standby::ReloadReason::ALL.map(standby::ReloadReason::as_str);
        assert_eq!(reloads, sbc_core::metrics_catalog::STANDBY_RELOAD_REASONS);
    }
}
