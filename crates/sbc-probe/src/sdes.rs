//! SDES-SRTP offers and answers (RFC 4568) for the probes, on sbc-media's SDP parser and
//! SRTP keys.
//!
//! Owns: making random master keys, writing the probes' one-stream audio offers and
//! answers, reading the peer's address, suite and key back from its SDP, and parsing
//! `SUITE:KEY` arguments. Each side's `a=crypto` key is the one it encrypts its own media
//! with (RFC 4568 §6.1): a probe sends with its own key and decrypts with the peer's.
//! Must not: touch sockets, or print keys anywhere but in the SDP bodies it writes.

use std::net::{IpAddr, SocketAddr};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use rand::RngCore;
use sbc_media::sdp::{self, Media, SessionDescription};
use sbc_media::srtp::{MasterKey, SrtpProfile};
use zeroize::Zeroizing;

use crate::ProbeError;

/// Base64 for `inline:` keys: written padded, read with or without padding.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A key of ours, as offered or answered in one `a=crypto` line.
#[derive(Debug, Clone)]
pub struct LocalKey {
    pub tag: u32,
    pub profile: SrtpProfile,
    pub key: MasterKey,
}

/// What was agreed for one stream, read from the peer's SDP.
#[derive(Debug, Clone)]
pub struct Agreed {
    /// Where the peer receives media (its `c=` address and `m=` port).
    pub remote: SocketAddr,
    /// The crypto tag the answer carries.
    pub tag: u32,
    pub profile: SrtpProfile,
    /// The peer's key: what we decrypt with.
    pub remote_key: MasterKey,
    /// The offered transport, echoed in an answer.
    pub proto: &'static str,
    /// The first offered format, used in an answer.
    pub format: String,
}

/// A fresh random master key and salt for `profile` (from the OS generator).
pub fn random_key(profile: SrtpProfile) -> MasterKey {
    let n = profile.master_key_len() + profile.master_salt_len();
    let mut buf = Zeroizing::new(vec![0u8; n]);
    rand::rngs::OsRng.fill_bytes(&mut buf);
    MasterKey::new(
        &buf[..profile.master_key_len()],
        &buf[profile.master_key_len()..],
    )
}

/// `key || salt` in base64, as `inline:` carries it.
pub fn inline(key: &MasterKey) -> String {
    let mut material = Zeroizing::new(key.key.clone());
    material.extend_from_slice(&key.salt);
    B64.encode(material.as_slice())
}

/// Fresh keys for an offer, one per suite, tags from 1.
pub fn offer_keys(suites: &[SrtpProfile]) -> Vec<LocalKey> {
    suites
        .iter()
        .zip(1u32..)
        .map(|(&profile, tag)| LocalKey {
            tag,
            profile,
            key: random_key(profile),
        })
        .collect()
}

fn ip_words(ip: IpAddr) -> &'static str {
    if ip.is_ipv6() {
        "IP6"
    } else {
        "IP4"
    }
}

fn session(addr: IpAddr, session_id: u64, name: &str) -> String {
    let ipv = ip_words(addr);
    format!("v=0\r\no=sbc-edge-probe {session_id} 1 IN {ipv} {addr}\r\ns={name}\r\nc=IN {ipv} {addr}\r\nt=0 0\r\n")
}

/// An audio offer over RTP/SAVP with PCMU at 20 ms, one `a=crypto` line per key.
pub fn offer_sdp(addr: IpAddr, port: u16, keys: &[LocalKey], session_id: u64) -> String {
    let mut s = session(addr, session_id, "sbc-edge call");
    s.push_str(&format!(
        "m=audio {port} RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n"
    ));
    for k in keys {
        s.push_str(&format!(
            "a=crypto:{} {} inline:{}\r\n",
            k.tag,
            k.profile.as_str(),
            inline(&k.key)
        ));
    }
    s
}

