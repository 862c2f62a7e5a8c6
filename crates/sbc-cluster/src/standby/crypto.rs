//! The cluster key-encryption key (KEK): SRTP master keys are sealed with it before they
//! leave the process and opened only by the node that claims the call.
//!
//! AES-256-GCM, a random 96-bit nonce per write (NIST SP 800-38D §8.2.2: random nonces
//! are safe up to 2^32 encryptions under one key; a node writes a media part per offer /
//! answer, far below that over a key's life), the associated data binding the blob to
//! its key prefix, call and part so a blob copied to another call's hash does not open.
//! Stored form: nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes).
//!
//! Owns: reading the key file, sealing and opening. Must not: log or print a key, a
//! plaintext or the key file's content (errors name the file and what is wrong only).

use std::path::Path;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use rand::RngCore;
use sbc_core::standby::SecretBytes;
use zeroize::Zeroize;

/// AES-GCM nonce length (96 bits, the size GCM is defined for without GHASH of the IV).
const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
const TAG_LEN: usize = 16;

/// Why the key file or a sealed blob could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KekError {
    /// The key file could not be read.
    #[error("cluster key file {file}: {reason}")]
    File { file: String, reason: String },
    /// A sealed blob did not open: tampered, moved to another call, or sealed with
    /// another key.
    #[error("sealed secret of {aad} does not open with the cluster key (tampered, moved or another key)")]
    Open { aad: String },
}

/// The cluster key-encryption key.
pub struct Kek {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    /// Read the key file: 64 hex digits (32 bytes), surrounding white space allowed.
    pub fn from_file(path: &Path) -> Result<Kek, KekError> {
        let file = path.display().to_string();
        let bad = |reason: String| KekError::File {
            file: file.clone(),
            reason,
        };
        let mut text =
            std::fs::read_to_string(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
        let digits = text.trim();
        let r = if digits.len() != 64 {
            Err(bad(format!(
                "must hold 64 hex digits (a 256-bit key), found {} characters",
                digits.len()
            )))
        } else {
            let mut key = [0u8; 32];
            match hex::decode_to_slice(digits, &mut key) {
                Ok(()) => {
                    let k = Kek::from_key(&key);
                    key.zeroize();
                    Ok(k)
                }
                Err(_) => Err(bad("must hold 64 hex digits (0-9 a-f)".into())),
            }
        };
        text.zeroize();
        r
    }

    /// A key from its 32 bytes.
    pub fn from_key(key: &[u8; 32]) -> Kek {
        Kek {
            cipher: Aes256Gcm::new(&(*key).into()),
        }
    }

    /// Seal `secret`, bound to `aad`, under a fresh random nonce.
    pub fn seal(&self, aad: &str, secret: &SecretBytes) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let payload = Payload {
            msg: secret.expose(),
            aad: aad.as_bytes(),
        };
        // Encryption fails only past GCM's length limits (2^36 bytes), far above an SRTP
        // key set; an empty blob then fails to open on the standby (counted, refused).
        let ct = self
            .cipher
            .encrypt(&nonce.into(), payload)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Open a blob [`Kek::seal`] made with the same `aad`.
    pub fn open(&self, aad: &str, blob: &[u8]) -> Result<SecretBytes, KekError> {
        let fail = || KekError::Open {
            aad: aad.to_string(),
        };
        if blob.len() < NONCE_LEN + TAG_LEN {
            return Err(fail());
        }
        let (nonce, ct) = blob.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| fail())?;
        let payload = Payload {
            msg: ct,
            aad: aad.as_bytes(),
        };
        self.cipher
            .decrypt(&nonce.into(), payload)
            .map(SecretBytes::new)
            .map_err(|_| fail())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn kek() -> Kek {
        Kek::from_key(&[7u8; 32])
    }

    #[test]
    fn round_trip_with_fresh_nonces() {
        let k = kek();
        let s = SecretBytes::new(b"0123456789abcdef-master-key".to_vec());
        let a = k.seal("p:A:1:media", &s);
        let b = k.seal("p:A:1:media", &s);
        assert_ne!(a, b, "a fresh nonce per seal");
        assert!(!a.windows(10).any(|w| w == &s.expose()[..10]));
        assert_eq!(k.open("p:A:1:media", &a).unwrap(), s);
    }

    #[test]
    fn tampered_moved_or_foreign_blobs_do_not_open() {
        let k = kek();
        let s = SecretBytes::new(vec![1, 2, 3, 4]);
        let blob = k.seal("p:A:1:media", &s);
        let mut bad = blob.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let e = k.open("p:A:1:media", &bad).unwrap_err();
        assert!(e.to_string().contains("does not open"), "{e}");
        assert!(
            k.open("p:A:2:media", &blob).is_err(),
            "moved to another call"
        );
        assert!(Kek::from_key(&[8; 32]).open("p:A:1:media", &blob).is_err());
        assert!(k.open("p:A:1:media", &blob[..10]).is_err());
    }

    #[test]
    fn key_file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("sbc-kek-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("absent.key");
        let e = Kek::from_file(&missing).unwrap_err().to_string();
        assert!(
            e.contains("absent.key") && e.contains("cannot be read"),
            "{e}"
        );
        let short = dir.join("short.key");
        std::fs::write(&short, "abcd\n").unwrap();
        let e = Kek::from_file(&short).unwrap_err().to_string();
        assert!(
            e.contains("short.key") && e.contains("64 hex digits"),
            "{e}"
        );
        let nothex = dir.join("nothex.key");
        std::fs::write(&nothex, "z".repeat(64)).unwrap();
        let e = Kek::from_file(&nothex).unwrap_err().to_string();
        assert!(e.contains("nothex.key") && !e.contains("zzzz"), "{e}");
        let good = dir.join("good.key");
        std::fs::write(&good, format!("{}\n", "0f".repeat(32))).unwrap();
        let k = Kek::from_file(&good).unwrap();
        let s = SecretBytes::new(vec![9; 30]);
        assert_eq!(
            Kek::from_key(&[0x0f; 32])
                .open("x", &k.seal("x", &s))
                .unwrap(),
            s
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
