//! `sbc-edge check-config`: every example config in `deploy/` passes, and a bad config
//! fails with exit code 2 and a message naming the key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use sbc_testkit::*;

fn check_config(file: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sbc-edge"))
        .arg("check-config")
        .arg(file)
        .output()
        .expect("runs sbc-edge")
}

/// Copy an example config into a temp dir and create the certificate files it names
/// (examples point at the operator's own PKI).
fn materialise(example: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(example).unwrap();
    let text = if example.extension().is_some_and(|x| x == "yaml") {
        configmap_toml(&text)
    } else {
        text
    };
    let dir = temp_dir("example");
    let ca = Ca::new("example CA");
    let leaf = ca.issue(&["sbc.example.net"]);
    let value: toml::Value = toml::from_str(&text).unwrap();
    let mut files = Vec::new();
    for l in value
        .get("listeners")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        for (k, content) in [
            ("certificate", leaf.cert_pem.as_str()),
            ("private_key", leaf.key_pem.as_str()),
            ("client_ca", ca.pem.as_str()),
        ] {
            if let Some(p) = l.get(k).and_then(|v| v.as_str()) {
                files.push((p.to_string(), content.to_string()));
            }
        }
    }
    for t in value
        .get("tenants")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        for r in t
            .get("routes")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            if let Some(p) = r.get("ca_file").and_then(|v| v.as_str()) {
                files.push((p.to_string(), ca.pem.clone()));
            }
        }
    }
    for (rel, content) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    let out = dir
        .join(example.file_name().unwrap())
        .with_extension("toml");
    std::fs::write(&out, text).unwrap();
    out
}

/// The `sbc-edge.toml: |` block of a Kubernetes ConfigMap, with the pod's absolute
/// mount paths made relative so the test can create the files.
fn configmap_toml(yaml: &str) -> String {
    let mut lines = yaml
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("sbc-edge.toml: |"));
    let header = lines.next().expect("configmap has sbc-edge.toml");
    let outer = header.len() - header.trim_start().len();
    let mut out = String::new();
    let mut indent = None;
    for l in lines {
        if !l.trim().is_empty() && l.len() - l.trim_start().len() <= outer {
            break;
        }
        let i = *indent.get_or_insert(l.len() - l.trim_start().len());
        out.push_str(l.get(i..).unwrap_or(""));
        out.push('\n');
    }
    out.replace("\"/etc/sbc-edge/", "\"")
}

#[test]
fn every_example_config_passes_check_config() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut examples = Vec::new();
    let mut stack = vec![deploy];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "toml")
                || std::fs::read_to_string(&p).is_ok_and(|t| t.contains("sbc-edge.toml: |"))
            {
                examples.push(p);
            }
        }
    }
    assert!(
        examples.len() >= 2,
        "deploy/ holds example configs: {examples:?}"
    );
    for example in examples {
        let file = materialise(&example);
        let out = check_config(&file);
        assert!(
            out.status.success(),
            "{} fails check-config: {}",
            example.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(": OK"), "{stdout}");
        assert!(!stdout.contains("PRIVATE KEY"), "summary never prints keys");
    }
}

#[test]
fn bad_config_exits_2_naming_the_key() {
    let dir = temp_dir("badcfg");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[sip]\nt1_ms = 0\n[[listeners]]\nname=\"x\"\naddress=\"127.0.0.1:5061\"\ncertificate=\"c\"\nprivate_key=\"k\"\n").unwrap();
    let out = check_config(&file);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sip.t1_ms"), "{err}");

    std::fs::write(&file, "[sip]\nt1_msec = 500\n").unwrap();
    let out = check_config(&file);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("t1_msec"));

    let out = check_config(&dir.join("missing.toml"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

/// A listener section named `name` on `address` with the given files.
fn listener(name: &str, address: &str, cert: &str, key: &str) -> String {
    format!("[[listeners]]\nname = \"{name}\"\naddress = \"{address}\"\ncertificate = {cert:?}\nprivate_key = {key:?}\n")
}

#[test]
fn a_certificate_that_does_not_match_its_key_is_refused_naming_the_listener() {
    let world = World::new("cfg-keymismatch");
    let other = world.gw_ca.issue(&["localhost"]);
    let other_key = write(&world.dir, "other.key", &other.key_pem);
    let tenant = world.tenant(
        "demo",
        "source_cidrs = [\"127.0.0.0/8\"]",
        "",
        "127.0.0.1:9".parse().unwrap(),
    );
    let file = world.dir.join("mismatch.toml");
    std::fs::write(
        &file,
        format!(
            "{}{tenant}",
            listener("edge-a", "127.0.0.1:0", &world.gw_cert, &other_key)
        ),
    )
    .unwrap();
    let out = check_config(&file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("listener \"edge-a\"") && err.contains("does not match the private key"),
        "{err}"
    );
    assert!(!err.contains("PRIVATE KEY"), "{err}");
    // The matching key passes.
    std::fs::write(
        &file,
        format!(
            "{}{tenant}",
            listener("edge-a", "127.0.0.1:0", &world.gw_cert, &world.gw_key)
        ),
    )
    .unwrap();
    let out = check_config(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn two_listeners_on_one_address_are_refused_naming_both() {
    let world = World::new("cfg-samelistener");
    let tenant = world.tenant(
        "demo",
        "source_cidrs = [\"127.0.0.0/8\"]",
        "",
        "127.0.0.1:9".parse().unwrap(),
    );
    let file = world.dir.join("same.toml");
    for second in ["127.0.0.1:5061", "0.0.0.0:5061"] {
        std::fs::write(
            &file,
            format!(
                "{}{}{tenant}",
                listener("public", "127.0.0.1:5061", &world.gw_cert, &world.gw_key),
                listener("inside", second, &world.gw_cert, &world.gw_key)
            ),
        )
        .unwrap();
        let out = check_config(&file);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("listeners[1].address")
                && err.contains("\"inside\"")
                && err.contains("\"public\""),
            "{err}"
        );
    }
}

#[test]
fn audit_verify_command_reports_the_broken_line() {
    let dir = temp_dir("auditcli");
    let file = dir.join("audit.log");
    std::fs::write(&file, "{\"not\":\"a chained line\"}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sbc-edge"))
        .args(["audit", "verify"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
