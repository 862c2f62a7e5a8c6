//! The two-leg media checker behind `sbc-edge media-check`: the probe plays both ends of
//! a call whose signalling someone else did (sipp, in deploy/sipp/interop.sh) and checks
//! that SRTP flows through the gateway's relay both ways.
//!
//! Each leg sends a 20 ms stream to its relay port with its own key and decrypts what
//! arrives with the key the gateway gave it; every packet sent on one leg must arrive on
//! the other. Each leg first sends one priming packet and waits [`PRIME_WAIT`], so the
//! relay has latched both legs before the counted stream starts (until a leg latches, the
//! relay sends to the address in that leg's SDP, where a sipp peer has no socket). Owns:
//! the two legs and the report. Must not: log keys, or wait without a bound.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use sbc_media::srtp::{MasterKey, SrtpProfile};
use tokio::time::Instant;

use crate::client::{packet_count, Direction, ECHO_GRACE, MAX_DURATION, PACKET_INTERVAL};
use crate::media::Leg;
use crate::ProbeError;

/// Between the priming packets and the counted stream: enough for the relay to latch
/// both legs (one loopback hop each way is well under a millisecond).
pub const PRIME_WAIT: Duration = Duration::from_millis(100);

/// Stream ids of the two legs' packets (the priming ones: `| PRIME`).
const STREAM_A: u8 = 1;
const STREAM_B: u8 = 2;

/// One leg: where the relay listens for it, the key it sends with, the key the gateway
/// sends to it with.
#[derive(Debug, Clone)]
pub struct LegSpec {
    pub relay: SocketAddr,
    pub send: (SrtpProfile, MasterKey),
    pub recv: (SrtpProfile, MasterKey),
}

/// What went through.
#[derive(Debug, Clone, Copy)]
pub struct CheckReport {
    /// Leg A → leg B (caller → callee in interop.sh).
    pub a_to_b: Direction,
    /// Leg B → leg A.
    pub b_to_a: Direction,
    /// Packets that did not authenticate, on either leg.
    pub refused: u32,
    pub suites: (SrtpProfile, SrtpProfile),
}

impl CheckReport {
    /// `Err` with the reason when a direction got nothing or lost more than `max_loss`.
    pub fn verdict(&self, max_loss: f64) -> Result<(), String> {
        for (name, d) in [("A -> B", self.a_to_b), ("B -> A", self.b_to_a)] {
            if d.received == 0 {
                return Err(format!("{name}: no packet arrived"));
            }
            d.within(name, max_loss)?;
        }
        Ok(())
    }

    pub fn to_json(&self) -> serde_json::Value {
        let dir = |d: Direction| d.to_json();
        serde_json::json!({
            "a_to_b": dir(self.a_to_b),
            "b_to_a": dir(self.b_to_a),
            "refused": self.refused,
            "suite_a": self.suites.0.as_str(),
            "suite_b": self.suites.1.as_str(),
        })
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |d: Direction| {
            format!(
                "sent {}, received {}, loss {:.1}%",
                d.sent,
                d.received,
                100.0 * d.loss()
            )
        };
        write!(
            f,
            "media A -> B: {}; B -> A: {}; refused {}; suites A {} / B {}",
            d(self.a_to_b),
            d(self.b_to_a),
            self.refused,
            self.suites.0.as_str(),
            self.suites.1.as_str()
        )
    }
}

fn any_of(relay: SocketAddr) -> SocketAddr {
    let ip = if relay.ip().is_loopback() {
        relay.ip()
    } else if relay.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    SocketAddr::new(ip, 0)
}