/// The answer to `agreed`: one audio stream at `addr:port` with our key.
pub fn answer_sdp(
    addr: IpAddr,
    port: u16,
    agreed: &Agreed,
    ours: &LocalKey,
    session_id: u64,
) -> String {
    let mut s = session(addr, session_id, "sbc-edge demo answering endpoint");
    s.push_str(&format!(
        "m=audio {port} {} {}\r\n",
        agreed.proto, agreed.format
    ));
    if agreed.format == "0" {
        s.push_str("a=rtpmap:0 PCMU/8000\r\n");
    }
    s.push_str(&format!(
        "a=ptime:20\r\na=sendrecv\r\na=crypto:{} {} inline:{}\r\n",
        ours.tag,
        ours.profile.as_str(),
        inline(&ours.key)
    ));
    s
}

fn parse(body: &[u8]) -> Result<SessionDescription, ProbeError> {
    sdp::parse(body).map_err(|e| ProbeError::Sdp(e.to_string()))
}

/// The first relayable audio stream over SRTP and where it goes.
fn secure_audio(sd: &SessionDescription) -> Result<(&Media, SocketAddr), ProbeError> {
    let m = sd
        .media
        .iter()
        .find(|m| m.kind == "audio" && m.is_relayable())
        .ok_or_else(|| ProbeError::Sdp("no audio stream with a port".into()))?;
    let proto = m
        .proto
        .ok_or_else(|| ProbeError::Sdp(format!("transport {} is not RTP", m.proto_raw)))?;
    if !proto.is_secure() {
        return Err(ProbeError::Sdp(format!(
            "transport {} is not SRTP (RTP/SAVP expected)",
            proto.as_str()
        )));
    }
    let ip = m
        .connection
        .or(sd.connection)
        .and_then(|c| c.address)
        .ok_or_else(|| ProbeError::Sdp("no literal c= address".into()))?;
    Ok((m, SocketAddr::new(ip, m.port)))
}

/// Reads an offer: the first usable `a=crypto` line of a suite we implement, in the
/// offerer's order of preference.
pub fn choose_from_offer(body: &[u8]) -> Result<Agreed, ProbeError> {
    let sd = parse(body)?;
    let (m, remote) = secure_audio(&sd)?;
    let c = m
        .crypto
        .iter()
        .find(|c| c.usable && c.profile.is_some() && c.key.is_some())
        .ok_or_else(|| ProbeError::Sdp("no usable a=crypto line (suite we implement)".into()))?;
    let (Some(profile), Some(key)) = (c.profile, c.key.clone()) else {
        return Err(ProbeError::Sdp("no usable a=crypto line".into()));
    };
    Ok(Agreed {
        remote,
        tag: c.tag,
        profile,
        remote_key: key,
        proto: m.proto.map(|p| p.as_str()).unwrap_or("RTP/SAVP"),
        format: m.formats.first().cloned().unwrap_or_else(|| "0".into()),
    })
}

/// Reads an answer to `offered`: the chosen line's tag and suite must be one we offered
/// (RFC 4568 §7.1.2); returns what was agreed and our key for it.
pub fn read_answer<'a>(
    body: &[u8],
    offered: &'a [LocalKey],
) -> Result<(Agreed, &'a LocalKey), ProbeError> {
    let sd = parse(body)?;
    let (m, remote) = secure_audio(&sd)?;
    let c = m
        .crypto
        .first()
        .ok_or_else(|| ProbeError::Sdp("the answer has no a=crypto line".into()))?;
    let ours = offered
        .iter()
        .find(|k| k.tag == c.tag && c.profile == Some(k.profile))
        .ok_or_else(|| {
            ProbeError::Sdp(format!(
                "the answer chose a=crypto:{} {}, which was not offered",
                c.tag, c.suite
            ))
        })?;
    let key = c
        .key
        .clone()
        .ok_or_else(|| ProbeError::Sdp("the answer's key is not usable".into()))?;
    Ok((
        Agreed {
            remote,
            tag: c.tag,
            profile: ours.profile,
            remote_key: key,
            proto: m.proto.map(|p| p.as_str()).unwrap_or("RTP/SAVP"),
            format: m.formats.first().cloned().unwrap_or_else(|| "0".into()),
        },
        ours,
    ))
}

