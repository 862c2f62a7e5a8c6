//! The hot standby store (issue #16) against a real redis-server on loopback: replication
//! into the peer's warm copy, the KEK in Redis, Redis restarted empty (republish and
//! reload), the claim (owner, epoch, leases, idempotent), two claimants, fencing, and a
//! missing key file.
//!
//! Needs `redis-server` (and `redis-sentinel`, as sbc-testkit's check asks for both) on
//! PATH; without them every Redis test prints why and passes (`.ci/run`'s cluster stage
//! installs them and runs `cargo test -p sbc-cluster --test standby_store`).
//!
//! The call installer here is a recording fake: the SIP side's installer is tested in
//! sbc-sip, and the whole failover in the root package's namespace test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sbc_cluster::standby::StandbyNode;
use sbc_cluster::{ClusterError, RedisCluster};
use sbc_core::cluster::Ticket;
use sbc_core::config::{ClusterSettings, RedisEndpoint, StandbySettings};
use sbc_core::media::CallRef;
use sbc_core::standby::{
    CallInstaller, InstallFuture, InstallReport, ReplicaPart, ReplicaUpdate, SecretBytes,
    SharedReplicaSink,
};
use sbc_core::tenant::TenantId;
use sbc_testkit::files::temp_dir;
use sbc_testkit::redis::{missing, RedisProcess};

/// The SRTP key material the tests replicate: ASCII, so a lossy view of Redis' bytes
/// would show it if it were stored in clear.
const SECRET: &[u8] = b"MASTERKEY-0123456789abcdefSALT-0123456789";

fn skip() -> bool {
    match missing() {
        Some(why) => {
            eprintln!("skipping standby store test: {why}");
            true
        }
        None => false,
    }
}

/// A fresh redis-server in a fresh directory (`None`, said why: not installed).
fn redis_server(tag: &str) -> Option<(std::path::PathBuf, RedisProcess)> {
    if skip() {
        return None;
    }
    let dir = temp_dir(tag);
    let redis = RedisProcess::server(&dir);
    Some((dir, redis))
}

/// Wait until the call set `set` holds `n` calls.
async fn stored(redis: &RedisProcess, set: &str, n: u32) {
    wait_until(
        &format!("{n} calls in {set}"),
        Duration::from_secs(5),
        || {
            redis
                .command(&format!("SCARD {set}"))
                .is_some_and(|r| r.contains(&format!(":{n}\r\n")))
        },
    )
    .await;
}

fn key_file(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("cluster.key");
    std::fs::write(&p, format!("{}\n", "5a".repeat(32))).unwrap();
    p
}

fn settings(
    redis: &str,
    prefix: &str,
    node: &str,
    peer: Option<&str>,
    dir: &Path,
) -> ClusterSettings {
    ClusterSettings {
        node_id: node.into(),
        redis: RedisEndpoint::Direct(redis.into()),
        timeout: Duration::from_millis(50),
        lease_ttl: Duration::from_secs(30),
        renew_interval: Duration::from_secs(10),
        heartbeat_interval: Duration::from_millis(200),
        key_prefix: prefix.into(),
        standby: Some(StandbySettings {
            peer: peer.map(str::to_string),
            key_file: key_file(dir),
            stream_maxlen: 1_000,
            index_refresh: Duration::from_secs(60),
        }),
    }
}

/// One call the fake installer got.
#[derive(Debug, Clone)]
struct Installed {
    call: CallRef,
    tenant: String,
    epoch: u64,
    dialog: Option<Vec<u8>>,
    media: Option<Vec<u8>>,
    secret: Option<Vec<u8>>,
    indexes: Option<Vec<u8>>,
    lease: bool,
}

/// What the fake installer got.
#[derive(Debug, Default)]
struct Got {
    installed: Vec<Installed>,
    fenced: Vec<CallRef>,
    /// The adopted leases, held as a restored call holds them (dropping releases them).
    leases: Vec<sbc_core::cluster::LeaseGuard>,
}

#[derive(Debug, Default)]
struct FakeInstaller(Mutex<Got>);

