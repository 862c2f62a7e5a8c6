//! The systemd unit's file layout works for its dynamic user: a config tree with the
//! unit's `ConfigurationDirectoryMode=` (read from `deploy/systemd/sbc-edge.service`), the
//! config and certificates 0644 and the private key as a credential (`LoadCredential=`)
//! passes `sbc-edge check-config` run as an unprivileged uid (65534, no groups), which is
//! neither owner nor group of anything there; the same tree with the directory at 0750
//! fails. Needs root (to change uid and owners): `.ci/run` runs it with `--ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use sbc_testkit::*;

/// The uid and gid the check runs as (`nobody` on Debian): owns nothing in the tree.
const UNPRIVILEGED: u32 = 65534;

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The value of `key=` in the unit file.
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit sets {key}="))
        .trim()
        .to_string()
}

fn check_as_unprivileged(bin: &Path, config: &Path) -> std::process::Output {
    Command::new("setpriv")
        .arg(format!("--reuid={UNPRIVILEGED}"))
        .arg(format!("--regid={UNPRIVILEGED}"))
        .arg("--clear-groups")
        .arg(bin)
        .arg("check-config")
        .arg(config)
        .output()
        .expect("runs setpriv")
}

#[test]
#[ignore = "needs root (changes uid and file owners): run by .ci/run's unit-files stage"]
fn check_config_passes_as_the_units_dynamic_user() {
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        eprintln!("skipped: needs root to run check-config as uid {UNPRIVILEGED}");
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: setpriv (util-linux) is not installed");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("deploy/systemd/sbc-edge.service")).unwrap();
    let dir_mode = u32::from_str_radix(&unit_value(&unit, "ConfigurationDirectoryMode"), 8)
        .expect("an octal mode");
    let (cred_name, _) = unit_value(&unit, "LoadCredential")
        .split_once(':')
        .map(|(n, p)| (n.to_string(), p.to_string()))
        .expect("LoadCredential=NAME:PATH");

    let tree = temp_dir("unit-files");
    set_mode(&tree, 0o755);
    // The binary, where the unprivileged uid can run it (the target dir may not be).
    let bin = tree.join("sbc-edge");
    std::fs::copy(env!("CARGO_BIN_EXE_sbc-edge"), &bin).unwrap();
    set_mode(&bin, 0o755);

    // /etc/sbc-edge as the unit leaves it: root-owned, the unit's mode, files 0644.
    let etc = tree.join("etc-sbc-edge");
    std::fs::create_dir_all(etc.join("certs")).unwrap();
    let ca = Ca::new("unit test CA");
    let leaf = ca.issue(&["sbc.example.net"]);
    std::fs::write(etc.join("certs/sbc.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(etc.join("certs/inside-ca.pem"), &ca.pem).unwrap();
    // The key's source stays root-only; the service reads the credential copy.
    std::fs::create_dir_all(etc.join("private")).unwrap();
    std::fs::write(etc.join("private/sbc.key"), &leaf.key_pem).unwrap();
    set_mode(&etc.join("private/sbc.key"), 0o600);
    set_mode(&etc.join("private"), 0o700);

    // /run/credentials/sbc-edge.service as systemd makes it: the service user's, 0500/0400.
    let creds = tree.join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    let cred = creds.join(&cred_name);
    std::fs::write(&cred, &leaf.key_pem).unwrap();
    set_mode(&cred, 0o400);
    chown(&cred, Some(UNPRIVILEGED), Some(UNPRIVILEGED)).unwrap();
    set_mode(&creds, 0o500);
    chown(&creds, Some(UNPRIVILEGED), Some(UNPRIVILEGED)).unwrap();

    let config = etc.join("sbc-edge.toml");
    std::fs::write(
        &config,
        format!(
            "[[listeners]]\nname = \"public\"\naddress = \"0.0.0.0:5061\"\n\
certificate = \"certs/sbc.pem\"\nprivate_key = {cred:?}\n\
[[tenants]]\nid = \"acme\"\n[tenants.recognition]\nsource_cidrs = [\"192.0.2.0/24\"]\n\
[[tenants.routes]]\ntarget = \"sips:pbx.acme.example\"\nca_file = \"certs/inside-ca.pem\"\n"
        ),
    )
    .unwrap();
    for f in ["sbc-edge.toml", "certs/sbc.pem", "certs/inside-ca.pem"] {
        set_mode(&etc.join(f), 0o644);
    }
    set_mode(&etc.join("certs"), 0o755);
    set_mode(&etc, dir_mode);

    let out = check_as_unprivileged(&bin, &config);
    assert!(
        out.status.success(),
        "check-config as uid {UNPRIVILEGED} with ConfigurationDirectoryMode={dir_mode:o}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The mode the unit had before (0750): the dynamic user cannot read its own config.
    set_mode(&etc, 0o750);
    let out = check_as_unprivileged(&bin, &config);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
