//! `dht-node run`'s configuration through the real binary: every key documented in the
//! example file and in `--help`, file < environment < flags, refusals naming the key and
//! its origin, off-curve keys refused, `--announce`, IPv4 and IPv6 by default, shell
//! completions.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dht-node");
const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/config/dht-node.toml"
);

/// `run --check`: (exit code, stdout, stderr).
fn check(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--check"]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_key_is_documented_in_the_example_and_the_help() {
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    let out = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let keys = dht_node::settings::keys_of::<dht_node::settings::NodeSettings>();
    assert!(keys.len() >= 18, "{keys:?}");
    for key in &keys {
        let documented = example.lines().any(|l| {
            let l = l.trim_start_matches('#').trim_start();
            l.starts_with(&format!("{key} =")) || l == format!("[{key}]")
        });
        assert!(documented, "{key} is not in {EXAMPLE}");
        assert!(
            help.contains(&format!("  {key} = ")),
            "{key} not in run --help"
        );
    }
    assert!(help.contains("DHT_<KEY>"), "{help}");
    // The example parses, and its values are the defaults it claims.
    let (code, from_example, err) = check(&["--config", EXAMPLE], &[]);
    assert_eq!(code, 0, "{err}");
    let (code, defaults, err) = check(&[], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(from_example, defaults);
}

#[test]
fn file_environment_and_flags_are_layered_in_that_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "replication = 5\nttl_secs = 600\nmax_connected_peers = 100\n\
         bootstrap = [\"/ip4/192.0.2.1/tcp/9480\"]\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let (code, out, err) = check(
        &[
            "--config",
            file,
            "--replication",
            "7",
            "--log-format",
            "json",
        ],
        &[
            ("DHT_REPLICATION", "6"),
            ("DHT_TTL_SECS", "700"),
            ("DHT_BOOTSTRAP", "/ip4/192.0.2.2/tcp/1,/ip4/192.0.2.3/tcp/1"),
            // Not a key: warned about, not fatal (other programs' DHT_* variables).
            ("DHT_SOMETHING_ELSE", "1"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: toml::Value = toml::from_str(&out).unwrap();
    assert_eq!(
        v["replication"].as_integer(),
        Some(7),
        "flag over env: {out}"
    );
    assert_eq!(
        v["ttl_secs"].as_integer(),
        Some(700),
        "env over file: {out}"
    );
    assert_eq!(
        v["max_connected_peers"].as_integer(),
        Some(100),
        "file: {out}"
    );
    assert_eq!(v["log_format"].as_str(), Some("json"));
    let boot: Vec<&str> = v["bootstrap"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap())
        .collect();
    assert_eq!(boot, ["/ip4/192.0.2.2/tcp/1", "/ip4/192.0.2.3/tcp/1"]);
    assert!(err.contains("DHT_SOMETHING_ELSE"), "{err}");
    // DHT_CONFIG names the file (not a key).
    let (code, out, err) = check(&[], &[("DHT_CONFIG", file)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("replication = 5"), "{out}");
}

#[test]
fn refusals_name_the_key_and_where_it_was_set() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    let path = file.to_str().unwrap().to_string();
    // (file text, environment, flags, what the error must say)
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, Vec<&'a str>, Vec<String>);
    let cases: Vec<Case> = vec![
        (
            "replication = 0\n".into(),
            vec![],
            vec![],
            vec!["replication = 0 is out of range".into(), path.clone()],
        ),
        (
            "ttl_secs = 0\n".into(),
            vec![],
            vec![],
            vec!["ttl_secs = 0 is out of range".into()],
        ),
        (
            "max_value_len = 0\n".into(),
            vec![],
            vec![],
            vec!["max_value_len = 0 is out of range".into()],
        ),
        (
            "max_store_bytes = 0\n".into(),
            vec![],
            vec![],
            vec!["max_store_bytes = 0 is out of range".into()],
        ),
        (
            "replicaton = 3\n".into(),
            vec![],
            vec![],
            vec!["unknown key `replicaton`".into(), path.clone()],
        ),
        (
            "skywire_key = \"/k\"\n".into(),
            vec![],
            vec![],
            vec!["renamed: now `identity_key`".into()],
        ),
        (
            "port = \"high\"\n".into(),
            vec![],
            vec![],
            vec!["port".into(), "expected u16".into(), path.clone()],
        ),
        (
            String::new(),
            vec![("DHT_REPLICATION", "0")],
            vec![],
            vec!["replication = 0".into(), "DHT_REPLICATION".into()],
        ),
        (
            String::new(),
            vec![],
            vec!["--ttl-secs", "0"],
            vec!["ttl_secs = 0".into(), "command-line flags".into()],
        ),
        (
            "identity_key = \"/nonexistent/secret.key\"\n".into(),
            vec![],
            vec![],
            vec!["identity_key".into(), "/nonexistent/secret.key".into()],
        ),
        (
            "announce = [\"not an address\"]\n".into(),
            vec![],
            vec![],
            vec!["announce has an invalid address".into()],
        ),
        (
            format!(
                "[authorized_publishers]\ntp = [\"02{}\"]\n",
                "00".repeat(32)
            ),
            vec![],
            vec![],
            vec![
                "authorized_publishers.tp".into(),
                "not a point of its curve".into(),
            ],
        ),
    ];
    for (text, env, flags, expect) in cases {
        std::fs::write(&file, &text).unwrap();
        let mut args = vec!["--config", path.as_str()];
        args.extend(flags);
        let (code, _, err) = check(&args, &env);
        assert_eq!(code, 1, "{text:?} {env:?}: {err}");
        for e in &expect {
            assert!(
                err.contains(e.as_str()),
                "{text:?} {env:?}: {e:?} not in {err}"
            );
        }
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn off_curve_keys_are_refused_on_the_command_line() {
    let off_curve = format!("02{}", "00".repeat(32));
    let (code, _, err) = check(&["--authorize", &format!("tp={off_curve}")], &[]);
    assert_eq!(code, 1, "{err}"); // a usage error is exit 1 too
    assert!(err.contains("not a point of its curve"), "{err}");
    let out = Command::new(BIN)
        .args([
            "get",
            "--bootstrap",
            "/ip4/127.0.0.1/tcp/1",
            "--salt",
            "tp",
            "--subject",
            &off_curve,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--subject") && err.contains("not a point of its curve"),
        "{err}"
    );
}

#[test]
fn usage_errors_exit_1_not_2_which_means_unreachable() {
    for args in [
        &["frobnicate"][..],
        &["get", "--salt", "x"],
        &["run", "--port", "x"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
    }
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn shell_completions_are_printed() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("dht-node") && text.contains("bootstrap"),
            "{shell}: {text}"
        );
    }
}

/// A running `dht-node run`: its stderr lines until `until` matched, and the child.
fn start(args: &[&str], until: &str) -> (std::process::Child, Vec<String>) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let started = Instant::now();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    while let Some(line) = lines.next() {
        let line = line.unwrap();
        let done = line.contains(until);
        seen.push(line);
        if done {
            // Keep reading: a closed pipe would end the node at its next status line.
            std::thread::spawn(move || lines.for_each(drop));
            return (child, seen);
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{seen:?}");
    }
    let _ = child.wait();
    panic!("exited: {seen:?}");
}

#[test]
fn default_listen_addresses_are_ipv4_and_ipv6_tcp_and_quic() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, seen) = start(
        &[
            "run",
            "--port",
            "0",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        "running as a bootstrap node",
    );
    let _ = child.kill();
    let _ = child.wait();
    let listening: Vec<&String> = seen
        .iter()
        .filter(|l| l.starts_with("listening: "))
        .collect();
    assert!(listening
        .iter()
        .any(|l| l.starts_with("listening: /ip4/") && l.contains("/tcp/")));
    assert!(listening
        .iter()
        .any(|l| l.starts_with("listening: /ip4/") && l.contains("/quic-v1/")));
    let has_ipv6 = std::net::TcpListener::bind("[::]:0").is_ok();
    if has_ipv6 {
        assert!(
            listening
                .iter()
                .any(|l| l.starts_with("listening: /ip6/") && l.contains("/tcp/")),
            "{seen:?}"
        );
        assert!(
            listening
                .iter()
                .any(|l| l.starts_with("listening: /ip6/") && l.contains("/quic-v1/")),
            "{seen:?}"
        );
    } else {
        assert!(
            seen.iter().any(|l| l.contains("IPv6 is not available")),
            "{seen:?}"
        );
    }
    // A lone bootstrap node does not warn that it cannot bootstrap.
    assert!(
        !seen
            .iter()
            .any(|l| l.contains("Failed to trigger bootstrap")),
        "{seen:?}"
    );
}

#[test]
fn announced_addresses_reach_the_other_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let announced = "/ip4/203.0.113.7/tcp/4001";
    let (mut child, seen) = start(
        &[
            "run",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--announce",
            announced,
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        "running as a bootstrap node",
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with(&format!("announcing: {announced}/p2p/"))),
        "{seen:?}"
    );
    let boot = seen
        .iter()
        .find_map(|l| l.strip_prefix("listening: "))
        .unwrap()
        .to_string();
    // A second full node joins through it; a client then learns the first node's
    // addresses (identify, and the second node's answers): the announced one among them.
    let dir2 = tempfile::tempdir().unwrap();
    let (mut second, _) = start(
        &[
            "run",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
            &boot,
            "--data-dir",
            dir2.path().to_str().unwrap(),
        ],
        "joining: 1 peers",
    );
    // Retried while the second node is still joining.
    let started = Instant::now();
    let out = loop {
        let out = Command::new(BIN)
            .args(["peers", "--bootstrap", &boot, "--timeout", "10"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if (out.status.success() && text.contains(announced))
            || started.elapsed() > Duration::from_secs(30)
        {
            break out;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    for c in [&mut child, &mut second] {
        let _ = c.kill();
        let _ = c.wait();
    }
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(announced), "{text}");
}
