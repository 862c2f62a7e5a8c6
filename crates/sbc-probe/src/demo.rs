//! The embedded default's demo files (**demo only**): a CA made at start, the leaves it
//! issues, and the directory where a running default leaves what `sbc-edge call` needs.
//!
//! The directory ([`default_dir`]: `$XDG_RUNTIME_DIR/sbc-edge-demo`, else
//! `/tmp/sbc-edge-demo-<uid>`) is made 0700 and must belong to us. It holds `ca.pem` (the
//! demo CA's certificate: public), `state` (`key=value` lines: the SIP and admin
//! addresses, the name to verify, the process id) and `operator.token` (0600: a random
//! token with the operator role on the loopback admin plane). Owns: making those files,
//! reading `state` back, removing the runtime files at exit. Must not: write a private key
//! or the token anywhere else, or log the token.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::ProbeError;

/// Names in every demo leaf: the demo runs on loopback.
pub const DEMO_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// The name `call` verifies a demo gateway's certificate against.
pub const DEMO_SERVER_NAME: &str = "localhost";

/// Random bytes in an operator token (256 bits, hex-encoded).
const TOKEN_BYTES: usize = 32;

/// Largest state file read back: a handful of short lines.
const MAX_STATE_BYTES: u64 = 4096;

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf").finish_non_exhaustive()
    }
}

/// The demo PKI: a CA made now and two leaves for [`DEMO_NAMES`], one for the gateway's
/// listener and one for the answering endpoint. The CA's key is dropped once they are
/// issued.
#[derive(Debug, Clone)]
pub struct DemoPki {
    pub ca_pem: String,
    pub gateway: Leaf,
    pub endpoint: Leaf,
}

fn pki_err(e: rcgen::Error) -> ProbeError {
    ProbeError::Tls(format!("demo certificates: {e}"))
}

impl DemoPki {
    pub fn new() -> Result<DemoPki, ProbeError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            DnType::CommonName,
            "sbc-edge demo CA (made at start, demo only)",
        );
        let ca_key = KeyPair::generate().map_err(pki_err)?;
        let ca = params.self_signed(&ca_key).map_err(pki_err)?;
        let issue = |cn: &str| -> Result<Leaf, ProbeError> {
            let mut p = CertificateParams::new(
                DEMO_NAMES.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
            .map_err(pki_err)?;
            p.distinguished_name.push(DnType::CommonName, cn);
            let key = KeyPair::generate().map_err(pki_err)?;
            let cert = p.signed_by(&key, &ca, &ca_key).map_err(pki_err)?;
            Ok(Leaf {
                cert_pem: cert.pem(),
                key_pem: Zeroizing::new(key.serialize_pem()),
            })
        };
        Ok(DemoPki {
            gateway: issue("sbc-edge demo gateway")?,
            endpoint: issue("sbc-edge demo answering endpoint")?,
            ca_pem: ca.pem(),
        })
    }
}

/// Where a running default leaves its files: `$XDG_RUNTIME_DIR/sbc-edge-demo` when that
/// is set, else `/tmp/sbc-edge-demo-<uid>`.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("sbc-edge-demo"),
        _ => {
            let uid = std::fs::metadata("/proc/self")
                .map(|m| m.uid().to_string())
                .unwrap_or_else(|_| std::env::var("USER").unwrap_or_else(|_| "user".into()));
            std::env::temp_dir().join(format!("sbc-edge-demo-{uid}"))
        }
    }
}

/// What `call` reads from a running default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoState {
    pub pid: u32,
    pub sip: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub server_name: String,
}

/// The demo directory.
#[derive(Debug, Clone)]
pub struct DemoDir {
    pub path: PathBuf,
}

fn io(path: &Path, e: std::io::Error) -> ProbeError {
    ProbeError::io(path.display().to_string(), e)
}