impl CallInstaller for FakeInstaller {
    fn install(&self, calls: Vec<sbc_core::standby::TakenCall>) -> InstallFuture {
        let mut got = self.0.lock().unwrap();
        let mut report = InstallReport::default();
        for c in calls {
            let (media, secret) = match &c.media {
                Some((m, s)) => (Some(m.clone()), Some(s.expose().to_vec())),
                None => (None, None),
            };
            if media.is_some() {
                report.installed += 1;
            } else {
                report
                    .refused
                    .push((c.call, sbc_core::standby::InstallRefusal::BadRecord));
            }
            got.installed.push(Installed {
                call: c.call,
                tenant: c.tenant.as_str().to_string(),
                epoch: c.epoch,
                dialog: c.dialog.clone(),
                media,
                secret,
                indexes: c.indexes.clone(),
                lease: c.lease.is_some(),
            });
            got.leases.extend(c.lease);
        }
        Box::pin(async move { report })
    }

    fn fence(&self, calls: Vec<CallRef>) {
        self.0.lock().unwrap().fenced.extend(calls);
    }
}

/// The cluster audit events a node sent.
#[derive(Default)]
struct Audited(Mutex<Vec<sbc_core::audit::ClusterAudit>>);

impl sbc_core::audit::AuditSink for Audited {
    fn recording(&self, _: &sbc_core::audit::RecordingAudit) -> std::io::Result<()> {
        Ok(())
    }
    fn cluster(&self, event: &sbc_core::audit::ClusterAudit) -> std::io::Result<()> {
        self.0.lock().unwrap().push(event.clone());
        Ok(())
    }
}

fn audited(n: &StandbyNode) -> Arc<Audited> {
    let a = Arc::new(Audited::default());
    n.set_audit(Arc::new(
        sbc_core::audit::AuditQueue::start(a.clone()).unwrap(),
    ));
    a
}

fn node(
    s: &ClusterSettings,
    leases: Option<Arc<RedisCluster>>,
) -> (Arc<StandbyNode>, Arc<FakeInstaller>) {
    let n = StandbyNode::start(s, leases).expect("start");
    let i = Arc::new(FakeInstaller::default());
    n.set_installer(i.clone());
    (n, i)
}

/// Replicate one call's three parts (the media part with [`SECRET`]).
fn put_call(sink: &SharedReplicaSink, call: u64, tag: &str) {
    let tenant = TenantId::from("acme");
    for (part, secret) in [
        (ReplicaPart::Dialog, None),
        (ReplicaPart::Media, Some(SecretBytes::new(SECRET.to_vec()))),
        (ReplicaPart::Indexes, None),
    ] {
        sink.put(ReplicaUpdate {
            call: CallRef(call),
            tenant: tenant.clone(),
            part,
            public: format!("{{\"v\":1,\"{}\":\"{tag}\"}}", part.field()).into_bytes(),
            secret,
        });
    }
}

async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn hget(r: &RedisProcess, key: &str, field: &str) -> String {
    r.command(&format!("HGET {key} {field}"))
        .unwrap_or_default()
}

