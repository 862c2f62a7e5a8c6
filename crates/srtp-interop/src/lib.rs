//! Test and bench helper: a thin, safe wrapper over libsrtp2 (through the `srtp` crate)
//! for cross-checking `sbc_media::srtp` and for the libsrtp column of
//! `benches/srtp.rs`.
//!
//! Everything lives behind the `libsrtp` feature; without it this crate is empty, so
//! `cargo test --workspace` needs nothing but the Rust toolchain. The gateway binary
//! never depends on this crate (it is only a dev-dependency of the root package).
//!
//! libsrtp 2.3 as bundled by `srtp2-sys` is built with `--enable-openssl`: its AES-ICM,
//! AES-GCM and HMAC-SHA1 all go through OpenSSL's EVP/HMAC APIs (GCM has no native
//! implementation in libsrtp). See `libsrtp::drain_openssl_errors`.

#[cfg(feature = "libsrtp")]
pub mod libsrtp {
    use sbc_media::srtp::{MasterKey, SrtpProfile};
    use srtp::{CryptoPolicy, Session, StreamPolicy};

    pub use srtp::Error;

    /// Pops every entry off this thread's OpenSSL error queue and returns how many there
    /// were.
    ///
    /// libsrtp 2.3's OpenSSL GCM code (`aes_gcm_ossl.c`, `srtp_aes_gcm_openssl_set_aad`)
    /// calls `EVP_CTRL_GCM_SET_TAG` with a dummy tag on the *encrypting* context too;
    /// OpenSSL 3 rejects that and pushes an error on the thread's queue, which libsrtp
    /// ignores. So every GCM protect leaves errors behind. The queue is a fixed ring
    /// (16 entries), so it does not grow, and libsrtp never reads it, so its results are
    /// right; but any other OpenSSL user on the same thread that inspects the queue sees
    /// stale errors. Tests that mix the two drain it with this function.
    pub fn drain_openssl_errors() -> usize {
        openssl::error::ErrorStack::get().errors().len()
    }

    /// The libsrtp crypto policy for `profile` (same policy for SRTP and SRTCP; libsrtp
    /// sends an 80-bit SRTCP tag for the `_32` suites on its own, as RFC 4568 says).
    pub fn policy(profile: SrtpProfile) -> Option<(CryptoPolicy, CryptoPolicy)> {
        let (rtp, rtcp) = match profile {
            SrtpProfile::AesCm128HmacSha1_80 => (
                CryptoPolicy::aes_cm_128_hmac_sha1_80(),
                CryptoPolicy::aes_cm_128_hmac_sha1_80(),
            ),
            SrtpProfile::AesCm128HmacSha1_32 => (
                CryptoPolicy::aes_cm_128_hmac_sha1_32(),
                CryptoPolicy::aes_cm_128_hmac_sha1_80(),
            ),
            SrtpProfile::Aes256CmHmacSha1_80 => (
                CryptoPolicy::aes_cm_256_hmac_sha1_80(),
                CryptoPolicy::aes_cm_256_hmac_sha1_80(),
            ),
            SrtpProfile::Aes256CmHmacSha1_32 => (
                CryptoPolicy::aes_cm_256_hmac_sha1_32(),
                CryptoPolicy::aes_cm_256_hmac_sha1_80(),
            ),
            SrtpProfile::AeadAes128Gcm => (
                CryptoPolicy::aes_gcm_128_16_auth(),
                CryptoPolicy::aes_gcm_128_16_auth(),
            ),
            SrtpProfile::AeadAes256Gcm => (
                CryptoPolicy::aes_gcm_256_16_auth(),
                CryptoPolicy::aes_gcm_256_16_auth(),
            ),
            _ => return None,
        };
        Some((rtp, rtcp))
    }

    /// A libsrtp session in one direction for one master key.
    pub struct LibSrtp {
        session: Session,
    }

    impl std::fmt::Debug for LibSrtp {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("LibSrtp { .. }")
        }
    }

    impl LibSrtp {
        fn new(
            profile: SrtpProfile,
            master: &MasterKey,
            window: u64,
            outbound: bool,
        ) -> Result<Self, Error> {
            let (rtp, rtcp) = policy(profile).ok_or(Error::BAD_PARAM)?;
            // libsrtp takes key || salt in one buffer.
            let mut key = master.key.clone();
            key.extend_from_slice(&master.salt);
            let policy = StreamPolicy {
                rtp,
                rtcp,
                key: &key,
                window_size: window,
                allow_repeat_tx: false,
                encrypt_extension_headers: &[],
            };
            let session = if outbound {
                Session::with_outbound_template(policy)?
            } else {
                Session::with_inbound_template(policy)?
            };
            Ok(LibSrtp { session })
        }

        /// Sender for any SSRC.
        pub fn sender(profile: SrtpProfile, master: &MasterKey) -> Result<Self, Error> {
            Self::new(profile, master, 0, true)
        }

        /// Receiver for any SSRC with a replay window of `window` packets (0: default 128).
        pub fn receiver(
            profile: SrtpProfile,
            master: &MasterKey,
            window: u64,
        ) -> Result<Self, Error> {
            Self::new(profile, master, window, false)
        }

        /// `buf` holds the RTP packet; it grows by the trailer (reserve capacity first to
        /// avoid reallocation).
        pub fn protect(&mut self, buf: &mut Vec<u8>) -> Result<(), Error> {
            self.session.protect(buf)
        }

        /// `buf` holds the RTCP packet.
        pub fn protect_rtcp(&mut self, buf: &mut Vec<u8>) -> Result<(), Error> {
            self.session.protect_rtcp(buf)
        }

        /// `buf` holds the SRTP packet; it shrinks to the RTP packet.
        pub fn unprotect(&mut self, buf: &mut Vec<u8>) -> Result<(), Error> {
            self.session.unprotect(buf)
        }

        /// `buf` holds the SRTCP packet.
        pub fn unprotect_rtcp(&mut self, buf: &mut Vec<u8>) -> Result<(), Error> {
            self.session.unprotect_rtcp(buf)
        }
    }
}
