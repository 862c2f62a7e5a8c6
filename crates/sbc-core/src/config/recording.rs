//! `[tenants.recording]`: SIPREC recording of a tenant's calls (RFC 7866): the recording
//! servers (SRS) in failover order, when calls are recorded, which legs, how media travels
//! to the SRS, what a failure does to the call, and how participants' numbers appear in
//! the metadata (RFC 7865).
//!
//! Owns: the raw section, its validation into [`RecordingSettings`] and the bounds and
//! defaults of recording. Must not: open dialogs or streams (sbc-sip's recording client
//! and sbc-media's forks do), or parse a target URI itself (`parse_target` is the one
//! parser of `TargetUri`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{certificates, invalid, parse_target, read_file, ConfigError, TargetUri};
use crate::redact::Redaction;
use crate::tap::{TapLegs, TapSuite, TapTransport};

/// Most SRS targets in one list: each failed one can cost up to `answer_timeout_ms`, and
/// a `required` call waits for them in turn; eight already outlast a caller's patience.
pub const MAX_SRS_TARGETS: usize = 8;

/// Default deadline for an SRS's final answer: an SRS on a working connection answers
/// within a round trip and a media allocation; 4 s is what a `required` caller can wait
/// on top of the callee's own setup without its platform's timers firing.
pub const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(4);

/// Shortest and longest `answer_timeout_ms`: under 100 ms a live SRS on another
/// continent is abandoned; past 32 s (Timer B with the default T1) the INVITE has failed
/// anyway.
pub const ANSWER_TIMEOUT_RANGE_MS: (u64, u64) = (100, 32_000);

/// When calls are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordingMode {
    /// Every call of the tenant, from the moment its media is set up.
    Always,
    /// Only when the admin plane starts it (`POST /v1/calls/{id}/recordings/start`).
    Api,
}

impl RecordingMode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingMode::Always => "always",
            RecordingMode::Api => "api",
        }
    }
}

/// What an SRS failure does to the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnFailure {
    /// The call goes on unrecorded (logged, counted, audited).
    Continue,
    /// The call is not put through until an SRS accepted; none within the deadline → 503.
    Required,
}

impl OnFailure {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Continue => "continue",
            OnFailure::Required => "required",
        }
    }
}

/// How participants' numbers appear in the recording metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Identities {
    /// As signalled.
    Clear,
    /// Masked like logs (`+155******34`).
    Redact,
    /// Hashed like logs (`#3f2a...`): one number can be followed, not read.
    Hash,
}

impl Identities {
    /// The redaction applied to numbers.
    pub fn redaction(self) -> Redaction {
        match self {
            Identities::Clear => Redaction::Off,
            Identities::Redact => Redaction::Mask,
            Identities::Hash => Redaction::Hash,
        }
    }

    /// The policy that follows `logging.redact_numbers`.
    pub fn following(logs: Redaction) -> Identities {
        match logs {
            Redaction::Off => Identities::Clear,
            Redaction::Mask => Identities::Redact,
            Redaction::Hash => Identities::Hash,
        }
    }
}

/// A tenant's SIPREC recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingSettings {
    /// SRS targets, tried in this order (next on 408, 5xx, transport error or timeout).
    pub srs: Vec<TargetUri>,
    pub mode: RecordingMode,
    /// Which legs are recorded (one stream each).
    pub legs: TapLegs,
    /// Media to the SRS: SRTP with SDES (default) or plain RTP.
    pub transport: TapTransport,
    pub on_failure: OnFailure,
    /// Deadline for an SRS's final answer to an INVITE.
    pub answer_timeout: Duration,
    /// Numbers in metadata; `None` in the file follows `logging.redact_numbers`.
    pub identities: Identities,
    /// Name verified in the SRS certificates (default: each target's host).
    pub server_name: Option<String>,
    /// CA bundle trusted for the SRS targets (default: the public web PKI roots).
    pub ca_pem: Option<Vec<u8>>,
    pub ca_path: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRecording {
    srs: Vec<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    legs: Option<String>,
    #[serde(default)]
    media: Option<String>,
    #[serde(default)]
    suite: Option<String>,
    #[serde(default)]
    on_failure: Option<String>,
    #[serde(default)]
    answer_timeout_ms: Option<u64>,
    #[serde(default)]
    identities: Option<String>,
    #[serde(default)]
    server_name: Option<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

fn one_of<T: Copy>(
    key: &str,
    value: Option<&str>,
    default: T,
    choices: &[(&str, T)],
) -> Result<T, ConfigError> {
    let Some(v) = value else { return Ok(default) };
    choices
        .iter()
        .find(|(name, _)| *name == v)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
            invalid(key, format!("{v:?} must be one of {}", names.join(", ")))
        })
}

