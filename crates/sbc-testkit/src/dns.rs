//! A DNS server on loopback for resolver tests: an authoritative in-memory zone served
//! over UDP and TCP on one ephemeral port ([`DnsServer`]), a server that never answers
//! ([`silent_server`]) and a clock tests move by hand ([`ManualClock`]).
//!
//! A small responder over hickory-proto's message codec rather than hickory-server's
//! catalog: tests need answers a real authority would not give (huge record sets,
//! CNAME loops, an empty NOERROR) and to count the queries that reach the server (to see
//! the cache at work), and this keeps both a few lines.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NAPTR, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

type Zone = HashMap<(String, RecordType), Vec<Record>>;

/// An authoritative server for whatever names the test adds, on 127.0.0.1 (UDP and TCP,
/// same port). Stops when dropped.
pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    log: Arc<Mutex<Vec<(String, RecordType)>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn name(s: &str) -> Name {
    let mut n = Name::from_ascii(s).expect("test DNS name");
    n.set_fqdn(true);
    n
}

impl DnsServer {
    /// Bind UDP and TCP on one free loopback port and serve.
    pub async fn start() -> DnsServer {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
            let addr = udp.local_addr().expect("UDP address");
            // The TCP port of the same number may be taken: try another.
            if let Ok(tcp) = TcpListener::bind(addr).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().expect("UDP address");
        let zone: Arc<Mutex<Zone>> = Arc::default();
        let log: Arc<Mutex<Vec<(String, RecordType)>>> = Arc::default();
        let udp_task = {
            let (zone, log) = (zone.clone(), log.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                    if let Some(resp) = respond(&zone, &log, &buf[..n], true) {
                        let _ = udp.send_to(&resp, from).await;
                    }
                }
            })
        };
        let tcp_task = {
            let (zone, log) = (zone.clone(), log.clone());
            tokio::spawn(async move {
                while let Ok((mut s, _)) = tcp.accept().await {
                    let (zone, log) = (zone.clone(), log.clone());
                    tokio::spawn(async move {
                        loop {
                            let mut len = [0u8; 2];
                            if s.read_exact(&mut len).await.is_err() {
                                return;
                            }
                            let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
                            if s.read_exact(&mut msg).await.is_err() {
                                return;
                            }
                            let Some(resp) = respond(&zone, &log, &msg, false) else {
                                return;
                            };
                            let Ok(n) = u16::try_from(resp.len()) else {
                                return;
                            };
                            let mut out = n.to_be_bytes().to_vec();
                            out.extend_from_slice(&resp);
                            if s.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            })
        };
        DnsServer {
            addr,
            zone,
            log,
            tasks: vec![udp_task, tcp_task],
        }
    }

    fn add(&self, owner: &str, ttl: u32, data: RData) {
        let rtype = data.record_type();
        let rec = Record::from_rdata(name(owner), ttl, data);
        self.zone
            .lock()
            .expect("zone")
            .entry((key(owner), rtype))
            .or_default()
            .push(rec);
    }

    pub fn add_a(&self, owner: &str, ip: IpAddr, ttl: u32) {
        match ip {
            IpAddr::V4(v4) => self.add(owner, ttl, RData::A(A(v4))),
            IpAddr::V6(v6) => self.add(owner, ttl, RData::AAAA(AAAA(v6))),
        }
    }

    pub fn add_srv(
        &self,
        owner: &str,
        priority: u16,
        weight: u16,
        port: u16,
        target: &str,
        ttl: u32,
    ) {
        let rd = SRV::new(priority, weight, port, name(target));
        self.add(owner, ttl, RData::SRV(rd));
    }

    /// A NAPTR with flag "S" and no regexp (RFC 3263 §4.1).
    pub fn add_naptr(
        &self,
        owner: &str,
        order: u16,
        preference: u16,
        services: &str,
        replacement: &str,
        ttl: u32,
    ) {
        let rd = NAPTR::new(
            order,
            preference,
            b"s".to_vec().into_boxed_slice(),
            services.as_bytes().to_vec().into_boxed_slice(),
            Vec::new().into_boxed_slice(),
            name(replacement),
        );
        self.add(owner, ttl, RData::NAPTR(rd));
    }

    pub fn add_cname(&self, owner: &str, target: &str, ttl: u32) {
        self.add(owner, ttl, RData::CNAME(CNAME(name(target))));
    }

    /// Drop every record of `owner` of type `rtype`.
    pub fn remove(&self, owner: &str, rtype: RecordType) {
        self.zone.lock().expect("zone").remove(&(key(owner), rtype));
    }

    /// Queries received for `owner`/`rtype` so far.
    pub fn queries(&self, owner: &str, rtype: RecordType) -> usize {
        let k = key(owner);
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|(n, t)| *n == k && *t == rtype)
            .count()
    }

    /// Every query received so far.
    pub fn total_queries(&self) -> usize {
        self.log.lock().expect("log").len()
    }
}

/// The answer to one query: the records of (name, type); else the name's CNAME (not
/// chased: the resolver follows it); else NOERROR with no answer if the name has other
/// records, NXDOMAIN if it has none. Over UDP an answer past 512 bytes (or the query's
/// EDNS size) is sent truncated, so the client asks again over TCP.
fn respond(
    zone: &Mutex<Zone>,
    log: &Mutex<Vec<(String, RecordType)>>,
    bytes: &[u8],
    udp: bool,
) -> Option<Vec<u8>> {
    let req = Message::from_vec(bytes).ok()?;
    let q = req.queries.first()?.clone();
    let qname = key(&q.name().to_ascii());
    log.lock().ok()?.push((qname.clone(), q.query_type()));
    let mut resp = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
    resp.metadata.authoritative = true;
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_query(q.clone());
    {
        let zone = zone.lock().ok()?;
        if let Some(recs) = zone.get(&(qname.clone(), q.query_type())) {
            resp.add_answers(recs.iter().cloned());
        } else if let Some(recs) = zone.get(&(qname.clone(), RecordType::CNAME)) {
            resp.add_answers(recs.iter().cloned());
        } else if !zone.keys().any(|(n, _)| *n == qname) {
            resp.metadata.response_code = ResponseCode::NXDomain;
        }
    }
    if let Some(edns) = &req.edns {
        resp.set_edns(edns.clone());
    }
    let out = resp.to_vec().ok()?;
    let limit = req
        .edns
        .as_ref()
        .map_or(512, |e| usize::from(e.max_payload()).max(512));
    if udp && out.len() > limit {
        return resp.truncate().to_vec().ok();
    }
    Some(out)
}

/// A UDP "server" that receives queries and never answers (also a TCP listener that
/// accepts and never answers). Returns its address and the handle that keeps it open.
pub async fn silent_server() -> (SocketAddr, JoinHandle<()>) {
    let (udp, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
        let addr = udp.local_addr().expect("UDP address");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().expect("UDP address");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        let mut buf = vec![0u8; 4096];
        loop {
            tokio::select! {
                r = udp.recv_from(&mut buf) => if r.is_err() { return },
                r = tcp.accept() => match r { Ok((s, _)) => held.push(s), Err(_) => return },
            }
        }
    });
    (addr, task)
}

/// A clock that moves only when told: the resolver cache's time in TTL tests.
#[derive(Debug)]
pub struct ManualClock(Mutex<Instant>);

impl ManualClock {
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock(Mutex::new(Instant::now())))
    }

    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().expect("clock");
        *t += by;
    }
}

impl sbc_dns::Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock().expect("clock")
    }
}
