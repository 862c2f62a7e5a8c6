//! Hot standby part formats of the media engine (issue #16): the [`ReplicaPart::Media`]
//! record (ports, suites, SDP addresses, rtcp-mux, pending offer, taps; keys only as
//! slots of the secret [`KeyTable`]) and the [`ReplicaPart::Indexes`] record (the relay's
//! SRTP progress and latched peers, from `relay/indexes.rs`).
//!
//! Both are JSON with a version field `v`; a record of another version, or one that
//! does not parse, is an error ([`RecordError`]), never a panic. The secret is a small
//! binary table (version byte, then each key as a length byte and key || salt) held in
//! zeroized buffers; its bytes never reach a log, a metric or a `Debug` output.
//!
//! Owns: the formats and their (de)serialization. Must not: know the engine's state
//! (engine/standby.rs converts), or log a key.
//!
//! [`ReplicaPart::Media`]: sbc_core::standby::ReplicaPart::Media
//! [`ReplicaPart::Indexes`]: sbc_core::standby::ReplicaPart::Indexes

use std::net::{IpAddr, SocketAddr};

use sbc_core::standby::SecretBytes;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::relay::{IndexReport, LegProgress, StreamProgress, TapProgress};
use crate::srtp::{MasterKey, Mki, SrtpProfile, SsrcProgress};

/// The version of both records this build writes and reads.
pub const RECORD_VERSION: u32 = 1;

/// Version byte of the secret key table.
const SECRET_VERSION: u8 = 1;

/// Most keys in one call's table: per stream (at most 64 m-lines) and leg, a few suites
/// offered plus the peer's key, and the taps'; far below this.
const MAX_KEYS: usize = 4096;

/// Why a record was refused. Carries no key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("{part} record does not parse: {reason}")]
    Parse { part: &'static str, reason: String },
    #[error("{part} record version {found}, this build reads {RECORD_VERSION}")]
    Version { part: &'static str, found: u32 },
    #[error("media record is inconsistent: {0}")]
    Invalid(&'static str),
}

/// A key as the public record names it: suite, slot in the secret table, MKI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRef {
    pub suite: String,
    pub slot: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mki: Option<String>,
}

/// One leg of a committed stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegRecord {
    pub secure: bool,
    /// The peer's key (we decrypt what it sends).
    pub rx: Option<KeyRef>,
    /// Our key toward the peer.
    pub tx: Option<KeyRef>,
    pub rtcp_mux: bool,
    pub sdp_rtp: Option<SocketAddr>,
    pub sdp_rtcp: Option<SocketAddr>,
}

/// One m-line's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRecord {
    /// The address the stream's sockets were bound on (the node's media address, the VIP
    /// in a hot standby pair).
    pub address: IpAddr,
    /// Our even RTP port per leg (0: caller, 1: callee); RTCP on the next one.
    pub ports: [u16; 2],
    /// The worker runs it (an answer committed it).
    pub committed: bool,
    /// Our keys per leg and suite (re-sent unchanged by a re-offer).
    pub our_keys: [Vec<KeyRef>; 2],
    /// What the last answer committed.
    pub legs: Option<[LegRecord; 2]>,
}

/// The o= line state per leg.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginRecord {
    pub session_id: u64,
    pub version: u64,
}

/// A leg's policy as an unanswered offer needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegPolicyRecord {
    pub srtp: String,
    pub suites: Vec<String>,
}

/// One m-line of an unanswered offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingMediaRecord {
    pub from_proto: String,
    /// The offerer's chosen `a=crypto`: tag and key.
    pub from_crypto: Option<(u32, KeyRef)>,
    pub from_mux: bool,
    pub from_sdp_rtp: Option<SocketAddr>,
    pub from_sdp_rtcp: Option<SocketAddr>,
    pub to_secure: bool,
    /// What we offered the other leg: tag and key.
    pub offered: Vec<(u32, KeyRef)>,
}