fn id(node: &str, call: u64) -> String {
    format!("{node}:{call:016x}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_reach_the_warm_copy_and_secrets_are_sealed() {
    let Some((dir, redis)) = redis_server("standby-warm") else {
        return;
    };
    let (a, _) = node(&settings(&redis.addr(), "w", "A", None, &dir), None);
    let (b, _) = node(&settings(&redis.addr(), "w", "B", Some("A"), &dir), None);
    let sink = a.sink();
    for call in 1..=3 {
        put_call(&sink, call, "first");
    }
    wait_until(
        "3 warm calls with every part",
        Duration::from_secs(5),
        || {
            let w = b.warm_calls();
            w.len() == 3
                && w.iter()
                    .all(|c| c.parts == ["dialog", "media", "idx", "media_secret"])
        },
    )
    .await;
    let w = b.warm_calls();
    assert_eq!(w[0].id, id("A", 1));
    assert_eq!((w[0].tenant.as_str(), w[0].epoch), ("acme", 1));
    let st = sbc_core::standby::StandbyControl::status(&*b.control());
    assert_eq!((st.peer.as_str(), st.warm_calls), ("A", 3));
    assert!(st.lag_ms.is_some_and(|l| l < 5_000), "{st:?}");
    assert_eq!(a.replicated_calls(), 3);

    // In Redis: owner, epoch, tenant, the parts; the secret sealed, never in clear.
    let key = format!("w:call:{}", id("A", 1));
    assert!(hget(&redis, &key, "owner").contains("\r\nA\r\n"));
    assert!(hget(&redis, &key, "dialog").contains("first"));
    let sealed = hget(&redis, &key, "media_secret");
    assert!(sealed.len() > SECRET.len(), "a sealed blob: {sealed:?}");
    let dump = redis.command(&format!("HGETALL {key}")).unwrap();
    assert!(
        !dump.contains("MASTERKEY") && !dump.contains("SALT-0123"),
        "{dump}"
    );
    let stream = redis.command("XRANGE w:node:A:changes - +").unwrap();
    assert!(!stream.contains("MASTERKEY"), "{stream}");

    // Updates follow; an ended call leaves the store and the warm copy.
    put_call(&sink, 2, "second");
    sink.remove(CallRef(3));
    wait_until(
        "call 3 gone from the warm copy",
        Duration::from_secs(5),
        || b.warm_calls().len() == 2,
    )
    .await;
    wait_until("call 2 updated", Duration::from_secs(5), || {
        hget(&redis, &format!("w:call:{}", id("A", 2)), "dialog").contains("second")
    })
    .await;
    assert!(redis
        .command(&format!("EXISTS w:call:{}", id("A", 3)))
        .unwrap()
        .contains(":0"));
    assert!(redis
        .command("SCARD w:node:A:calls")
        .unwrap()
        .contains(":2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_moves_owner_epoch_and_leases_once() {
    let Some((dir, redis)) = redis_server("standby-claim") else {
        return;
    };
    let (a, _) = node(&settings(&redis.addr(), "c", "A", None, &dir), None);
    let bs = settings(&redis.addr(), "c", "B", Some("A"), &dir);
    let leases = RedisCluster::start(bs.clone());
    let (b, got) = node(&bs, Some(leases.clone()));
    let sink = a.sink();
    put_call(&sink, 1, "one");
    put_call(&sink, 2, "two");
    // Call 1 holds Cluster I leases: its call slot and two media streams.
    sink.lease(CallRef(1), Ticket(0xabc));
    let far = 32_503_680_000_000_000u64; // year 3000, µs
    redis
        .command(&format!("ZADD c:calls:{{acme}} {far} A:0000000000000abc"))
        .unwrap();
    for i in 1..=2 {
        redis
            .command(&format!(
                "ZADD c:streams:{{acme}} {far} A:0000000000000abc:{i}"
            ))
            .unwrap();
    }
    wait_until("both calls warm", Duration::from_secs(5), || {
        b.warm_calls().len() == 2
    })
    .await;
    wait_until("the lease ticket stored", Duration::from_secs(5), || {
        hget(&redis, &format!("c:call:{}", id("A", 1)), "lease").contains("0000000000000abc")
    })
    .await;

    let control = b.control();
    let s = control.take_over().await.expect("takeover");
    assert_eq!((s.claimed, s.installed), (2, 2), "{s:?}");
    {
        let got = got.0.lock().unwrap();
        let mut inst = got.installed.clone();
        inst.sort_by_key(|c| c.call);
        let Installed {
            call,
            tenant,
            epoch,
            dialog,
            media,
            secret,
            indexes: idx,
            lease,
        } = &inst[0];
        assert_eq!((*call, tenant.as_str(), *epoch), (CallRef(1), "acme", 2));
        assert!(String::from_utf8_lossy(dialog.as_ref().unwrap()).contains("one"));
        assert!(String::from_utf8_lossy(media.as_ref().unwrap()).contains("one"));
        assert!(String::from_utf8_lossy(idx.as_ref().unwrap()).contains("one"));
        assert_eq!(
            secret.as_deref(),
            Some(SECRET),
            "the secret opens with the KEK"
        );
        assert!(*lease, "call 1's leases adopted");
        assert!(!inst[1].lease, "call 2 held no lease");
    }
    let key = format!("c:call:{}", id("A", 1));
    assert!(hget(&redis, &key, "owner").contains("\r\nB\r\n"));
    assert!(hget(&redis, &key, "epoch").contains("\r\n2\r\n"));
    assert!(redis
        .command("SCARD c:node:A:calls")
        .unwrap()
        .contains(":0"));
    assert!(redis
        .command("SCARD c:node:B:calls")
        .unwrap()
        .contains(":2"));
    let calls = redis
        .command("ZRANGE c:calls:{acme} 0 -1 WITHSCORES")
        .unwrap();
    assert!(
        calls.contains("B:0000000000000abc") && !calls.contains("A:0000"),
        "{calls}"
    );
    assert!(calls.contains(&far.to_string()), "same expiry: {calls}");
    let streams = redis.command("ZRANGE c:streams:{acme} 0 -1").unwrap();
    assert!(
        streams.contains("B:0000000000000abc:1") && streams.contains("B:0000000000000abc:2"),
        "{streams}"
    );
    assert!(!streams.contains("A:0000"), "{streams}");
    assert!(
        b.warm_calls().is_empty(),
        "claimed calls leave the warm copy"
    );
    assert_eq!(b.replicated_calls(), 2, "B now replicates them");
    assert_eq!(
        leases.node_calls(&TenantId::from("acme")),
        1,
        "the adopted lease counts here"
    );

    // Idempotent: nothing left to claim.
    let again = control.take_over().await.expect("second takeover");
    assert_eq!((again.claimed, again.installed), (0, 0));
    assert_eq!(got.0.lock().unwrap().installed.len(), 2);
    assert_eq!(control.status().last_takeover, Some(again));
    assert!(hget(&redis, &key, "epoch").contains("\r\n2\r\n"));

    // B's own writes to a claimed call go to the same hash, owner-checked.
    b.sink().put(ReplicaUpdate {
        call: CallRef(1),
        tenant: TenantId::from("acme"),
        part: ReplicaPart::Dialog,
        public: b"{\"v\":1,\"dialog\":\"by-b\"}".to_vec(),
        secret: None,
    });
    wait_until(
        "B's update of the claimed call",
        Duration::from_secs(5),
        || hget(&redis, &key, "dialog").contains("by-b"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_claimants_leave_exactly_one_owner() {
    let Some((dir, redis)) = redis_server("standby-double") else {
        return;
    };
    let (a, _) = node(&settings(&redis.addr(), "d", "A", None, &dir), None);
    let (b, _) = node(&settings(&redis.addr(), "d", "B", Some("A"), &dir), None);
    let (c, _) = node(&settings(&redis.addr(), "d", "C", Some("A"), &dir), None);
    let sink = a.sink();
    for call in 1..=40 {
        put_call(&sink, call, "x");
    }
    stored(&redis, "d:node:A:calls", 40).await;
    let (cb, cc) = (b.control(), c.control());
    let (rb, rc) = tokio::join!(cb.take_over(), cc.take_over());
    let (rb, rc) = (rb.unwrap(), rc.unwrap());
    assert_eq!(rb.claimed + rc.claimed, 40, "{rb:?} {rc:?}");
    let mut owners = std::collections::HashMap::new();
    for call in 1..=40 {
        let key = format!("d:call:{}", id("A", call));
        let o = hget(&redis, &key, "owner");
        let o = if o.contains("\r\nB\r\n") {
            "B"
        } else if o.contains("\r\nC\r\n") {
            "C"
        } else {
            panic!("call {call} owned by {o:?}")
        };
        *owners.entry(o).or_insert(0u32) += 1;
        assert!(
            hget(&redis, &key, "epoch").contains("\r\n2\r\n"),
            "one claim per call"
        );
    }
    assert_eq!(owners.get("B").copied().unwrap_or(0), rb.claimed);
    assert_eq!(owners.get("C").copied().unwrap_or(0), rc.claimed);
    let sb = redis.command("SCARD d:node:B:calls").unwrap();
    let sc = redis.command("SCARD d:node:C:calls").unwrap();
    assert!(sb.contains(&format!(":{}", rb.claimed)) && sc.contains(&format!(":{}", rc.claimed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_calls_were_claimed_fences_them() {
    let Some((dir, redis)) = redis_server("standby-fence") else {
        return;
    };
    let (a, a_got) = node(&settings(&redis.addr(), "f", "A", None, &dir), None);
    let a_audit = audited(&a);
    let (b, _) = node(&settings(&redis.addr(), "f", "B", Some("A"), &dir), None);
    let b_audit = audited(&b);
    let sink = a.sink();
    put_call(&sink, 1, "a1");
    put_call(&sink, 2, "a2");
    stored(&redis, "f:node:A:calls", 2).await;
    // A comes back from a partition after B took its calls.
    let s = b.control().take_over().await.unwrap();
    assert_eq!(s.claimed, 2);
    // A's next write to call 1 is refused: fenced at once.
    sink.put(ReplicaUpdate {
        call: CallRef(1),
        tenant: TenantId::from("acme"),
        part: ReplicaPart::Dialog,
        public: b"{\"v\":1,\"dialog\":\"stale\"}".to_vec(),
        secret: None,
    });
    // Call 2 is written no more: the heartbeat's ownership check fences it.
    // (Which of the two finds call 1 first is a race; each fences it.)
    wait_until("A fences both calls", Duration::from_secs(5), || {
        let mut f = a_got.0.lock().unwrap().fenced.clone();
        f.sort();
        f.dedup();
        f == [CallRef(1), CallRef(2)]
    })
    .await;
    wait_until("fencing audited", Duration::from_secs(2), || {
        let ev = a_audit.0.lock().unwrap();
        ev.iter().map(|e| e.calls).sum::<u32>() >= 2
            && ev.iter().all(|e| {
                e.event == sbc_core::audit::ClusterEvent::Fenced
                    && e.node == "A"
                    && ["write_refused", "ownership_lost"].contains(&e.detail.as_str())
            })
    })
    .await;
    {
        let ev = b_audit.0.lock().unwrap();
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].event, sbc_core::audit::ClusterEvent::TakenOver);
        assert_eq!(
            (ev[0].node.as_str(), ev[0].peer.as_str(), ev[0].calls),
            ("B", "A", 2)
        );
        assert!(
            ev[0].detail.starts_with("claimed:2,installed:2"),
            "{:?}",
            ev[0]
        );
    }
    let key = format!("f:call:{}", id("A", 1));
    assert!(hget(&redis, &key, "owner").contains("\r\nB\r\n"));
    assert!(
        hget(&redis, &key, "dialog").contains("a1"),
        "the refused write changed nothing"
    );
    assert_eq!(a.replicated_calls(), 0, "A forgot the fenced calls");
    // A fenced call ending on A does not delete B's record.
    sink.remove(CallRef(1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(hget(&redis, &key, "owner").contains("\r\nB\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_gets_every_call_again() {
    let Some((dir, mut redis)) = redis_server("standby-restart") else {
        return;
    };
    let (a, _) = node(&settings(&redis.addr(), "r", "A", None, &dir), None);
    let (b, _) = node(&settings(&redis.addr(), "r", "B", Some("A"), &dir), None);
    let sink = a.sink();
    for call in 1..=3 {
        put_call(&sink, call, "before");
    }
    wait_until("3 warm calls", Duration::from_secs(5), || {
        b.warm_calls().len() == 3
    })
    .await;
    redis.restart();
    assert!(
        redis.command("DBSIZE").unwrap().contains(":0"),
        "restarted empty"
    );
    // A republishes without any new update; B reloads and tails again.
    wait_until("A's calls back in Redis", Duration::from_secs(10), || {
        redis
            .command("SCARD r:node:A:calls")
            .is_some_and(|r| r.contains(":3"))
    })
    .await;
    wait_until("B's warm copy whole again", Duration::from_secs(10), || {
        let w = b.warm_calls();
        w.len() == 3 && w.iter().all(|c| c.parts.len() == 4)
    })
    .await;
    let key = format!("r:call:{}", id("A", 2));
    assert!(hget(&redis, &key, "idx").contains("before"));
    // Updates flow again, and the next failover still works.
    put_call(&sink, 4, "after");
    wait_until("call 4 warm", Duration::from_secs(5), || {
        b.warm_calls().len() == 4
    })
    .await;
    let s = b.control().take_over().await.unwrap();
    assert_eq!((s.claimed, s.installed), (4, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_or_tampered_secret_is_refused_not_installed() {
    let Some((dir, redis)) = redis_server("standby-tamper") else {
        return;
    };
    let (a, _) = node(&settings(&redis.addr(), "t", "A", None, &dir), None);
    let (b, got) = node(&settings(&redis.addr(), "t", "B", Some("A"), &dir), None);
    let sink = a.sink();
    for call in 1..=3 {
        put_call(&sink, call, "k");
    }
    stored(&redis, "t:node:A:calls", 3).await;
    a.stop();
    // Call 1's sealed keys copied onto call 2 (a valid blob, another call); call 3's
    // blob altered.
    let (k1, k2, k3) = (
        format!("t:call:{}", id("A", 1)),
        format!("t:call:{}", id("A", 2)),
        format!("t:call:{}", id("A", 3)),
    );
    let moved = redis
        .command(&format!(
            "EVAL \"redis.call('HSET', KEYS[2], 'media_secret', redis.call('HGET', KEYS[1], 'media_secret')) return 1\" 2 {k1} {k2}"
        ))
        .unwrap();
    assert!(moved.contains(":1"), "{moved}");
    let bent = redis
        .command(&format!(
            "EVAL \"local b = redis.call('HGET', KEYS[1], 'media_secret') redis.call('HSET', KEYS[1], 'media_secret', string.sub(b, 1, -2) .. string.char((string.byte(b, -1) + 1) % 256)) return 1\" 1 {k3}"
        ))
        .unwrap();
    assert!(bent.contains(":1"), "{bent}");
    let s = b.control().take_over().await.unwrap();
    assert_eq!((s.claimed, s.installed), (3, 1), "{s:?}");
    let installed = got.0.lock().unwrap().installed.clone();
    for Installed {
        call,
        media,
        secret,
        ..
    } in &installed
    {
        if *call == CallRef(1) {
            assert_eq!(secret.as_deref(), Some(SECRET));
        } else {
            assert!(
                media.is_none() && secret.is_none(),
                "call {call} must not open"
            );
        }
    }
    // The refused calls leave the store; the installed one stays, owned by B.
    wait_until("refused calls deleted", Duration::from_secs(5), || {
        [&k2, &k3].iter().all(|k| {
            redis
                .command(&format!("EXISTS {k}"))
                .is_some_and(|r| r.contains(":0"))
        })
    })
    .await;
    assert!(hget(&redis, &k1, "owner").contains("\r\nB\r\n"));
}

#[tokio::test]
async fn a_missing_or_short_key_file_is_a_clear_error() {
    let dir = temp_dir("standby-key");
    let mut s = settings("127.0.0.1:1", "k", "A", None, &dir);
    let sb = s.standby.as_mut().unwrap();
    sb.key_file = dir.join("nowhere.key");
    let e = StandbyNode::start(&s, None).unwrap_err();
    assert!(matches!(e, ClusterError::Config(_)));
    let text = e.to_string();
    assert!(
        text.contains("nowhere.key") && text.contains("cannot be read"),
        "{text}"
    );
    let short = dir.join("short.key");
    std::fs::write(&short, "00ff").unwrap();
    s.standby.as_mut().unwrap().key_file = short;
    let text = StandbyNode::start(&s, None).unwrap_err().to_string();
    assert!(
        text.contains("short.key") && text.contains("64 hex digits"),
        "{text}"
    );
    let mut none = s.clone();
    none.standby = None;
    assert!(StandbyNode::start(&none, None).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_leaves_its_dead_calls_to_the_standby_then_clears_them() {
    let Some((dir, redis)) = redis_server("standby-rerun") else {
        return;
    };
    let sa = settings(&redis.addr(), "n", "A", None, &dir);
    let (a1, _) = node(&sa, None);
    let sink = a1.sink();
    for call in 1..=3 {
        put_call(&sink, call, "run1");
    }
    stored(&redis, "n:node:A:calls", 3).await;
    a1.stop();
    drop(sink);
    drop(a1);
    // A restarts at once (a process crash and a quick restart).
    let (a2, _) = node(&sa, None);
    let sink = a2.sink();
    // Its new call 1 (same number as a dead one) starts from an empty hash.
    sink.put(ReplicaUpdate {
        call: CallRef(1),
        tenant: TenantId::from("acme"),
        part: ReplicaPart::Dialog,
        public: b"{\"v\":1,\"dialog\":\"run2\"}".to_vec(),
        secret: None,
    });
    let k1 = format!("n:call:{}", id("A", 1));
    wait_until("run 2's call 1", Duration::from_secs(5), || {
        hget(&redis, &k1, "dialog").contains("run2")
    })
    .await;
    assert!(
        hget(&redis, &k1, "idx").contains("$-1"),
        "no field of the dead call 1"
    );
    // The dead calls 2 and 3 are still there for a standby to claim...
    let k2 = format!("n:call:{}", id("A", 2));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(hget(&redis, &k2, "idx").contains("run1"));
    // ...and gone once the grace has passed.
    wait_until(
        "the previous run's calls deleted",
        sbc_cluster::standby::writer::LEFTOVER_GRACE + Duration::from_secs(5),
        || {
            redis
                .command(&format!("EXISTS {k2}"))
                .is_some_and(|r| r.contains(":0"))
        },
    )
    .await;
    assert!(redis
        .command("SCARD n:node:A:calls")
        .unwrap()
        .contains(":1"));
    assert!(
        hget(&redis, &k1, "dialog").contains("run2"),
        "this run's call kept"
    );
}

/// How long claiming and installing (into the fake installer) takes for many calls:
/// `cargo test -p sbc-cluster --test standby_store takeover_of_many_calls -- --nocapture`
/// prints the figures (the takeover's share of the media gap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_of_many_calls() {
    let Some((dir, redis)) = redis_server("standby-many") else {
        return;
    };
    const CALLS: u64 = 2_000;
    let (a, _) = node(&settings(&redis.addr(), "m", "A", None, &dir), None);
    let (b, got) = node(&settings(&redis.addr(), "m", "B", Some("A"), &dir), None);
    let sink = a.sink();
    let started = Instant::now();
    for call in 1..=CALLS {
        put_call(&sink, call, "many");
    }
    stored(&redis, "m:node:A:calls", CALLS as u32).await;
    let written = started.elapsed();
    wait_until("every call warm", Duration::from_secs(10), || {
        b.warm_calls().len() == CALLS as usize
    })
    .await;
    redis
        .command("CONFIG SET slowlog-log-slower-than 10000")
        .unwrap();
    redis.command("SLOWLOG RESET").unwrap();
    let s = b.control().take_over().await.unwrap();
    assert_eq!((s.claimed, s.installed), (CALLS as u32, CALLS as u32));
    // The claim script's own run time, as Redis measured it (µs).
    let slow = redis.command("SLOWLOG GET 1").unwrap();
    let script_us = slow
        .lines()
        .nth(4)
        .and_then(|l| l.strip_prefix(':'))
        .unwrap_or("?")
        .to_string();
    assert_eq!(got.0.lock().unwrap().installed.len(), CALLS as usize);
    println!(
        "{CALLS} calls: written (3 parts each) in {} ms; takeover {} ms ({:.1} µs a call), of which the claim script ran {script_us} µs in Redis",
        written.as_millis(),
        s.duration_ms,
        s.duration_ms as f64 * 1000.0 / CALLS as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_trimmed_past_the_standby_reloads_the_peers_calls() {
    let Some((dir, redis)) = redis_server("standby-trim") else {
        return;
    };
    // A tiny stream (below what the config accepts) in one-entry radix nodes, so one
    // pipelined batch of A's writes trims entries the standby has not read yet.
    redis
        .command("CONFIG SET stream-node-max-entries 1")
        .unwrap();
    let mut sa = settings(&redis.addr(), "s", "A", None, &dir);
    sa.standby.as_mut().unwrap().stream_maxlen = 2;
    let (a, _) = node(&sa, None);
    let (b, _) = node(&settings(&redis.addr(), "s", "B", Some("A"), &dir), None);
    let reason = sbc_cluster::standby::ReloadReason::Trimmed;
    wait_until("B tailing", Duration::from_secs(5), || {
        b.reloads(sbc_cluster::standby::ReloadReason::Reconnect) == 1
    })
    .await;
    let sink = a.sink();
    for call in 1..=600 {
        put_call(&sink, call, "trim");
    }
    wait_until("every call warm", Duration::from_secs(10), || {
        b.warm_calls().len() == 600
    })
    .await;
    let len = redis.command("XLEN s:node:A:changes").unwrap();
    assert!(!len.contains(":600"), "the stream was trimmed: {len}");
    assert!(b.reloads(reason) >= 1, "the trim was noticed");
}