fn validate_srs(r: &RawRecording, k: &str) -> Result<Vec<TargetUri>, ConfigError> {
    if r.srs.is_empty() || r.srs.len() > MAX_SRS_TARGETS {
        return Err(invalid(
            format!("{k}.srs"),
            format!("must list 1 to {MAX_SRS_TARGETS} recording servers"),
        ));
    }
    let mut out = Vec::new();
    for (i, s) in r.srs.iter().enumerate() {
        let t = parse_target(s).map_err(|e| invalid(format!("{k}.srs[{i}]"), e))?;
        if t.transport == super::Transport::Udp {
            // The INVITE's multipart body (SDP and metadata) outgrows a datagram, and the
            // recording client keeps no UDP retransmission state.
            return Err(invalid(
                format!("{k}.srs[{i}]"),
                format!(
                    "{s:?}: an SRS is reached over TLS (sips:) or TCP (;transport=tcp), not UDP"
                ),
            ));
        }
        if out.contains(&t) {
            return Err(invalid(
                format!("{k}.srs[{i}]"),
                format!("{s:?} is listed twice"),
            ));
        }
        out.push(t);
    }
    Ok(out)
}

fn validate_transport(r: &RawRecording, k: &str) -> Result<TapTransport, ConfigError> {
    let srtp = one_of(
        &format!("{k}.media"),
        r.media.as_deref(),
        true,
        &[("srtp", true), ("rtp", false)],
    )?;
    match (srtp, &r.suite) {
        (false, Some(_)) => Err(invalid(
            format!("{k}.suite"),
            "media = \"rtp\" has no SRTP suite: remove `suite`",
        )),
        (false, None) => Ok(TapTransport::Rtp),
        (true, None) => Ok(TapTransport::Srtp(TapSuite::AesCm128HmacSha1_80)),
        (true, Some(s)) => s
            .parse::<TapSuite>()
            .map(TapTransport::Srtp)
            .map_err(|e| invalid(format!("{k}.suite"), e.to_string())),
    }
}

fn validate_tls(
    r: &RawRecording,
    srs: &[TargetUri],
    k: &str,
    base: &Path,
) -> Result<(Option<PathBuf>, Option<Vec<u8>>), ConfigError> {
    let any_tls = srs.iter().any(|t| t.transport == super::Transport::Tls);
    if !any_tls && (r.ca_file.is_some() || r.server_name.is_some()) {
        let key = if r.ca_file.is_some() {
            "ca_file"
        } else {
            "server_name"
        };
        return Err(invalid(
            format!("{k}.{key}"),
            format!("no SRS target is TLS (sips:): remove `{key}`"),
        ));
    }
    if let Some(n) = &r.server_name {
        if rustls_pki_types::ServerName::try_from(n.as_str()).is_err() {
            return Err(invalid(
                format!("{k}.server_name"),
                format!("{n:?} is not a server name"),
            ));
        }
    }
    match &r.ca_file {
        Some(p) => {
            let (path, pem) = read_file(&format!("{k}.ca_file"), base, p)?;
            certificates(&format!("{k}.ca_file"), &path, &pem)?;
            Ok((Some(path), Some(pem)))
        }
        None => Ok((None, None)),
    }
}

