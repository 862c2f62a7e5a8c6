//! Build script of the sbc-edge binary: the git commit for `sbc_build_info{commit}`.
//!
//! `SBC_EDGE_COMMIT` from the environment wins (a packager building from a tarball can
//! set it); else `git rev-parse` when the package root holds `.git` (a checkout or a
//! worktree) and git is installed; else "unknown". Never fails the build.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=SBC_EDGE_COMMIT");
    let commit = std::env::var("SBC_EDGE_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            // Only this checkout's own git (a tarball unpacked inside another repository
            // must not take that one's commit).
            let manifest = std::env::var("CARGO_MANIFEST_DIR").ok()?;
            if !std::path::Path::new(&manifest).join(".git").exists() {
                return None;
            }
            // Rebuild when HEAD moves: the checkout's HEAD and its reflog (a commit or a
            // checkout appends to it; in a worktree both live in the worktree's git dir).
            if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
                println!("cargo:rerun-if-changed={dir}/HEAD");
                println!("cargo:rerun-if-changed={dir}/logs/HEAD");
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=SBC_EDGE_COMMIT={commit}");
}
