//! The workspace's `rust-version` is true for the locked dependencies: none of the crates
//! the build uses (normal, build and dev dependencies, every target) declares a newer
//! one. (Our own code is held to it by clippy's `incompatible_msrv` lint in CI.)

use std::collections::HashSet;
use std::process::Command;

fn version(v: &str) -> (u64, u64, u64) {
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

#[test]
fn no_locked_dependency_needs_a_newer_rust_than_rust_version() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let tree = Command::new(&cargo)
        .current_dir(root)
        .args([
            "tree",
            "--workspace",
            "--locked",
            "--offline",
            "--target",
            "all",
            "-e",
            "normal,build,dev",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .unwrap();
    assert!(
        tree.status.success(),
        "{}",
        String::from_utf8_lossy(&tree.stderr)
    );
    // "name v1.2.3" (and " (*)" or a path after it).
    let used: HashSet<(String, String)> = String::from_utf8_lossy(&tree.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?;
            let v = w.next()?.strip_prefix('v')?;
            Some((name.to_string(), v.to_string()))
        })
        .collect();
    assert!(used.len() > 100, "{used:?}");
    let meta = Command::new(&cargo)
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .output()
        .unwrap();
    assert!(meta.status.success());
    let meta: serde_json::Value = serde_json::from_slice(&meta.stdout).unwrap();
    let ours = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "dht-node")
        .and_then(|p| p["rust_version"].as_str())
        .map(version)
        .expect("dht-node declares rust-version");
    let mut newer = Vec::new();
    for p in meta["packages"].as_array().unwrap() {
        let key = (
            p["name"].as_str().unwrap().to_string(),
            p["version"].as_str().unwrap().to_string(),
        );
        if let (true, Some(rv)) = (used.contains(&key), p["rust_version"].as_str()) {
            if version(rv) > ours {
                newer.push(format!("{} {} needs {rv}", key.0, key.1));
            }
        }
    }
    assert!(
        newer.is_empty(),
        "rust-version {ours:?} is not true: {newer:?}"
    );
}