/// An offer not answered yet (early dialog, or a re-offer in flight).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRecord {
    /// `caller` or `callee`.
    pub from: String,
    pub caller: LegPolicyRecord,
    pub callee: LegPolicyRecord,
    pub max_streams: u32,
    pub bandwidth_kbps: u32,
    pub media: Vec<Option<PendingMediaRecord>>,
}

/// A tap's spec: legs, transport and destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapSpecRecord {
    /// `both`, `caller` or `callee`.
    pub legs: String,
    /// `rtp`, or the SRTP suite name.
    pub transport: String,
    pub destination: SocketAddr,
}

/// A running tap (recorded SIPREC streams are not replicated: their recording session is
/// the SIP side's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapRecord {
    pub id: u64,
    pub spec: TapSpecRecord,
    /// The tap's own SRTP key (slot), for SRTP taps.
    pub key: Option<u32>,
}

/// A call's media part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRecord {
    pub v: u32,
    pub streams: Vec<Option<StreamRecord>>,
    pub origin: [OriginRecord; 2],
    /// The first relayed codec (name, clock rate).
    pub format: Option<(String, u32)>,
    pub recorded_line: Option<usize>,
    /// The tenant's automatic tap when not started yet (no answer committed).
    pub record: Option<TapSpecRecord>,
    pub pending: Option<PendingRecord>,
    pub taps: Vec<TapRecord>,
    /// The tenant's media bandwidth limit the call's worker enforces (0: none).
    pub bandwidth_kbps: u32,
}

impl MediaRecord {
    pub fn to_json(&self) -> Vec<u8> {
        // Plain data (strings, numbers, addresses): serialization cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn parse(bytes: &[u8]) -> Result<MediaRecord, RecordError> {
        let r: MediaRecord = parse("media", bytes)?;
        if r.v != RECORD_VERSION {
            return Err(RecordError::Version {
                part: "media",
                found: r.v,
            });
        }
        Ok(r)
    }
}

fn parse<T: for<'de> Deserialize<'de>>(part: &'static str, bytes: &[u8]) -> Result<T, RecordError> {
    // Read the version first, so a newer format is named as such.
    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    match serde_json::from_slice::<Version>(bytes) {
        Ok(Version { v }) if v != RECORD_VERSION => {
            return Err(RecordError::Version { part, found: v })
        }
        Ok(_) => {}
        Err(e) => {
            return Err(RecordError::Parse {
                part,
                reason: e.to_string(),
            })
        }
    }
    serde_json::from_slice(bytes).map_err(|e| RecordError::Parse {
        part,
        reason: e.to_string(),
    })
}

/// The keys of one call: the secret of its media part.
#[derive(Default)]
pub struct KeyTable {
    keys: Vec<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyTable({} keys)", self.keys.len())
    }
}

impl KeyTable {
    /// Adds `key` of `profile` (with `mki`) and returns how the record names it.
    pub fn add(&mut self, profile: SrtpProfile, key: &MasterKey, mki: Option<&Mki>) -> KeyRef {
        let mut material = Zeroizing::new(Vec::with_capacity(key.key.len() + key.salt.len()));
        material.extend_from_slice(&key.key);
        material.extend_from_slice(&key.salt);
        self.keys.push(material);
        KeyRef {
            suite: profile.as_str().to_string(),
            // Bounded by the call's streams and taps, far below u32::MAX.
            slot: (self.keys.len() - 1) as u32,
            mki: mki.map(|m| hex(m.as_bytes())),
        }
    }

    /// Adds a tap's key; returns its slot.
    pub fn add_raw(&mut self, key: &MasterKey) -> u32 {
        let mut material = Zeroizing::new(Vec::with_capacity(key.key.len() + key.salt.len()));
        material.extend_from_slice(&key.key);
        material.extend_from_slice(&key.salt);
        self.keys.push(material);
        (self.keys.len() - 1) as u32
    }

