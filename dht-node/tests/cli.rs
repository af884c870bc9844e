//! The `dht-node` binary end to end: `testnet`, `keygen`, `put`, `get`, `delete`, `peers`,
//! and clear errors for bad input.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dht-node");

struct Testnet {
    child: Child,
    bootstrap: String,
}

impl Drop for Testnet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_testnet(nodes: usize) -> Testnet {
    let mut child = Command::new(BIN)
        .args(["testnet", "--nodes", &nodes.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dht-node testnet");
    let stdout = child.stdout.take().unwrap();
    let mut bootstrap = None;
    let started = Instant::now();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(a) = line.strip_prefix("BOOTSTRAP ") {
            bootstrap = Some(a.to_string());
        }
        if line.starts_with("READY") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "testnet did not start"
        );
    }
    Testnet {
        child,
        bootstrap: bootstrap.expect("testnet printed its bootstrap address"),
    }
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            input.write_all(bytes).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn testnet_put_get_delete_through_the_binary() {
    let net = start_testnet(4);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("owner.key");
    let key_s = key.to_str().unwrap();
    let out = run(&["keygen", "--scheme", "secp256k1", "--out", key_s], None);
    assert!(out.status.success());
    let pk = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(pk.len(), 66);
    // keygen refuses to overwrite a key.
    assert!(!run(&["keygen", "--out", key_s], None).status.success());

    let b = net.bootstrap.as_str();
    let value = br#"[{"address":"02ab:44","type":"vpn"}]"#;
    let put = json(&run(
        &["put", "--bootstrap", b, "--key", key_s, "--salt", "svc"],
        Some(value),
    ));
    assert_eq!(put["seq"], 1);
    assert_eq!(put["stored"], 4);

    let out = run(
        &[
            "get",
            "--bootstrap",
            b,
            "--subject",
            &pk,
            "--salt",
            "svc",
            "--raw",
        ],
        None,
    );
    assert!(out.status.success());
    assert_eq!(out.stdout, value);

    // A second put without --seq goes one above what is stored.
    let file = dir.path().join("v2.json");
    std::fs::write(&file, b"[]").unwrap();
    let put = json(&run(
        &[
            "put",
            "--bootstrap",
            b,
            "--key",
            key_s,
            "--salt",
            "svc",
            "--value-file",
            file.to_str().unwrap(),
        ],
        None,
    ));
    assert_eq!(put["seq"], 2);

    let del = json(&run(
        &["delete", "--bootstrap", b, "--key", key_s, "--salt", "svc"],
        None,
    ));
    assert_eq!(del["seq"], 3);
    let got = json(&run(
        &[
            "get",
            "--bootstrap",
            b,
            "--subject",
            &pk,
            "--salt",
            "svc",
            "--quorum",
        ],
        None,
    ));
    assert_eq!(got["status"], "deleted");
    assert_eq!(got["seq"], 3);
    let got = json(&run(
        &["get", "--bootstrap", b, "--subject", &pk, "--salt", "never"],
        None,
    ));
    assert_eq!(got["status"], "not_found");

    let peers = run(&["peers", "--bootstrap", b], None);
    assert!(peers.status.success());
    assert_eq!(String::from_utf8_lossy(&peers.stdout).lines().count(), 4);
}

#[test]
fn bad_input_gets_a_clear_message_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let bad_key = dir.path().join("bad.key");
    std::fs::write(&bad_key, "ed25519:zz").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "get",
                "--bootstrap",
                "not-an-addr",
                "--subject",
                "02",
                "--salt",
                "x",
            ],
            "invalid value",
        ),
        (
            vec![
                "get",
                "--bootstrap",
                "/ip4/127.0.0.1/tcp/1",
                "--subject",
                "nothex",
                "--salt",
                "x",
            ],
            "--subject",
        ),
        (
            vec![
                "put",
                "--bootstrap",
                "/ip4/127.0.0.1/tcp/1",
                "--key",
                "/nonexistent/key",
                "--salt",
                "x",
            ],
            "reading key file",
        ),
        (
            vec![
                "put",
                "--bootstrap",
                "/ip4/127.0.0.1/tcp/1",
                "--key",
                bad_key.to_str().unwrap(),
                "--salt",
                "x",
            ],
            "not valid hex",
        ),
        (
            vec!["run", "--config", "/nonexistent.toml"],
            "reading /nonexistent.toml",
        ),
        (vec!["run", "--authorize", "tp"], "expected SALT=HEXKEY"),
        (vec!["testnet", "--nodes", "0"], "at least 1"),
        (vec!["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, expect) in cases {
        let out = run(&args, Some(b""));
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(&bad_toml, "port = \"nope\"").unwrap();
    let out = run(&["run", "--config", bad_toml.to_str().unwrap()], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid configuration"));
}

/// A plain HTTP/1.1 GET on loopback; returns the body.
fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("path");
    let mut s = std::net::TcpStream::connect(host).expect("connect");
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

#[test]
fn run_serves_metrics_and_health_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut metrics = None;
    let started = Instant::now();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(u) = line.strip_prefix("metrics: ") {
            metrics = Some(u.to_string());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no metrics address"
        );
    }
    let url = metrics.expect("metrics address printed");
    let text = http_get(&url);
    for name in [
        "dht_routing_table_peers",
        "dht_rate_limited_total",
        "dht_equivocations_total",
        "dht_item_protocol_bytes_total",
        "dht_peers_suspected_total",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    let health: serde_json::Value =
        serde_json::from_str(&http_get(&url.replace("/metrics", "/health"))).unwrap();
    assert_eq!(health["status"], "ok");
    assert!(health["peer_id"]
        .as_str()
        .is_some_and(|p| p.starts_with("12D3")));

    // SIGTERM (systemctl stop, docker stop): a clean shutdown and exit 0.
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}: {rest:?}");
    assert!(rest.iter().any(|l| l.contains("shutting down")), "{rest:?}");
}
