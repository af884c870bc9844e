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
            dht_core::SigningKey::generate_secp256k1().public_key(),
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
            "mirror_keys.tp: /nonexistent.key",
        ),
        (
            "[authorized_publishers]\ntp = [\"zz\"]\n",
            "authorized_publishers.tp has an invalid key",
        ),
        ("[push]\nlisten = \"127.0.0.1:0\"\n", "push.token is needed"),
        (
            "[push]\nlisten = \"0.0.0.0:0\"\ntoken = \"0123456789abcdef\"\n",
            "push.listen = 0.0.0.0:0 is not loopback",
        ),
        (
            "[pusher]\ntp = \"http://127.0.0.1:1/\"\n",
            "pusher.tp is refused",
        ),
        (
            "[gateway]\nread_timeout_secs = 0\n",
            "gateway.read_timeout_secs = 0 is out of range",
        ),
        (
            "[gateway]\nmax_body = 0\n",
            "gateway.max_body = 0 is out of range",
        ),
        (
            "[gateway]\nlisten_addr = 1\n",
            "unknown key `gateway.listen_addr`",
        ),
        (
            "[authorized_publishers]\ntp = [\"02\"]\n",
            "authorized_publishers.tp has an invalid key",
        ),
        ("replication = 0\n", "replication = 0 is out of range"),
        ("replication = 1000\n", "replication = 1000 is out of range"),
        ("ttl_secs = 0\n", "ttl_secs = 0 is out of range"),
        ("max_value_len = 0\n", "max_value_len = 0 is out of range"),
        (
            "max_value_len = 1000000000\n",
            "max_value_len = 1000000000 is out of range",
        ),
        (
            "http_listen = \"127.0.0.1:0\"\n",
            "unknown key `http_listen`",
        ),
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
fn gateway_listen_from_the_file_and_a_clean_exit_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidecar.toml");
    // 192.0.2.1 (TEST-NET-1) is never a local address: binding it fails, so a start
    // proves which address was used.
    let write = |http: &str| {
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\nport = 0\n[gateway]\nlisten = {http:?}\n",
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
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/config/dht-sidecar.toml"
    );
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

/// `--check`: the effective configuration as TOML (nothing started).
fn check(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("--check").args(args);
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

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/config/dht-sidecar.toml"
);

#[test]
fn every_key_is_documented_in_the_example_and_the_help() {
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    let help = String::from_utf8(Command::new(BIN).arg("--help").output().unwrap().stdout).unwrap();
    let keys = dht_node::settings::keys_of::<dmsg_plugin::settings::SidecarSettings>();
    assert!(keys.len() > 20, "{keys:?}");
    for key in &keys {
        // `section.key` is `key = ...` (maybe commented out) after `[section]`.
        let (section, name) = key.rsplit_once('.').unwrap_or(("", key.as_str()));
        let body = if section.is_empty() {
            example.split("\n[").next().unwrap().to_string()
        } else {
            example
                .split(&format!("\n[{section}]\n"))
                .nth(1)
                .unwrap_or_else(|| panic!("no [{section}] in the example"))
                .to_string()
        };
        let documented = body.lines().any(|l| {
            let l = l.trim_start_matches('#').trim_start();
            l.starts_with(&format!("{name} =")) || l == format!("[{name}]")
        }) || example.contains(&format!("\n[{key}]\n"));
        assert!(documented, "{key} is not in {EXAMPLE}");
        assert!(
            help.contains(&format!("  {key} = ")),
            "{key} is not in --help"
        );
    }
    // The example's values are the defaults it claims, and it parses.
    let (code, from_example, err) = check(&["--config", EXAMPLE], &[]);
    assert_eq!(code, 0, "{err}");
    let (code, defaults, err) = check(&[], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(from_example, defaults);
    assert!(
        defaults.contains("[gateway]\nlisten = \"127.0.0.1:9481\""),
        "{defaults}"
    );
}

#[test]
fn file_environment_and_flags_are_layered_in_that_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidecar.toml");
    std::fs::write(
        &config,
        "replication = 5\nttl_secs = 600\n[gateway]\nlisten = \"127.0.0.1:1001\"\n\
         [push]\nlisten = \"127.0.0.1:1002\"\ntoken = \"from-the-file-0123\"\n",
    )
    .unwrap();
    let file = config.to_str().unwrap();
    let (code, out, err) = check(
        &["--config", file, "--replication", "7"],
        &[
            ("DHT_REPLICATION", "6"),
            ("DHT_TTL_SECS", "700"),
            ("DHT_GATEWAY__LISTEN", "127.0.0.1:2001"),
            ("DHT_PUSH__TOKEN", "from-the-environment"),
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
    assert_eq!(v["gateway"]["listen"].as_str(), Some("127.0.0.1:2001"));
    assert_eq!(v["push"]["listen"].as_str(), Some("127.0.0.1:1002"));
    assert_eq!(v["push"]["token"].as_str(), Some("from-the-environment"));
    // --http is gateway.listen, over the environment.
    let (code, out, err) = check(
        &["--config", file, "--http", "127.0.0.1:3001"],
        &[("DHT_GATEWAY__LISTEN", "127.0.0.1:2001")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("listen = \"127.0.0.1:3001\""), "{out}");
    // A refused value names its key and the variable it came from.
    let (code, _, err) = check(
        &["--config", file],
        &[("DHT_GATEWAY__READ_TIMEOUT_SECS", "0")],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("gateway.read_timeout_secs = 0 is out of range")
            && err.contains("DHT_GATEWAY__READ_TIMEOUT_SECS"),
        "{err}"
    );
    // --check reads the key files too.
    std::fs::write(&config, "[mirror_keys]\ntp = \"/nonexistent/tp.key\"\n").unwrap();
    let (code, _, err) = check(&["--config", file], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("mirror_keys.tp: /nonexistent/tp.key"), "{err}");
    // An off-curve key is refused as a publisher.
    std::fs::write(
        &config,
        format!(
            "[authorized_publishers]\ndmsg = [\"02{}\"]\n",
            "00".repeat(32)
        ),
    )
    .unwrap();
    let (code, _, err) = check(&["--config", file], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("authorized_publishers.dmsg") && err.contains("not a point of its curve"),
        "{err}"
    );
}

#[test]
fn shell_completions_are_printed() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("dht-sidecar") && text.contains("data-dir"),
            "{shell}: {text}"
        );
    }
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