impl DemoDir {
    /// Makes the directory (0700) or checks an existing one is ours and private.
    pub fn create(path: &Path) -> Result<DemoDir, ProbeError> {
        match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(path, e)),
        }
        let meta = std::fs::symlink_metadata(path).map_err(|e| io(path, e))?;
        let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
        if !meta.is_dir() || me.is_some_and(|uid| uid != meta.uid()) {
            return Err(ProbeError::Demo(format!(
                "{} exists and is not a directory of ours: remove it or pass --demo-dir",
                path.display()
            )));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io(path, e))?;
        }
        Ok(DemoDir {
            path: path.to_path_buf(),
        })
    }

    pub fn ca_path(&self) -> PathBuf {
        self.path.join("ca.pem")
    }

    pub fn state_path(&self) -> PathBuf {
        self.path.join("state")
    }

    pub fn token_path(&self) -> PathBuf {
        self.path.join("operator.token")
    }

    fn write(&self, path: &Path, mode: u32, bytes: &[u8]) -> Result<(), ProbeError> {
        // Write beside, then rename: a reader never sees half a file, and the mode is set
        // before any byte is written.
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| io(&tmp, e))?;
        f.sync_all().map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io(path, e))
    }

    /// Writes the demo CA's certificate.
    pub fn write_ca(&self, ca_pem: &str) -> Result<PathBuf, ProbeError> {
        let p = self.ca_path();
        self.write(&p, 0o644, ca_pem.as_bytes())?;
        Ok(p)
    }

    /// Makes a fresh operator token, writes it (0600) and returns the SHA-256 the admin
    /// plane is configured with. The token itself is not returned: it lives in the file.
    pub fn write_token(&self) -> Result<[u8; 32], ProbeError> {
        let mut raw = Zeroizing::new([0u8; TOKEN_BYTES]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, raw.as_mut());
        let token = Zeroizing::new(hex::encode(raw.as_ref()));
        let mut line = Zeroizing::new(token.as_bytes().to_vec());
        line.push(b'\n');
        self.write(&self.token_path(), 0o600, &line)?;
        Ok(Sha256::digest(token.as_bytes()).into())
    }

    /// Writes the state file `call` reads.
    pub fn write_state(&self, s: &DemoState) -> Result<(), ProbeError> {
        let mut t = String::from("# sbc-edge embedded default (demo): read by `sbc-edge call`\n");
        let _ = writeln!(t, "pid={}", s.pid);
        let _ = writeln!(t, "sip={}", s.sip);
        if let Some(a) = s.admin {
            let _ = writeln!(t, "admin={a}");
        }
        let _ = writeln!(t, "server_name={}", s.server_name);
        self.write(&self.state_path(), 0o644, t.as_bytes())
    }

    /// Reads the state file a running default wrote.
    pub fn read_state(&self) -> Result<DemoState, ProbeError> {
        let p = self.state_path();
        let meta = std::fs::metadata(&p).map_err(|_| {
            ProbeError::Demo(format!(
                "no running embedded default found ({} is missing): start `cargo run --release` in another terminal, or pass --gateway and --ca",
                p.display()
            ))
        })?;
        if meta.len() > MAX_STATE_BYTES {
            return Err(ProbeError::Demo(format!("{}: too large", p.display())));
        }
        let text = std::fs::read_to_string(&p).map_err(|e| io(&p, e))?;
        let bad = |what: &str| ProbeError::Demo(format!("{}: {what}", p.display()));
        let (mut pid, mut sip, mut admin, mut name) = (None, None, None, None);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            match line.split_once('=') {
                Some(("pid", v)) => pid = v.trim().parse().ok(),
                Some(("sip", v)) => sip = v.trim().parse().ok(),
                Some(("admin", v)) => admin = v.trim().parse().ok(),
                Some(("server_name", v)) => name = Some(v.trim().to_string()),
                _ => {}
            }
        }
        Ok(DemoState {
            pid: pid.ok_or_else(|| bad("no pid"))?,
            sip: sip.ok_or_else(|| bad("no sip address"))?,
            admin,
            server_name: name.unwrap_or_else(|| DEMO_SERVER_NAME.to_string()),
        })
    }

    /// Removes the state file and the token (at exit): the CA certificate stays.
    pub fn remove_runtime_files(&self) {
        let _ = std::fs::remove_file(self.state_path());
        let _ = std::fs::remove_file(self.token_path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_modes_and_state_round_trip() {
        let base = std::env::temp_dir().join(format!("sbc-probe-demo-{}", rand::random::<u64>()));
        let dir = DemoDir::create(&base).expect("dir");
        assert_eq!(
            std::fs::metadata(&base).expect("meta").permissions().mode() & 0o777,
            0o700
        );
        let pki = DemoPki::new().expect("pki");
        assert!(pki.gateway.cert_pem.contains("BEGIN CERTIFICATE"));
        dir.write_ca(&pki.ca_pem).expect("ca");
        let sha = dir.write_token().expect("token");
        let token = std::fs::read_to_string(dir.token_path()).expect("token file");
        assert_eq!(token.trim().len(), 2 * TOKEN_BYTES);
        let want: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        assert_eq!(sha, want);
        let mode = std::fs::metadata(dir.token_path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = dir.read_state().expect_err("no state yet");
        assert!(err.to_string().contains("cargo run --release"), "{err}");
        let s = DemoState {
            pid: 42,
            sip: "127.0.0.1:5061".parse().expect("addr"),
            admin: Some("127.0.0.1:9090".parse().expect("addr")),
            server_name: "localhost".into(),
        };
        dir.write_state(&s).expect("state");
        assert_eq!(dir.read_state().expect("state"), s);
        dir.remove_runtime_files();
        assert!(!dir.token_path().exists() && !dir.state_path().exists());
        assert!(dir.ca_path().exists());
        let _ = std::fs::remove_dir_all(&base);
    }
}