/// Parses `SUITE:BASE64` (the key as an `inline:` carries it, `inline:` itself optional).
pub fn parse_key_arg(arg: &str) -> Result<(SrtpProfile, MasterKey), ProbeError> {
    let (suite, key) = arg
        .split_once(':')
        .ok_or_else(|| ProbeError::BadInput("a key is SUITE:BASE64".into()))?;
    let profile: SrtpProfile = suite
        .parse()
        .map_err(|_| ProbeError::BadInput(format!("unknown SRTP suite {suite:?}")))?;
    let key = key.strip_prefix("inline:").unwrap_or(key);
    let key = key.split('|').next().unwrap_or(key);
    let material = Zeroizing::new(
        B64.decode(key.trim())
            .map_err(|_| ProbeError::BadInput(format!("the {suite} key is not base64")))?,
    );
    let key = MasterKey::from_concatenated(profile, &material)
        .map_err(|e| ProbeError::BadInput(format!("the {suite} key: {e}")))?;
    Ok((profile, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LO: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn offer_then_answer_agree_on_suite_and_keys() {
        let keys = offer_keys(&[SrtpProfile::AeadAes256Gcm, SrtpProfile::AesCm128HmacSha1_80]);
        let offer = offer_sdp(LO, 4000, &keys, 7);
        let agreed = choose_from_offer(offer.as_bytes()).expect("offer");
        assert_eq!(agreed.remote, "127.0.0.1:4000".parse().expect("addr"));
        assert_eq!(agreed.profile, SrtpProfile::AeadAes256Gcm);
        assert_eq!(agreed.tag, 1);
        assert_eq!(agreed.remote_key.key, keys[0].key.key);
        assert_eq!(agreed.remote_key.salt, keys[0].key.salt);
        let ours = LocalKey {
            tag: agreed.tag,
            profile: agreed.profile,
            key: random_key(agreed.profile),
        };
        let answer = answer_sdp(LO, 5000, &agreed, &ours, 8);
        let (back, mine) = read_answer(answer.as_bytes(), &keys).expect("answer");
        assert_eq!(back.remote.port(), 5000);
        assert_eq!(mine.tag, 1);
        assert_eq!(back.profile, SrtpProfile::AeadAes256Gcm);
        assert_eq!(back.remote_key.key, ours.key.key);
    }

    #[test]
    fn an_answer_with_an_unoffered_tag_or_plain_rtp_is_refused() {
        let keys = offer_keys(&[SrtpProfile::AesCm128HmacSha1_80]);
        let agreed = choose_from_offer(offer_sdp(LO, 4000, &keys, 1).as_bytes()).expect("offer");
        let other = LocalKey {
            tag: 9,
            profile: SrtpProfile::AesCm128HmacSha1_80,
            key: random_key(SrtpProfile::AesCm128HmacSha1_80),
        };
        let answer = answer_sdp(LO, 5000, &agreed, &other, 1);
        let err = read_answer(answer.as_bytes(), &keys).expect_err("tag 9 not offered");
        assert!(err.to_string().contains("not offered"), "{err}");
        let plain = offer_sdp(LO, 4000, &keys, 1).replace("RTP/SAVP", "RTP/AVP");
        let err = choose_from_offer(plain.as_bytes()).expect_err("plain RTP");
        assert!(err.to_string().contains("not SRTP"), "{err}");
    }

    #[test]
    fn key_arguments() {
        let k = random_key(SrtpProfile::AesCm128HmacSha1_80);
        let arg = format!("AES_CM_128_HMAC_SHA1_80:inline:{}|2^31", inline(&k));
        let (p, back) = parse_key_arg(&arg).expect("key");
        assert_eq!(p, SrtpProfile::AesCm128HmacSha1_80);
        assert_eq!(back.key, k.key);
        assert!(parse_key_arg("AES_CM_128_HMAC_SHA1_80:AAAA").is_err());
        assert!(parse_key_arg("NOPE:AAAA").is_err());
        assert!(parse_key_arg("no-colon").is_err());
    }
}
