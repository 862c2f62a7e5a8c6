//! Recording taps' keys and sockets (moved out of `engine.rs`): a tap's fresh SRTP key
//! and per-leg contexts, its send socket, a recorded stream's fork socket, and the removal
//! of a tap from the control state.
//!
//! Owns: those helpers. Must not: take the calls lock or talk to a worker.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

use ring::rand::{SecureRandom, SystemRandom};
use sbc_core::tap::{TapError, TapId, TapKey, TapSuite};
use zeroize::Zeroizing;

use sbc_core::media::CallRef;
use sbc_core::tap::TapSpec;
use sbc_core::tenant::TenantId;
use std::sync::Arc;

use super::{lock_taps, TapCtl, TapMap};
use crate::relay::{TapCounters, TapSetup};
use crate::srtp::{MasterKey, SrtpConfig, SrtpContext, SrtpProfile};

pub(super) fn tap_profile(suite: TapSuite) -> SrtpProfile {
    match suite {
        TapSuite::AesCm128HmacSha1_80 => SrtpProfile::AesCm128HmacSha1_80,
        TapSuite::Aes256CmHmacSha1_80 => SrtpProfile::Aes256CmHmacSha1_80,
    }
}

/// A fresh key for a tap, as per-leg contexts and the inline form handed out once.
pub(super) fn tap_key(
    rng: &SystemRandom,
    suite: TapSuite,
) -> Result<([SrtpContext; 2], TapKey, MasterKey), TapError> {
    use base64::Engine as _;
    let profile = tap_profile(suite);
    let n = profile.master_key_len() + profile.master_salt_len();
    let mut material = Zeroizing::new([0u8; 64]);
    rng.fill(&mut material[..n])
        .map_err(|_| TapError::Unavailable("no randomness for the tap key".into()))?;
    let key = MasterKey::from_concatenated(profile, &material[..n])
        .map_err(|_| TapError::Unavailable("tap key generation".into()))?;
    let ctx = || {
        SrtpContext::new(profile, &key, SrtpConfig::default())
            .map_err(|e| TapError::Unavailable(format!("tap SRTP context: {e}")))
    };
    let contexts = [ctx()?, ctx()?];
    let mut inline = String::with_capacity(7 + n.div_ceil(3) * 4);
    inline.push_str("inline:");
    base64::engine::general_purpose::STANDARD.encode_string(&material[..n], &mut inline);
    Ok((contexts, TapKey::new(inline), key))
}

/// The tap's socket: any port, the destination's address family, non-blocking.
pub(super) fn tap_socket(destination: SocketAddr) -> Result<std::net::UdpSocket, TapError> {
    let any: SocketAddr = if destination.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = std::net::UdpSocket::bind(any)
        .map_err(|e| TapError::Unavailable(format!("tap socket: {e}")))?;
    sock.set_nonblocking(true)
        .map_err(|e| TapError::Unavailable(format!("tap socket: {e}")))?;
    Ok(sock)
}

/// Removes tap `id` from the control state if it is of the asked kind (a recorded stream
/// or an ordinary tap) and sets its stop flag, so no copy leaves from now on.
pub(super) fn take_tap(taps: &TapMap, id: TapId, recorded: bool) -> Option<TapCtl> {
    let mut taps = lock_taps(taps);
    if taps.get(&id)?.recorded.is_some() != recorded {
        return None;
    }
    let t = taps.remove(&id)?;
    t.counters.stopped.store(true, Ordering::Release);
    Some(t)
}

/// A recorded stream's socket: any port on the media bind address, non-blocking, never
/// connected (the SRS's address comes later and may change).
pub(super) fn fork_socket(bind: IpAddr) -> Result<std::net::UdpSocket, TapError> {
    let sock = std::net::UdpSocket::bind(SocketAddr::new(bind, 0))
        .map_err(|e| TapError::Unavailable(format!("recording socket: {e}")))?;
    sock.set_nonblocking(true)
        .map_err(|e| TapError::Unavailable(format!("recording socket: {e}")))?;
    Ok(sock)
}

/// A tap's worker setup and control entry (no key, not a recorded stream: the caller
/// sets those), sharing one set of counters.
pub(super) fn tap_pair(
    id: TapId,
    (call, tenant): (CallRef, &TenantId),
    spec: TapSpec,
    socket: std::net::UdpSocket,
    (srtp, stream): (Option<[SrtpContext; 2]>, Option<usize>),
) -> (TapSetup, TapCtl) {
    let counters = Arc::new(TapCounters::default());
    let setup = TapSetup {
        id,
        legs: spec.legs,
        stream,
        destination: spec.destination,
        socket,
        srtp,
        counters: Arc::clone(&counters),
        ssrcs: Default::default(),
    };
    let entry = TapCtl {
        call,
        tenant: tenant.clone(),
        spec,
        counters,
        recorded: None,
        key: None,
    };
    (setup, entry)
}
