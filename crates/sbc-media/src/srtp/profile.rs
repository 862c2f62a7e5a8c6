//! SRTP crypto suites and their parameters (RFC 4568 §6.2, RFC 6188 §3, RFC 7714 §14.1).

use std::fmt;
use std::str::FromStr;

use super::SrtpError;

/// An SRTP/SRTCP protection profile, named by its SDES crypto-suite string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SrtpProfile {
    /// `AES_CM_128_HMAC_SHA1_80` (RFC 3711, RFC 4568).
    AesCm128HmacSha1_80,
    /// `AES_CM_128_HMAC_SHA1_32` (RFC 4568): 32-bit SRTP tag, 80-bit SRTCP tag.
    AesCm128HmacSha1_32,
    /// `AES_256_CM_HMAC_SHA1_80` (RFC 6188).
    Aes256CmHmacSha1_80,
    /// `AES_256_CM_HMAC_SHA1_32` (RFC 6188): 32-bit SRTP tag, 80-bit SRTCP tag.
    Aes256CmHmacSha1_32,
    /// `AEAD_AES_128_GCM` (RFC 7714).
    AeadAes128Gcm,
    /// `AEAD_AES_256_GCM` (RFC 7714).
    AeadAes256Gcm,
}

impl SrtpProfile {
    /// Every profile, in SDES preference order of strength last.
    pub const ALL: [SrtpProfile; 6] = [
        SrtpProfile::AesCm128HmacSha1_80,
        SrtpProfile::AesCm128HmacSha1_32,
        SrtpProfile::Aes256CmHmacSha1_80,
        SrtpProfile::Aes256CmHmacSha1_32,
        SrtpProfile::AeadAes128Gcm,
        SrtpProfile::AeadAes256Gcm,
    ];

    /// The SDES crypto-suite name.
    pub fn as_str(self) -> &'static str {
        match self {
            SrtpProfile::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SrtpProfile::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            SrtpProfile::Aes256CmHmacSha1_80 => "AES_256_CM_HMAC_SHA1_80",
            SrtpProfile::Aes256CmHmacSha1_32 => "AES_256_CM_HMAC_SHA1_32",
            SrtpProfile::AeadAes128Gcm => "AEAD_AES_128_GCM",
            SrtpProfile::AeadAes256Gcm => "AEAD_AES_256_GCM",
        }
    }

    /// Master (and session) encryption key length in bytes.
    pub fn master_key_len(self) -> usize {
        match self {
            SrtpProfile::AesCm128HmacSha1_80
            | SrtpProfile::AesCm128HmacSha1_32
            | SrtpProfile::AeadAes128Gcm => 16,
            SrtpProfile::Aes256CmHmacSha1_80
            | SrtpProfile::Aes256CmHmacSha1_32
            | SrtpProfile::AeadAes256Gcm => 32,
        }
    }

    /// Master (and session) salt length in bytes: 112 bits for AES-CM, 96 bits for GCM
    /// (RFC 7714 §12).
    pub fn master_salt_len(self) -> usize {
        if self.is_aead() {
            12
        } else {
            14
        }
    }

    /// SRTP authentication tag length in bytes.
    pub fn rtp_tag_len(self) -> usize {
        match self {
            SrtpProfile::AesCm128HmacSha1_80 | SrtpProfile::Aes256CmHmacSha1_80 => 10,
            SrtpProfile::AesCm128HmacSha1_32 | SrtpProfile::Aes256CmHmacSha1_32 => 4,
            SrtpProfile::AeadAes128Gcm | SrtpProfile::AeadAes256Gcm => 16,
        }
    }

    /// SRTCP authentication tag length in bytes: 80 bits for every HMAC-SHA1 suite
    /// (RFC 3711 §5.2, RFC 4568 §6.2.2), 128 bits for GCM.
    pub fn rtcp_tag_len(self) -> usize {
        if self.is_aead() {
            16
        } else {
            10
        }
    }

    /// True for the RFC 7714 AEAD suites.
    pub fn is_aead(self) -> bool {
        matches!(
            self,
            SrtpProfile::AeadAes128Gcm | SrtpProfile::AeadAes256Gcm
        )
    }
}

impl fmt::Display for SrtpProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SrtpProfile {
    type Err = SrtpError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SrtpProfile::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or(SrtpError::UnknownProfile)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in SrtpProfile::ALL {
            assert_eq!(p.to_string().parse::<SrtpProfile>(), Ok(p));
        }
        assert_eq!(
            "AES_CM_128_HMAC_SHA1_32".parse::<SrtpProfile>(),
            Ok(SrtpProfile::AesCm128HmacSha1_32)
        );
        assert_eq!(
            "aes_cm_128_hmac_sha1_80".parse::<SrtpProfile>(),
            Err(SrtpError::UnknownProfile)
        );
        assert_eq!(
            "F8_128_HMAC_SHA1_80".parse::<SrtpProfile>(),
            Err(SrtpError::UnknownProfile)
        );
    }

    #[test]
    fn lengths() {
        use SrtpProfile::*;
        assert_eq!(AesCm128HmacSha1_32.rtp_tag_len(), 4);
        assert_eq!(AesCm128HmacSha1_32.rtcp_tag_len(), 10);
        assert_eq!(Aes256CmHmacSha1_80.master_key_len(), 32);
        assert_eq!(Aes256CmHmacSha1_80.master_salt_len(), 14);
        assert_eq!(AeadAes128Gcm.master_salt_len(), 12);
        assert_eq!(AeadAes256Gcm.master_key_len(), 32);
        assert_eq!(AeadAes256Gcm.rtp_tag_len(), 16);
    }
}
