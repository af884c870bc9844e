//! The `dht-sidecar` binary: starts from a config file, serves the gateway, and refuses
//! bad configuration with a clear message.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dht-sidecar");

#[test]
fn the_sidecar_serves_the_gateway_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("mirror.key");
    std::fs::write(&key, format!("secp256k1:{}", "11".repeat(32))).unwrap();
    let config = dir.path().join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nport = 0\n[mirror_keys]\ntp = {:?}\n[authorized_publishers]\ntp = [\"{}\"]\n",
            dir.path().join("data"),
            key,
            "02".to_string() + &"ab".repeat(32),
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args([
            "--config",
            config.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut gateway = None;
    let started = Instant::now();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(url) = line.strip_prefix("gateway: ") {
            gateway = Some(url.to_string());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "sidecar did not start"
        );
    }
    let gateway = gateway.expect("gateway address printed");
    let body = http::blocking_get(&format!("{gateway}/health"));
    let _ = child.kill();
    let _ = child.wait();
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert!(dir.path().join("data").join("items.redb").exists());
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("nonsense = 1\n", "invalid configuration"),
        (
            "[mirror_keys]\ntp = \"/nonexistent.key\"\n",
            "reading /nonexistent.key",
        ),
        (
            "[authorized_publishers]\ntp = [\"zz\"]\n",
            "authorized publisher",
        ),
        ("push_listen = \"127.0.0.1:0\"\n", "push_token"),
        ("[pusher]\ntp = \"http://127.0.0.1:1/\"\n", "not supported"),
        ("replication = 0\n", "replication = 0 is out of range"),
        ("replication = 1000\n", "replication = 1000 is out of range"),
        ("ttl_secs = 0\n", "ttl_secs = 0 is out of range"),
        ("max_value_len = 0\n", "max_value_len = 0 is out of range"),
        (
            "max_value_len = 1000000000\n",
            "max_value_len = 1000000000 is out of range",
        ),
        ("http_listen = \"nope\"\n", "http_listen"),
    ];
    for (i, (text, expect)) in cases.iter().enumerate() {
        let config = dir.path().join(format!("c{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\nport = 0\n{text}",
                dir.path().join(format!("d{i}"))
            ),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args([
                "--config",
                config.to_str().unwrap(),
                "--http",
                "127.0.0.1:0",
            ])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{text}: {err}");
        assert!(!err.contains("panicked"));
    }
    // In JSON logs the error is one JSON object too.
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent.toml", "--log-format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert_eq!(lines[0]["level"], "ERROR", "{err}");
    assert!(
        lines[0]["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("reading /nonexistent.toml"),
        "{err}"
    );
}

/// Starts the sidecar with `args`; returns it and the gateway URL it printed.
fn start(
    args: &[&str],
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
    String,
) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let started = Instant::now();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(url) = line.strip_prefix("gateway: ") {
            return (child, lines, url.to_string());
        }
        seen.push(line);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "sidecar did not start"
        );
    }
    let _ = child.wait();
    panic!("sidecar exited: {seen:?}");
}

#[test]
fn http_listen_from_the_file_and_a_clean_exit_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidecar.toml");
    // 192.0.2.1 (TEST-NET-1) is never a local address: binding it fails, so a start
    // proves which address was used.
    let write = |http: &str| {
        std::fs::write(
            &config,
            format!(
                "http_listen = {http:?}\ndata_dir = {:?}\nport = 0\n",
                dir.path().join("data")
            ),
        )
        .unwrap();
    };
    write("192.0.2.1:9481");
    let out = Command::new(BIN)
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("binding the gateway to 192.0.2.1:9481"),
        "{err}"
    );
    // The flag overrides the file.
    let (mut child, _, url) = start(&[
        "--config",
        config.to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
    ]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    write("127.0.0.1:0");
    let (mut child, lines, url) = start(&["--config", config.to_str().unwrap()]);
    let health: serde_json::Value =
        serde_json::from_str(&http::blocking_get(&format!("{url}/health"))).unwrap();
    assert_eq!(health["status"], "ok");
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}: {rest:?}");
    assert!(rest.iter().any(|l| l.contains("shutting down")), "{rest:?}");
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn the_example_configuration_starts() {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/dht-sidecar.toml");
    let data = dir.path().join("data");
    let (mut child, _, url) = start(&[
        "--config",
        example,
        "--data-dir",
        data.to_str().unwrap(),
        "--port",
        "0",
        "--http",
        "127.0.0.1:0",
    ]);
    let body = http::blocking_get(&format!("{url}/health"));
    let _ = child.kill();
    let _ = child.wait();
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
}

mod http {
    /// A tiny blocking GET over std (the test binary has no async runtime).
    pub fn blocking_get(url: &str) -> String {
        use std::io::{Read, Write};
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest
            .split_once('/')
            .map(|(h, p)| (h, format!("/{p}")))
            .unwrap();
        let mut s = std::net::TcpStream::connect(host).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    }
}