    /// The secret bytes of the media part.
    pub fn to_secret(&self) -> SecretBytes {
        let len = 1 + self.keys.iter().map(|k| 1 + k.len()).sum::<usize>();
        let mut out = Vec::with_capacity(len);
        out.push(SECRET_VERSION);
        for k in &self.keys {
            // Master key + salt is at most 32 + 14 bytes.
            out.push(k.len() as u8);
            out.extend_from_slice(k);
        }
        SecretBytes::new(out)
    }

    /// Reads the secret of a media part.
    pub fn from_secret(secret: &SecretBytes) -> Result<KeyTable, RecordError> {
        let bad = |why| RecordError::Invalid(why);
        let bytes = secret.expose();
        let (&version, mut rest) = bytes.split_first().ok_or(bad("empty key table"))?;
        if version != SECRET_VERSION {
            return Err(RecordError::Version {
                part: "media secret",
                found: u32::from(version),
            });
        }
        let mut keys = Vec::new();
        while let Some((&n, tail)) = rest.split_first() {
            let n = usize::from(n);
            let key = tail.get(..n).ok_or(bad("key table truncated"))?;
            if keys.len() >= MAX_KEYS {
                return Err(bad("key table too long"));
            }
            keys.push(Zeroizing::new(key.to_vec()));
            rest = &tail[n..];
        }
        Ok(KeyTable { keys })
    }

    /// The key `r` names, checked against its suite; with its profile and MKI.
    pub fn get(&self, r: &KeyRef) -> Result<(SrtpProfile, MasterKey, Option<Mki>), RecordError> {
        let profile: SrtpProfile = r
            .suite
            .parse()
            .map_err(|_| RecordError::Invalid("unknown SRTP suite"))?;
        let material = usize::try_from(r.slot)
            .ok()
            .and_then(|i| self.keys.get(i))
            .ok_or(RecordError::Invalid("key slot out of the table"))?;
        let key = MasterKey::from_concatenated(profile, material)
            .map_err(|_| RecordError::Invalid("key length does not match its suite"))?;
        let mki = match &r.mki {
            None => None,
            Some(h) => Some(
                unhex(h)
                    .and_then(|b| Mki::new(&b).ok())
                    .ok_or(RecordError::Invalid("bad MKI"))?,
            ),
        };
        Ok((profile, key, mki))
    }