/// Sends `duration` of 20 ms packets on both legs at once and counts what arrives.
pub async fn check(
    a: &LegSpec,
    b: &LegSpec,
    duration: Duration,
) -> Result<CheckReport, ProbeError> {
    if duration > MAX_DURATION {
        return Err(ProbeError::BadInput(format!(
            "duration above {} s",
            MAX_DURATION.as_secs()
        )));
    }
    let leg = |s: &LegSpec, stream: u8, expect: u8| {
        let s = s.clone();
        async move {
            let sock = Leg::bind(any_of(s.relay)).await?;
            Leg::new(
                sock,
                (s.send.0, &s.send.1),
                (s.recv.0, &s.recv.1),
                s.relay,
                stream,
                Some(expect),
            )
        }
    };
    // Priming: one packet each way, not counted, then a pause for the latches.
    let mut la = leg(a, STREAM_A | PRIME, STREAM_B | PRIME).await?;
    let mut lb = leg(b, STREAM_B | PRIME, STREAM_A | PRIME).await?;
    la.send_next().await?;
    lb.send_next().await?;
    let settle = Instant::now() + PRIME_WAIT;
    while la.recv(settle).await?.is_some() {}
    while lb.recv(settle).await?.is_some() {}
    la.set_streams(STREAM_A, Some(STREAM_B));
    lb.set_streams(STREAM_B, Some(STREAM_A));

    let total = packet_count(duration);
    let mut tick = tokio::time::interval(PACKET_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let never = Instant::now() + MAX_DURATION + ECHO_GRACE;
    while la.stats.sent < total || lb.stats.sent < total {
        tokio::select! {
            _ = tick.tick() => {
                la.send_next().await?;
                lb.send_next().await?;
            }
            got = la.recv(never) => { got?; }
            got = lb.recv(never) => { got?; }
        }
    }
    let grace = Instant::now() + ECHO_GRACE;
    while la.stats.received < lb.stats.sent || lb.stats.received < la.stats.sent {
        tokio::select! {
            got = la.recv(grace) => { if got?.is_none() { break; } }
            got = lb.recv(grace) => { if got?.is_none() { break; } }
        }
    }
    Ok(CheckReport {
        a_to_b: Direction {
            sent: la.stats.sent,
            received: lb.stats.received,
        },
        b_to_a: Direction {
            sent: lb.stats.sent,
            received: la.stats.received,
        },
        refused: la.stats.refused + lb.stats.refused,
        suites: (a.recv.0, b.recv.0),
    })
}

/// Marks a priming packet's stream.
const PRIME: u8 = 0x40;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdes::random_key;
    use std::sync::Arc;
    use tokio::net::UdpSocket;

    /// A stand-in relay that forwards bytes unchanged between two ports, each latched on
    /// the last source it heard (keys therefore go end to end).
    async fn forwarder() -> (SocketAddr, SocketAddr) {
        let ra = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let rb = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let addrs = (ra.local_addr().expect("a"), rb.local_addr().expect("b"));
        let peers = Arc::new(std::sync::Mutex::new((
            None::<SocketAddr>,
            None::<SocketAddr>,
        )));
        for (from, to, side) in [(ra.clone(), rb.clone(), 0), (rb, ra, 1)] {
            let peers = peers.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                while let Ok((n, src)) = from.recv_from(&mut buf).await {
                    let dst = {
                        let mut p = peers.lock().expect("lock");
                        if side == 0 {
                            p.0 = Some(src);
                            p.1
                        } else {
                            p.1 = Some(src);
                            p.0
                        }
                    };
                    if let Some(d) = dst {
                        let _ = to.send_to(&buf[..n], d).await;
                    }
                }
            });
        }
        addrs
    }

    #[tokio::test]
    async fn media_goes_both_ways_and_a_wrong_key_fails_the_check() {
        let p = SrtpProfile::AesCm128HmacSha1_80;
        let (ka, kb) = (random_key(p), random_key(p));
        let (ra, rb) = forwarder().await;
        let a = LegSpec {
            relay: ra,
            send: (p, ka.clone()),
            recv: (p, kb.clone()),
        };
        let b = LegSpec {
            relay: rb,
            send: (p, kb.clone()),
            recv: (p, ka.clone()),
        };
        let r = check(&a, &b, Duration::from_millis(400))
            .await
            .expect("check");
        assert_eq!(r.a_to_b.sent, 20);
        assert_eq!((r.a_to_b.received, r.b_to_a.received), (20, 20), "{r}");
        assert_eq!(r.refused, 0);
        assert!(r.verdict(0.05).is_ok());

        // B decrypts with a key nobody sends with: A -> B is refused, so the check fails.
        let (ra, rb) = forwarder().await;
        let wrong = LegSpec {
            relay: rb,
            send: (p, kb.clone()),
            recv: (p, random_key(p)),
        };
        let a = LegSpec { relay: ra, ..a };
        let r = check(&a, &wrong, Duration::from_millis(200))
            .await
            .expect("check");
        assert_eq!(r.a_to_b.received, 0, "{r}");
        assert!(r.refused >= 10, "{r}");
        let why = r.verdict(0.05).expect_err("no media A -> B");
        assert!(why.contains("A -> B: no packet arrived"), "{why}");
    }
}
