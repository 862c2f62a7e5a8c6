//! The standby's tailer: the peer's change stream read into a warm copy of its calls.
//!
//! Each round pipelines `XINFO STREAM` (were entries trimmed before they were read? The
//! tailer counts the entries it read against the stream's `entries-added` and length,
//! Redis 7; then it reloads) and `XREAD BLOCK` from the last id. An entry
//! names a call and the parts that changed; the tailer then reads the call's hash
//! (`HGETALL`, pipelined per batch of entries) rather than carrying the parts in the
//! entry: the stream stays small (ids only, so `MAXLEN` bounds it by entries, not by
//! kilobytes of SDP state), and a burst of entries for one call costs one read of its
//! latest state. After any (re)connect the tailer reloads the peer's whole call set
//! (`SMEMBERS` + `HGETALL`) and resumes from the stream's last id at that moment (a reload
//! after that id is harmless: each entry only makes the tailer read a hash again).
//!
//! The warm copy holds each call's parts as stored, the secret still sealed (it is opened
//! only by a takeover, so a standby's memory holds no SRTP key of a call it does not
//! serve). Replication lag = now − the newest entry id's time (Redis' clock; nodes are
//! expected to run NTP); 0 right after a reload, which leaves nothing outstanding.
//!
//! Owns: the tailer's connection and the warm copy. Must not: bind sockets or install
//! anything (that is the takeover's), write to Redis.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sbc_core::standby::ReplicaPart;
use tracing::{info, warn};

use super::script::SECRET_FIELD;
use super::{Node, ReloadReason};
use crate::resp::Value;
use crate::{connect_with, with_deadline, ClusterError, Link, MAINTENANCE_TIMEOUT};

/// How long one XREAD waits for entries: short enough that a stop or a dead connection
/// is noticed within a second, long enough that an idle standby costs one round trip a
/// second.
const BLOCK: Duration = Duration::from_millis(1_000);
/// Entries read per round.
const READ_COUNT: usize = 512;
/// Hashes read per pipelined round trip of a reload.
const RELOAD_CHUNK: usize = 256;
/// Wait before reconnecting after a failure.
const RETRY: Duration = Duration::from_millis(500);

/// One call of the peer as the store holds it.
#[derive(Debug, Clone, Default)]
pub(crate) struct WarmCall {
    pub tenant: String,
    pub epoch: u64,
    pub parts: HashMap<ReplicaPart, Vec<u8>>,
    /// The sealed media secret (opened only at takeover).
    pub sealed: Option<Vec<u8>>,
}

impl WarmCall {
    pub fn part_names(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = ReplicaPart::ALL
            .into_iter()
            .filter(|p| self.parts.contains_key(p))
            .map(ReplicaPart::field)
            .collect();
        if self.sealed.is_some() {
            v.push(SECRET_FIELD);
        }
        v
    }
}

/// A hash's fields (`HGETALL` reply) by name.
pub(crate) fn fields(v: &Value) -> HashMap<String, Vec<u8>> {
    let mut m = HashMap::new();
    if let Some(items) = v.array() {
        for pair in items.chunks(2) {
            if let [Value::Bulk(Some(k)), Value::Bulk(Some(val))] = pair {
                if let Ok(k) = String::from_utf8(k.clone()) {
                    m.insert(k, val.clone());
                }
            }
        }
    }
    m
}

/// The warm copy of a hash owned by `owner` (`None`: gone, or owned by another node).
fn warm_call(owner: &str, f: &HashMap<String, Vec<u8>>) -> Option<WarmCall> {
    if f.get("owner").map(Vec::as_slice) != Some(owner.as_bytes()) {
        return None;
    }
    let text = |k: &str| f.get(k).and_then(|v| std::str::from_utf8(v).ok());
    Some(WarmCall {
        tenant: text("tenant").unwrap_or_default().to_string(),
        epoch: text("epoch").and_then(|e| e.parse().ok()).unwrap_or(0),
        parts: ReplicaPart::ALL
            .into_iter()
            .filter_map(|p| f.get(p.field()).map(|v| (p, v.clone())))
            .collect(),
        sealed: f.get(SECRET_FIELD).filter(|s| !s.is_empty()).cloned(),
    })
}

/// A stream entry id `ms-seq`.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One stream entry: (id, call, op).
type Entry = (String, String, String);

fn entries(v: &Value) -> Vec<Entry> {
    let mut out = Vec::new();
    let streams = v.array().unwrap_or(&[]);
    for s in streams {
        let Some([_, list]) = s.array() else { continue };
        for e in list.array().unwrap_or(&[]) {
            let Some([id, kv]) = e.array() else { continue };
            let Some(id) = id.text() else { continue };
            let f = fields(kv);
            let get = |k: &str| {
                f.get(k)
                    .and_then(|v| String::from_utf8(v.clone()).ok())
                    .unwrap_or_default()
            };
            out.push((id, get("call"), get("op")));
        }
    }
    out
}

/// What `XINFO STREAM` says of a stream: its last id, entries ever added (Redis 7) and
/// length. `None` when the stream does not exist (an error reply).
#[derive(Debug, Clone, PartialEq, Eq)]
struct StreamInfo {
    last_id: String,
    added: u64,
    length: u64,
}