/// `[tenants.recording]` of tenant `k`, numbers following `logs` unless `identities` says.
pub(super) fn validate_recording(
    r: &RawRecording,
    k: &str,
    base: &Path,
    logs: Redaction,
) -> Result<RecordingSettings, ConfigError> {
    let srs = validate_srs(r, k)?;
    let mode = one_of(
        &format!("{k}.mode"),
        r.mode.as_deref(),
        RecordingMode::Always,
        &[
            ("always", RecordingMode::Always),
            ("api", RecordingMode::Api),
        ],
    )?;
    let legs = one_of(
        &format!("{k}.legs"),
        r.legs.as_deref(),
        TapLegs::Both,
        &[
            ("both", TapLegs::Both),
            ("caller", TapLegs::Caller),
            ("callee", TapLegs::Callee),
        ],
    )?;
    let on_failure = one_of(
        &format!("{k}.on_failure"),
        r.on_failure.as_deref(),
        OnFailure::Continue,
        &[
            ("continue", OnFailure::Continue),
            ("required", OnFailure::Required),
        ],
    )?;
    let ms = r
        .answer_timeout_ms
        .unwrap_or(DEFAULT_ANSWER_TIMEOUT.as_millis() as u64);
    let (lo, hi) = ANSWER_TIMEOUT_RANGE_MS;
    if !(lo..=hi).contains(&ms) {
        return Err(invalid(
            format!("{k}.answer_timeout_ms"),
            format!("must be between {lo} and {hi}"),
        ));
    }
    let identities = one_of(
        &format!("{k}.identities"),
        r.identities.as_deref(),
        Identities::following(logs),
        &[
            ("clear", Identities::Clear),
            ("redact", Identities::Redact),
            ("hash", Identities::Hash),
        ],
    )?;
    let (ca_path, ca_pem) = validate_tls(r, &srs, k, base)?;
    Ok(RecordingSettings {
        transport: validate_transport(r, k)?,
        srs,
        mode,
        legs,
        on_failure,
        answer_timeout: Duration::from_millis(ms),
        identities,
        server_name: r.server_name.clone(),
        ca_pem,
        ca_path,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{err, files, LISTENER, TENANT};
    use super::super::Config;
    use super::*;

    fn with(rec: &str) -> String {
        format!("{LISTENER}{TENANT}[tenants.recording]\n{rec}")
    }

    #[test]
    fn defaults_and_full_section() {
        let f = files();
        let cfg = Config::from_toml_str(&with("srs=[\"sips:srs1.example.net\"]\n"), &f.dir)
            .expect("valid");
        let r = cfg.tenants[0].recording.as_ref().expect("recording");
        assert_eq!(r.srs[0].to_string(), "sips:srs1.example.net");
        assert_eq!(r.mode, RecordingMode::Always);
        assert_eq!(r.legs, TapLegs::Both);
        assert_eq!(
            r.transport,
            TapTransport::Srtp(TapSuite::AesCm128HmacSha1_80)
        );
        assert_eq!(r.on_failure, OnFailure::Continue);
        assert_eq!(r.answer_timeout, DEFAULT_ANSWER_TIMEOUT);
        assert_eq!(r.identities, Identities::Clear, "follows logging (off)");

        let text = format!(
            "[logging]\nredact_numbers=\"hash\"\n{}",
            with(concat!(
                "srs=[\"sips:srs1.example.net:5061\",\"sips:10.0.0.9:5071\"]\nmode=\"api\"\n",
                "legs=\"caller\"\nmedia=\"srtp\"\nsuite=\"AES_256_CM_HMAC_SHA1_80\"\n",
                "on_failure=\"required\"\nanswer_timeout_ms=1500\nca_file=\"ca.pem\"\n",
                "server_name=\"srs.example.net\"\n"
            ))
        );
        let cfg = Config::from_toml_str(&text, &f.dir).expect("valid");
        let r = cfg.tenants[0].recording.as_ref().expect("recording");
        assert_eq!(r.srs.len(), 2);
        assert_eq!(r.mode, RecordingMode::Api);
        assert_eq!(r.legs, TapLegs::Caller);
        assert_eq!(
            r.transport,
            TapTransport::Srtp(TapSuite::Aes256CmHmacSha1_80)
        );
        assert_eq!(r.on_failure, OnFailure::Required);
        assert_eq!(r.answer_timeout, Duration::from_millis(1500));
        assert_eq!(r.identities, Identities::Hash, "follows logging (hash)");
        assert!(r.ca_pem.is_some());
        let plain = with(
            "srs=[\"sip:127.0.0.1:5090;transport=tcp\"]\nmedia=\"rtp\"\nidentities=\"redact\"\n",
        );
        let cfg = Config::from_toml_str(&plain, &f.dir).expect("valid");
        let r = cfg.tenants[0].recording.as_ref().expect("recording");
        assert_eq!(r.transport, TapTransport::Rtp);
        assert_eq!(r.identities, Identities::Redact);
        assert!(
            Config::from_toml_str(&format!("{LISTENER}{TENANT}"), &f.dir)
                .expect("valid")
                .tenants[0]
                .recording
                .is_none()
        );
    }

    #[test]
    fn mistakes_name_the_key() {
        let f = files();
        let cases = [
            ("srs=[]\n", "recording.srs"),
            ("srs=[\"http://x\"]\n", "recording.srs[0]"),
            ("srs=[\"sips:a\",\"sips:a\"]\n", "recording.srs[1]"),
            (
                "srs=[\"sips:a\",\"sip:b;transport=udp\"]\n",
                "recording.srs[1]",
            ),
            ("srs=[\"sips:a\"]\nmode=\"sometimes\"\n", "recording.mode"),
            ("srs=[\"sips:a\"]\nlegs=\"left\"\n", "recording.legs"),
            ("srs=[\"sips:a\"]\nmedia=\"dtls\"\n", "recording.media"),
            ("srs=[\"sips:a\"]\nsuite=\"NULL\"\n", "recording.suite"),
            (
                "srs=[\"sips:a\"]\nmedia=\"rtp\"\nsuite=\"AES_CM_128_HMAC_SHA1_80\"\n",
                "recording.suite",
            ),
            (
                "srs=[\"sips:a\"]\non_failure=\"panic\"\n",
                "recording.on_failure",
            ),
            (
                "srs=[\"sips:a\"]\nanswer_timeout_ms=5\n",
                "recording.answer_timeout_ms",
            ),
            (
                "srs=[\"sips:a\"]\nidentities=\"shown\"\n",
                "recording.identities",
            ),
            (
                "srs=[\"sips:a\"]\nca_file=\"junk.pem\"\n",
                "recording.ca_file",
            ),
            (
                "srs=[\"sip:a;transport=tcp\"]\nserver_name=\"a\"\n",
                "recording.server_name",
            ),
            ("srs=[\"sips:a\"]\nbogus=1\n", "bogus"),
            ("mode=\"api\"\n", "srs"),
        ];
        for (rec, key) in cases {
            let e = err(&f, &with(rec));
            assert!(e.contains(key), "{rec:?}: error {e:?} should name {key:?}");
        }
        let many: Vec<String> = (0..=MAX_SRS_TARGETS)
            .map(|i| format!("\"sips:s{i}\""))
            .collect();
        let e = err(&f, &with(&format!("srs=[{}]\n", many.join(","))));
        assert!(e.contains("recording.srs"), "{e}");
    }
}
