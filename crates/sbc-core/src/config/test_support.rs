//! Fixtures shared by the config's unit tests: a directory holding a certificate, its key,
//! a CA bundle and a file that is not PEM, and the smallest valid listener and tenant.

use std::path::PathBuf;

use super::{self_signed, Config};

pub(super) struct Files {
    pub(super) dir: PathBuf,
}

pub(super) fn files() -> Files {
    let dir = std::env::temp_dir().join(format!(
        "sbc-core-config-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, key) = self_signed(&["localhost".into()]).expect("cert");
    std::fs::write(dir.join("cert.pem"), &cert).expect("w");
    std::fs::write(dir.join("key.pem"), key).expect("w");
    std::fs::write(dir.join("ca.pem"), cert).expect("w");
    std::fs::write(dir.join("junk.pem"), "not pem").expect("w");
    Files { dir }
}

pub(super) const LISTENER: &str = "[[listeners]]\nname=\"l\"\naddress=\"127.0.0.1:5061\"\ncertificate=\"cert.pem\"\nprivate_key=\"key.pem\"\n";
pub(super) const TENANT: &str = "[[tenants]]\nid=\"t1\"\n[tenants.recognition]\nsource_cidrs=[\"10.0.0.0/8\"]\n[[tenants.routes]]\nprefix=\"\"\ntarget=\"sips:pbx.example\"\n";

pub(super) fn err(f: &Files, text: &str) -> String {
    match Config::from_toml_str(text, &f.dir) {
        Ok(_) => panic!("config accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}