fn stream_info(v: &Value) -> Option<StreamInfo> {
    let items = v.array()?;
    let get = |name: &str| {
        items
            .chunks(2)
            .find(|kv| kv.first().and_then(Value::text).as_deref() == Some(name))
            .and_then(|kv| kv.get(1))
    };
    Some(StreamInfo {
        last_id: get("last-generated-id")?.text()?,
        added: u64::try_from(get("entries-added")?.int()?).ok()?,
        length: u64::try_from(get("length")?.int()?).ok()?,
    })
}

impl StreamInfo {
    /// Entries were trimmed (or the stream was recreated) before the tailer read them:
    /// the next entry it needs, number `read + 1` of those ever added, is older than the
    /// oldest kept (number `added - length + 1`). Redis trims with `MAXLEN` without
    /// touching `max-deleted-entry-id`, so the count of entries is what tells.
    fn lost_after(&self, read: u64) -> bool {
        read + self.length < self.added || self.added < read
    }
}

struct Tailer {
    node: Arc<Node>,
    peer: String,
    link: Option<Link>,
    /// Last entry id applied (`0-0`: from the start).
    last: String,
    /// How many entries the stream had ever been given up to `last` (its
    /// `entries-added` at the reload, plus every entry read since).
    read: u64,
}

/// The tailer task: until the node stops.
pub(crate) async fn run(node: Arc<Node>) {
    let Some(peer) = node.standby.peer.clone() else {
        return;
    };
    let mut stop = node.stop.subscribe();
    let mut t = Tailer {
        node,
        peer,
        link: None,
        last: "0-0".into(),
        read: 0,
    };
    loop {
        let round = async {
            if t.link.is_none() {
                t.link = Some(connect_with(&t.node.settings, &[]).await?);
                t.reload(ReloadReason::Reconnect).await?;
            }
            t.poll().await
        };
        let r = tokio::select! {
            _ = stop.changed() => return,
            r = round => r,
        };
        if let Err(e) = r {
            if t.link.take().is_some() {
                warn!(event = "standby_tail_lost", peer = %t.peer, error = %e, "lost the peer's change stream; reloading its calls on reconnect");
            }
            metrics::counter!("sbc_cluster_redis_errors_total", "kind" => e.kind()).increment(1);
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}

impl Tailer {
    fn link(&mut self) -> Result<&mut Link, ClusterError> {
        self.link
            .as_mut()
            .ok_or_else(|| ClusterError::Connect("no link".into()))
    }

    /// The peer's whole call set, and the stream id to resume from.
    async fn reload(&mut self, reason: ReloadReason) -> Result<(), ClusterError> {
        let n = self.node.clone();
        let stream = n.keys.stream(&self.peer);
        let set = n.keys.calls(&self.peer);
        let link = self.link()?;
        let (info, ids) = with_deadline(MAINTENANCE_TIMEOUT, async {
            link.conn.push(&[b"XINFO", b"STREAM", stream.as_bytes()]);
            link.conn.push(&[b"SMEMBERS", set.as_bytes()]);
            link.conn.flush().await?;
            let last = link.conn.read().await?;
            let ids = link.conn.read().await?;
            Ok((last, ids))
        })
        .await?;
        let info = stream_info(&info).unwrap_or(StreamInfo {
            last_id: "0-0".into(),
            added: 0,
            length: 0,
        });
        let ids: Vec<String> = ids
            .array()
            .unwrap_or(&[])
            .iter()
            .filter_map(Value::text)
            .collect();
        let mut warm = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(RELOAD_CHUNK) {
            for (id, w) in self.read_calls(chunk).await? {
                if let Some(w) = w {
                    warm.insert(id, w);
                }
            }
        }
        let calls = warm.len();
        *n.warm() = warm;
        self.last = info.last_id;
        self.read = info.added;
        // The copy now holds every change up to the stream's last id, read just now: no
        // change is outstanding, so the lag is 0 until the next entry is read (the age of
        // the peer's last change would be wrong here: a quiet peer is not a late copy).
        self.node.lag_ms.store(0, Ordering::Relaxed);
        metrics::gauge!("sbc_cluster_replication_lag_seconds").set(0.0);
        metrics::gauge!("sbc_cluster_warm_calls").set(calls as f64);
        metrics::counter!("sbc_cluster_standby_reloads_total", "reason" => reason.as_str())
            .increment(1);
        n.reloads[reason as usize].fetch_add(1, Ordering::Relaxed);
        info!(event = "standby_reloaded", peer = %self.peer, calls, reason = reason.as_str(), "reloaded the peer's calls");
        Ok(())
    }

    /// Read some calls' hashes (pipelined).
    async fn read_calls(
        &mut self,
        ids: &[String],
    ) -> Result<Vec<(String, Option<WarmCall>)>, ClusterError> {
        let n = self.node.clone();
        let peer = self.peer.clone();
        let link = self.link()?;
        with_deadline(MAINTENANCE_TIMEOUT, async {
            for id in ids {
                link.conn.push(&[b"HGETALL", n.keys.call(id).as_bytes()]);
            }
            link.conn.flush().await?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let v = link.conn.read().await?;
                out.push((id.clone(), warm_call(&peer, &fields(&v))));
            }
            Ok(out)
        })
        .await
    }

    /// One round: trimmed? then reload; else apply new entries.
    async fn poll(&mut self) -> Result<(), ClusterError> {
        let stream = self.node.keys.stream(&self.peer);
        let last = self.last.clone();
        let count = READ_COUNT.to_string();
        let block = BLOCK.as_millis().to_string();
        let link = self.link()?;
        let (info, read) = with_deadline(BLOCK + MAINTENANCE_TIMEOUT, async {
            link.conn.push(&[b"XINFO", b"STREAM", stream.as_bytes()]);
            link.conn.push(&[
                b"XREAD",
                b"COUNT",
                count.as_bytes(),
                b"BLOCK",
                block.as_bytes(),
                b"STREAMS",
                stream.as_bytes(),
                last.as_bytes(),
            ]);
            link.conn.flush().await?;
            Ok((link.conn.read().await?, link.conn.read().await?))
        })
        .await?;
        if let Some(info) = stream_info(&info) {
            if info.lost_after(self.read) {
                warn!(event = "standby_stream_trimmed", peer = %self.peer, "the peer's stream was trimmed past the last entry read: reloading its calls");
                return self.reload(ReloadReason::Trimmed).await;
            }
        }
        if let Value::Error(e) = &read {
            return Err(ClusterError::Server(e.clone()));
        }
        let list = entries(&read);
        let count = list.len() as u64;
        let Some((newest, _, _)) = list.last() else {
            return Ok(());
        };
        let newest = newest.clone();
        // The latest op per call, in order.
        let mut ops: Vec<(String, String)> = Vec::new();
        for (_, call, op) in list {
            ops.retain(|(c, _)| *c != call);
            ops.push((call, op));
        }
        let fetch: Vec<String> = ops
            .iter()
            .filter(|(_, op)| op == "put")
            .map(|(c, _)| c.clone())
            .collect();
        let read = self.read_calls(&fetch).await?;
        {
            let mut warm = self.node.warm();
            for (call, op) in &ops {
                if op != "put" {
                    warm.remove(call);
                }
            }
            for (id, w) in read {
                match w {
                    Some(w) => warm.insert(id, w),
                    None => warm.remove(&id),
                };
            }
            metrics::gauge!("sbc_cluster_warm_calls").set(warm.len() as f64);
        }
        if let Some((ms, _)) = parse_id(&newest) {
            let lag = now_ms().saturating_sub(ms);
            self.node.lag_ms.store(lag, Ordering::Relaxed);
            metrics::gauge!("sbc_cluster_replication_lag_seconds").set(lag as f64 / 1000.0);
        }
        self.last = newest;
        self.read += count;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::Bulk(Some(s.as_bytes().to_vec()))
    }

    #[test]
    fn xread_entries_and_xinfo_parse() {
        let reply = Value::Array(Some(vec![Value::Array(Some(vec![
            bulk("p:node:A:changes"),
            Value::Array(Some(vec![Value::Array(Some(vec![
                bulk("1700000000000-3"),
                Value::Array(Some(vec![
                    bulk("call"),
                    bulk("A:01"),
                    bulk("op"),
                    bulk("put"),
                ])),
            ]))])),
        ]))]));
        assert_eq!(
            entries(&reply),
            vec![("1700000000000-3".into(), "A:01".into(), "put".into())]
        );
        assert!(entries(&Value::Array(None)).is_empty());
        let info = Value::Array(Some(vec![
            bulk("length"),
            Value::Int(2),
            bulk("last-generated-id"),
            bulk("17-2"),
            bulk("max-deleted-entry-id"),
            bulk("0-0"),
            bulk("entries-added"),
            Value::Int(10),
        ]));
        let i = stream_info(&info).expect("info");
        assert_eq!((i.last_id.as_str(), i.added, i.length), ("17-2", 10, 2));
        // Entries 9 and 10 are kept: having read 8 loses nothing, 7 loses entry 8.
        assert!(!i.lost_after(8) && !i.lost_after(10));
        assert!(i.lost_after(7));
        assert!(i.lost_after(11), "recreated stream");
        assert!(stream_info(&Value::Error("ERR no such key".into())).is_none());
    }

    #[test]
    fn only_the_peers_own_calls_are_warm() {
        let mut f = HashMap::new();
        f.insert("owner".to_string(), b"A".to_vec());
        f.insert("epoch".to_string(), b"2".to_vec());
        f.insert("tenant".to_string(), b"t".to_vec());
        f.insert("dialog".to_string(), b"{}".to_vec());
        f.insert(SECRET_FIELD.to_string(), Vec::new());
        let w = warm_call("A", &f).expect("warm");
        assert_eq!(w.epoch, 2);
        assert_eq!(w.part_names(), vec!["dialog"]);
        assert!(warm_call("B", &f).is_none());
        assert!(warm_call("A", &HashMap::new()).is_none());
    }
}
