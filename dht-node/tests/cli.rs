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

    // Exit codes: 4 for a deleted item (its report still printed), 3 for one never stored.
    let out = run(
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
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["status"], "deleted");
    assert_eq!(got["seq"], 3);
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
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    let out = run(
        &["get", "--bootstrap", b, "--subject", &pk, "--salt", "never"],
        None,
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["status"], "not_found");
    let out = run(
        &[
            "get",
            "--bootstrap",
            b,
            "--subject",
            &pk,
            "--salt",
            "never",
            "--raw",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    // An empty value is refused unless asked for; a delete is `dht-node delete`.
    for input in [None, Some(dir.path().join("empty"))] {
        let mut args = vec!["put", "--bootstrap", b, "--key", key_s, "--salt", "e"];
        if let Some(f) = &input {
            std::fs::write(f, b"").unwrap();
            args.extend(["--value-file", f.to_str().unwrap()]);
        }
        let out = run(&args, Some(b""));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("is empty") && err.contains("--allow-empty"),
            "{err}"
        );
        assert!(out.stdout.is_empty());
    }
    let put = json(&run(
        &[
            "put",
            "--bootstrap",
            b,
            "--key",
            key_s,
            "--salt",
            "e",
            "--allow-empty",
        ],
        Some(b""),
    ));
    assert_eq!(put["seq"], 1);
    let out = run(
        &[
            "get",
            "--bootstrap",
            b,
            "--subject",
            &pk,
            "--salt",
            "e",
            "--raw",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stdout.is_empty());

    let peers = run(&["peers", "--bootstrap", b], None);
    assert!(peers.status.success());
    assert_eq!(String::from_utf8_lossy(&peers.stdout).lines().count(), 4);
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A `/p2p/` address on a loopback port where nothing listens.
fn dead_address() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("/ip4/127.0.0.1/tcp/{port}/p2p/{DEAD_PEER}")
}

/// A well-formed peer id nobody runs.
const DEAD_PEER: &str = "16Uiu2HAmHzBkRq62mG95vsjKMuYQBezZCtjPXYWUoyVxMxi71aB3";

#[test]
fn nothing_listening_is_exit_2_and_no_peer_listed() {
    let dead = dead_address();
    let started = Instant::now();
    let out = run(
        &[
            "get",
            "--bootstrap",
            &dead,
            "--subject",
            &dht_core::SigningKey::generate_secp256k1()
                .public_key()
                .to_hex(),
            "--salt",
            "tp",
            "--timeout",
            "10",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no peer answered"),
        "{}",
        stderr(&out)
    );
    let out = run(&["peers", "--bootstrap", &dead, "--timeout", "10"], None);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr(&out).contains("no peer answered"),
        "{}",
        stderr(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn peers_lists_only_the_peers_that_answered() {
    let net = start_testnet(3);
    let both = format!("{},{}", net.bootstrap, dead_address());
    let out = run(&["peers", "--bootstrap", &both], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(!text.contains(DEAD_PEER), "{text}");
    let boot_id = net.bootstrap.rsplit('/').next().unwrap();
    assert!(text.contains(boot_id), "{text}");
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

    // Values out of range are refused before anything starts, naming the key.
    for (text, key) in [
        ("replication = 0", "replication = 0"),
        ("replication = 1000", "replication = 1000"),
        ("ttl_secs = 0", "ttl_secs = 0"),
        ("ttl_secs = 99999999999", "ttl_secs = 99999999999"),
        ("max_value_len = 0", "max_value_len = 0"),
        ("max_value_len = 1000000000", "max_value_len = 1000000000"),
        ("republish_interval_secs = 0", "republish_interval_secs = 0"),
        ("max_connected_peers = 0", "max_connected_peers = 0"),
    ] {
        let file = dir.path().join("range.toml");
        std::fs::write(
            &file,
            format!("data_dir = {:?}\n{text}\n", dir.path().join("data")),
        )
        .unwrap();
        let out = run(&["run", "--config", file.to_str().unwrap()], None);
        assert_eq!(out.status.code(), Some(1), "{text}");
        let err = stderr(&out);
        assert!(
            err.contains(key) && err.contains("out of range"),
            "{text}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(!dir.path().join("data").exists(), "{text}: started anyway");
    }
    let out = run(&["run", "--max-value-len", "0"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("max_value_len = 0"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn listener_errors_name_the_address_and_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("/ip4/127.0.0.1/tcp/{}", taken.local_addr().unwrap().port());
    let data = dir.path().join("a");
    let out = run(
        &[
            "run",
            "--listen",
            &addr,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&addr), "{err}");
    assert!(err.contains("in use"), "{err}");
    assert!(!err.trim_end().ends_with(':'), "{err}");

    // The same data directory twice: one message naming the store's path.
    let data = dir.path().join("b");
    let mut first = Command::new(BIN)
        .args(["run", "--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(first.stderr.take().unwrap()).lines();
    let started = Instant::now();
    for line in lines.by_ref() {
        if line.unwrap().starts_with("listening: ") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no start");
    }
    let out = run(
        &[
            "run",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        None,
    );
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let path = data.display().to_string();
    assert!(err.contains(&path), "{err}");
    assert_eq!(err.matches(&path).count(), 1, "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("error")).count(),
        1,
        "{err}"
    );
}

#[test]
fn logs_are_json_on_request_and_never_coloured_in_a_pipe() {
    let dead = dead_address();
    let args = ["peers", "--bootstrap", &dead, "--timeout", "2"];
    let out = Command::new(BIN)
        .args(args)
        .args(["--log-format", "json"])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let err = stderr(&out);
    let logs: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert!(!logs.is_empty(), "{err}");
    assert!(logs.iter().all(|l| l["level"].is_string()), "{err}");
    // A running node in JSON: every line on stderr is one JSON object, status lines too.
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir"])
        .arg(dir.path())
        .env("DHT_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let parse = |l: &str| -> serde_json::Value {
        serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"))
    };
    let message = |v: &serde_json::Value| v["fields"]["message"].as_str().unwrap_or("").to_owned();
    let started = Instant::now();
    for line in lines.by_ref() {
        if message(&parse(&line.unwrap())).starts_with("listening: /ip4/127.0.0.1/tcp/") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no start");
    }
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let rest: Vec<serde_json::Value> = lines.map_while(Result::ok).map(|l| parse(&l)).collect();
    assert!(child.wait().unwrap().success());
    assert!(
        rest.iter().any(|v| message(v) == "shutting down"),
        "{rest:?}"
    );
    // The final error too.
    let out = Command::new(BIN)
        .args([
            "run",
            "--config",
            "/nonexistent.toml",
            "--log-format",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err: Vec<serde_json::Value> = stderr(&out).lines().map(parse).collect();
    assert_eq!(err.len(), 1, "{err:?}");
    assert_eq!(err[0]["level"], "ERROR");
    assert!(
        message(&err[0]).contains("reading /nonexistent.toml"),
        "{err:?}"
    );

    let out = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "debug")
        .env("DHT_LOG_FORMAT", "text")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(err.lines().count() > 1, "{err}");
    assert!(!err.contains('\u{1b}'), "{err}");
    assert!(!err.lines().any(|l| l.starts_with('{')), "{err}");
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
    // The documented example configuration, with the addresses and directory overridden.
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/config/dht-node.toml"
    );
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--config",
            example,
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
    // Its data stays in the data directory: the key and the store.
    assert!(dir.path().join("items.redb").exists());
    assert!(dir.path().join("node.key").exists());
}

/// deploy/docker-compose.yml names node1's peer id, derived from deploy/compose/node1.key:
/// the two must agree, or the other nodes bootstrap to nobody.
#[test]
fn the_compose_files_bootstrap_peer_id_matches_its_key() {
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--listen", "/ip4/127.0.0.1/tcp/0", "--identity-key"])
        .arg(format!("{deploy}/compose/node1.key"))
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut peer = None;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        if let Some(p) = line.unwrap().strip_prefix("peer id: ") {
            peer = Some(p.to_string());
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let peer = peer.expect("peer id printed");
    let compose = std::fs::read_to_string(format!("{deploy}/docker-compose.yml")).unwrap();
    assert!(
        compose.contains(&format!("/ip4/172.28.0.11/tcp/9480/p2p/{peer}")),
        "{peer} not in the compose file"
    );
}