    /// A tap key by slot, for `profile`.
    pub fn get_raw(&self, slot: u32, profile: SrtpProfile) -> Result<MasterKey, RecordError> {
        let material = usize::try_from(slot)
            .ok()
            .and_then(|i| self.keys.get(i))
            .ok_or(RecordError::Invalid("key slot out of the table"))?;
        MasterKey::from_concatenated(profile, material)
            .map_err(|_| RecordError::Invalid("key length does not match its suite"))
    }
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(2 * b.len());
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// One SSRC's progress: [ssrc, roc, seq, srtcp index].
type SsrcRecord = [u32; 4];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LegIndexes {
    rx: Vec<SsrcRecord>,
    tx: Vec<SsrcRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    latched_rtp: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    latched_rtcp: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StreamIndexes {
    index: usize,
    legs: [LegIndexes; 2],
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TapIndexes {
    id: u64,
    legs: [Vec<SsrcRecord>; 2],
}

/// A call's indexes part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct IndexesRecord {
    v: u32,
    streams: Vec<StreamIndexes>,
    taps: Vec<TapIndexes>,
}

fn ssrc_out(p: &[SsrcProgress]) -> Vec<SsrcRecord> {
    p.iter()
        .map(|p| [p.ssrc, p.roc, u32::from(p.seq), p.srtcp_index])
        .collect()
}

fn ssrc_in(r: &[SsrcRecord]) -> Result<Vec<SsrcProgress>, RecordError> {
    r.iter()
        .map(|&[ssrc, roc, seq, srtcp_index]| {
            Ok(SsrcProgress {
                ssrc,
                roc,
                seq: u16::try_from(seq).map_err(|_| RecordError::Invalid("sequence number"))?,
                srtcp_index,
            })
        })
        .collect()
}

/// The indexes part of `report`.
pub fn indexes_to_json(report: &IndexReport) -> Vec<u8> {
    let leg = |l: &LegProgress| LegIndexes {
        rx: ssrc_out(&l.rx),
        tx: ssrc_out(&l.tx),
        latched_rtp: l.latched_rtp,
        latched_rtcp: l.latched_rtcp,
    };
    let rec = IndexesRecord {
        v: RECORD_VERSION,
        streams: report
            .streams
            .iter()
            .map(|s| StreamIndexes {
                index: s.index,
                legs: [leg(&s.legs[0]), leg(&s.legs[1])],
            })
            .collect(),
        taps: report
            .taps
            .iter()
            .map(|t| TapIndexes {
                id: t.id.0,
                legs: [ssrc_out(&t.legs[0]), ssrc_out(&t.legs[1])],
            })
            .collect(),
    };
    serde_json::to_vec(&rec).unwrap_or_default()
}

/// Reads an indexes part for `call`.
pub fn indexes_from_json(
    call: sbc_core::media::CallRef,
    bytes: &[u8],
) -> Result<IndexReport, RecordError> {
    let rec: IndexesRecord = parse("indexes", bytes)?;
    let leg = |l: &LegIndexes| -> Result<LegProgress, RecordError> {
        Ok(LegProgress {
            rx: ssrc_in(&l.rx)?,
            tx: ssrc_in(&l.tx)?,
            latched_rtp: l.latched_rtp,
            latched_rtcp: l.latched_rtcp,
        })
    };
    let mut streams = Vec::with_capacity(rec.streams.len());
    for s in &rec.streams {
        streams.push(StreamProgress {
            index: s.index,
            legs: [leg(&s.legs[0])?, leg(&s.legs[1])?],
        });
    }
    let mut taps = Vec::with_capacity(rec.taps.len());
    for t in &rec.taps {
        taps.push(TapProgress {
            id: sbc_core::tap::TapId(t.id),
            legs: [ssrc_in(&t.legs[0])?, ssrc_in(&t.legs[1])?],
        });
    }
    Ok(IndexReport {
        call,
        streams,
        taps,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn key_table_round_trips_and_refuses_garbage() {
        let p = SrtpProfile::Aes256CmHmacSha1_80;
        let k = MasterKey::from_concatenated(p, &[0x5a; 46]).unwrap();
        let mut t = KeyTable::default();
        let r = t.add(p, &k, Some(&Mki::new(&[1, 2]).unwrap()));
        let s = t.to_secret();
        let back = KeyTable::from_secret(&s).unwrap();
        let (bp, bk, mki) = back.get(&r).unwrap();
        assert_eq!(bp, p);
        assert_eq!((&bk.key, &bk.salt), (&k.key, &k.salt));
        assert_eq!(mki.unwrap().as_bytes(), &[1, 2]);
        assert!(!format!("{back:?} {s:?}").contains("5a"));
        // Truncated, wrong version, wrong suite for the length.
        let raw = s.expose();
        assert!(KeyTable::from_secret(&SecretBytes::new(raw[..10].to_vec())).is_err());
        assert!(KeyTable::from_secret(&SecretBytes::new(vec![9, 1, 1])).is_err());
        let wrong = KeyRef {
            suite: "AES_CM_128_HMAC_SHA1_80".into(),
            ..r
        };
        assert!(back.get(&wrong).is_err());
    }

    #[test]
    fn records_of_another_version_or_shape_are_errors() {
        assert!(matches!(
            MediaRecord::parse(br#"{"v":2}"#),
            Err(RecordError::Version { found: 2, .. })
        ));
        assert!(matches!(
            MediaRecord::parse(b"{not json"),
            Err(RecordError::Parse { .. })
        ));
        assert!(indexes_from_json(sbc_core::media::CallRef(1), br#"{"v":1,"streams":7}"#).is_err());
    }
}
