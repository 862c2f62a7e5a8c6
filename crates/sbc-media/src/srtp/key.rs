//! Master keys and the SRTP key derivation function (RFC 3711 §4.3 with
//! key_derivation_rate 0; AES-256 PRF per RFC 6188 §7; 96-bit salts per RFC 7714 §11).

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::crypto::AesCtr;
use super::{SrtpError, SrtpProfile};

/// An SRTP master key and master salt. Zeroized on drop; `Debug` prints lengths only.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey {
    /// Master key: 16 bytes for AES-128 suites, 32 for AES-256.
    pub key: Vec<u8>,
    /// Master salt: 14 bytes for AES-CM suites, 12 for GCM.
    pub salt: Vec<u8>,
}

impl MasterKey {
    /// Builds a master key from its two parts.
    pub fn new(key: &[u8], salt: &[u8]) -> Self {
        MasterKey {
            key: key.to_vec(),
            salt: salt.to_vec(),
        }
    }

    /// Splits SDES inline keying material (`key || salt`, RFC 4568 §6.1) for `profile`.
    pub fn from_concatenated(profile: SrtpProfile, material: &[u8]) -> Result<Self, SrtpError> {
        let (kl, sl) = (profile.master_key_len(), profile.master_salt_len());
        if material.len() != kl + sl {
            return Err(SrtpError::BadKeyLength {
                expected: kl + sl,
                got: material.len(),
            });
        }
        Ok(MasterKey::new(&material[..kl], &material[kl..]))
    }

    pub(crate) fn validate(&self, profile: SrtpProfile) -> Result<(), SrtpError> {
        if self.key.len() != profile.master_key_len() {
            return Err(SrtpError::BadKeyLength {
                expected: profile.master_key_len(),
                got: self.key.len(),
            });
        }
        if self.salt.len() != profile.master_salt_len() {
            return Err(SrtpError::BadSaltLength {
                expected: profile.master_salt_len(),
                got: self.salt.len(),
            });
        }
        Ok(())
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("key", &format_args!("<redacted {} bytes>", self.key.len()))
            .field(
                "salt",
                &format_args!("<redacted {} bytes>", self.salt.len()),
            )
            .finish()
    }
}

/// Key derivation labels (RFC 3711 §4.3.1, §4.3.2).
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub(crate) enum Label {
    RtpEncryption = 0,
    RtpAuth = 1,
    RtpSalt = 2,
    RtcpEncryption = 3,
    RtcpAuth = 4,
    RtcpSalt = 5,
}

/// Longest session key, auth key or salt we derive (32-byte AES-256 key).
const MAX_DERIVED: usize = 32;

/// The AES-CM PRF keyed with the master key.
pub(crate) struct Kdf {
    prf: AesCtr,
    salt: [u8; 14],
}

impl Kdf {
    /// `master` must have passed [`MasterKey::validate`].
    pub(crate) fn new(master: &MasterKey) -> Result<Self, SrtpError> {
        let prf = AesCtr::new(&master.key)?;
        // A 96-bit GCM master salt is used as the 112-bit PRF salt padded with zeros on
        // the right, as libsrtp and RFC 7714 §11 do.
        let mut salt = [0u8; 14];
        let n = master.salt.len().min(14);
        salt[..n].copy_from_slice(&master.salt[..n]);
        Ok(Kdf { prf, salt })
    }

    /// Derives `len` bytes for `label` with index DIV kdr = 0 (RFC 3711 §4.3.1):
    /// x = (label || 0^48) XOR master_salt, keystream = AES-CM(master_key, x * 2^16).
    pub(crate) fn derive(&self, label: Label, len: usize) -> Zeroizing<[u8; MAX_DERIVED]> {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.salt);
        iv[7] ^= label as u8;
        let mut out = Zeroizing::new([0u8; MAX_DERIVED]);
        let n = len.min(MAX_DERIVED);
        self.prf.apply_keystream(&iv, &mut out[..n]);
        out
    }
}

impl Drop for Kdf {
    fn drop(&mut self) {
        self.salt.zeroize();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.replace([' ', '\n'], "")).expect("test vector hex")
    }

    // RFC 3711 Appendix B.3.
    #[test]
    fn rfc3711_b3_key_derivation() {
        let mk = MasterKey::new(
            &unhex("E1F97A0D3E018BE0D64FA32C06DE4139"),
            &unhex("0EC675AD498AFEEBB6960B3AABE6"),
        );
        let kdf = Kdf::new(&mk).unwrap();
        assert_eq!(
            &kdf.derive(Label::RtpEncryption, 16)[..16],
            &unhex("C61E7A93744F39EE10734AFE3FF7A087")[..]
        );
        assert_eq!(
            &kdf.derive(Label::RtpSalt, 14)[..14],
            &unhex("30CBBC08863D8C85D49DB34A9AE1")[..]
        );
        assert_eq!(
            &kdf.derive(Label::RtpAuth, 20)[..20],
            &unhex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")[..]
        );
    }

    // RFC 6188 §7.2: AES_256_CM_PRF key derivation.
    #[test]
    fn rfc6188_aes256_key_derivation() {
        let mk = MasterKey::new(
            &unhex("f0f04914b513f2763a1b1fa130f10e2998f6f6e43e4309d1e622a0e332b9f1b6"),
            &unhex("3b04803de51ee7c96423ab5b78d2"),
        );
        let kdf = Kdf::new(&mk).unwrap();
        assert_eq!(
            &kdf.derive(Label::RtpEncryption, 32)[..32],
            &unhex("5ba1064e30ec51613cad926c5a28ef731ec7fb397f70a960653caf06554cd8c4")[..]
        );
        assert_eq!(
            &kdf.derive(Label::RtpSalt, 14)[..14],
            &unhex("fa31791685ca444a9e07c6c64e93")[..]
        );
        assert_eq!(
            &kdf.derive(Label::RtpAuth, 20)[..20],
            &unhex("fd9c32d39ed5fbb5a9dc96b30818454d1313dc05")[..]
        );
    }

    #[test]
    fn debug_redacts_key_bytes() {
        let mk = MasterKey::new(&[0xAB; 16], &[0xCD; 14]);
        let s = format!("{mk:?}");
        assert!(!s.to_lowercase().contains("ab"), "{s}");
        assert!(!s.contains("171"), "{s}");
        assert!(s.contains("redacted 16 bytes"), "{s}");
    }

    #[test]
    fn concatenated_split_and_validation() {
        let p = SrtpProfile::AesCm128HmacSha1_80;
        let mk = MasterKey::from_concatenated(p, &[1u8; 30]).unwrap();
        assert_eq!((mk.key.len(), mk.salt.len()), (16, 14));
        assert!(mk.validate(p).is_ok());
        assert_eq!(
            mk.validate(SrtpProfile::AeadAes128Gcm),
            Err(SrtpError::BadSaltLength {
                expected: 12,
                got: 14
            })
        );
        assert_eq!(
            MasterKey::from_concatenated(p, &[1u8; 29]).err(),
            Some(SrtpError::BadKeyLength {
                expected: 30,
                got: 29
            })
        );
    }
}
