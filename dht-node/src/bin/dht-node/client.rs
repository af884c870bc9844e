//! The client subcommands: `keygen`, `put`, `get`, `delete`, `peers`.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use dht_core::{MutableItem, PublicKey, SigningKey};
use dht_node::{GetMode, GetOutcome as Lookup, Node, NodeConfig, NodeMode};

use crate::cli::{NetArgs, SchemeArg, SignerArgs};
use crate::{code, Exit};

/// `put`: signs and publishes; exit 2 when no replica answered, 1 when all refused.
pub async fn put(
    net: NetArgs,
    signer: SignerArgs,
    seq: Option<u64>,
    value_file: Option<PathBuf>,
    allow_empty: bool,
) -> Result<()> {
    let (key, subject, salt) = signer_of(signer)?;
    let value = read_value(value_file.as_deref())?;
    if value.is_empty() && !allow_empty {
        let from = match value_file.as_deref() {
            Some(p) if p != Path::new("-") => p.display().to_string(),
            _ => "standard input".to_owned(),
        };
        bail!(
            "the value read from {from} is empty: refusing to publish it (pass \
             --allow-empty to publish an empty value; to delete, use `dht-node delete`)"
        );
    }
    let node = client(&net).await?;
    let seq = match seq {
        Some(s) => s,
        None => with_timeout(&net, node.get(subject, salt.as_bytes(), GetMode::Quorum(0)))
            .await?
            .seq()
            .map_or(1, |s| s + 1),
    };
    let item = MutableItem::sign(&key, subject, salt.into_bytes(), seq, value);
    let report = with_timeout(&net, node.put(item)).await?;
    println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    node.shutdown().await;
    if report.stored_on().is_empty() {
        return Err(no_replica(&report, "item"));
    }
    Ok(())
}

/// `get`: exit 0 found, 2 unreachable, 3 not found, 4 deleted.
pub async fn get(
    net: NetArgs,
    subject: String,
    salt: String,
    quorum: bool,
    raw: bool,
) -> Result<()> {
    let subject = parse_subject(&subject)?;
    let node = client(&net).await?;
    let mode = if quorum {
        GetMode::Quorum(0)
    } else {
        GetMode::First
    };
    let report = with_timeout(&net, node.get(subject, salt.as_bytes(), mode)).await;
    node.shutdown().await;
    let report = report?;
    if report.lookup == Lookup::Unreachable {
        return Err(Exit::error(
            code::UNREACHABLE,
            format!("no peer answered ({} asked)", report.asked),
        ));
    }
    if raw {
        use std::io::Write;
        if let Some(v) = report.value() {
            let mut out = std::io::stdout();
            out.write_all(v)?;
            out.flush()?;
        }
    } else {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    }
    match report.lookup {
        Lookup::NotFound => Err(Exit::error(code::NOT_FOUND, "not found")),
        Lookup::Deleted(_) => Err(Exit::error(code::DELETED, "deleted")),
        _ => Ok(()),
    }
}

/// `delete`: a signed tombstone.
pub async fn delete(net: NetArgs, signer: SignerArgs) -> Result<()> {
    let (key, subject, salt) = signer_of(signer)?;
    let node = client(&net).await?;
    let report = with_timeout(&net, node.delete(&key, subject, salt.as_bytes())).await?;
    println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    node.shutdown().await;
    if report.stored_on().is_empty() {
        return Err(no_replica(&report, "tombstone"));
    }
    Ok(())
}

/// `peers`: the full nodes that answered; exit 2 when none did.
pub async fn peers(net: NetArgs) -> Result<()> {
    let node = client(&net).await?;
    // The peers of a lookup answered; a peer added from --bootstrap (or learned) whose
    // dial or request failed is suspected and not listed.
    let answered: HashSet<_> = with_timeout(&net, node.closest_peers(dht_core::Target([0; 32])))
        .await
        .unwrap_or_default()
        .into_iter()
        .collect();
    let down: HashSet<_> = node.peers_down().into_iter().collect();
    let mut lines: Vec<String> = node
        .routing_table()
        .into_iter()
        .filter(|(peer, _)| !answered.is_empty() && !down.contains(peer))
        .map(|(peer, addrs)| {
            let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
            format!("{peer} {}", addrs.join(" "))
        })
        .collect();
    node.shutdown().await;
    if lines.is_empty() {
        return Err(Exit::error(code::UNREACHABLE, "no peer answered"));
    }
    lines.sort();
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

async fn with_timeout<T>(
    net: &NetArgs,
    f: impl std::future::Future<Output = Result<T, dht_node::NodeError>>,
) -> Result<T> {
    match tokio::time::timeout(Duration::from_secs(net.timeout), f).await {
        Err(_) | Ok(Err(dht_node::NodeError::Timeout)) => Err(Exit::error(
            code::UNREACHABLE,
            format!("timed out after {} s (--timeout)", net.timeout),
        )),
        Ok(r) => r.map_err(Into::into),
    }
}

/// A put or delete that no replica stored: exit 2 when none answered, 1 when refused.
fn no_replica(report: &dht_node::PutReport, what: &str) -> anyhow::Error {
    if report.rejected_by().is_empty() {
        Exit::error(
            code::UNREACHABLE,
            format!("no replica stored the {what}: none answered"),
        )
    } else {
        anyhow::anyhow!("no replica stored the {what}: rejected (see the report)")
    }
}

/// A client-mode node joined to the bootstrap peers.
async fn client(net: &NetArgs) -> Result<Node> {
    let mut config = NodeConfig {
        mode: NodeMode::Client,
        listen: Vec::new(),
        bootstrap: net.bootstrap.clone(),
        quic: false,
        ..NodeConfig::default()
    };
    config.lookup_timeout = Duration::from_secs(net.timeout.min(10));
    let node = Node::builder().config(config).build().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(net.timeout.min(10));
    while node.routing_table().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if node.routing_table().is_empty() {
        node.shutdown().await;
        return Err(Exit::error(
            code::UNREACHABLE,
            "could not reach any bootstrap peer",
        ));
    }
    Ok(node)
}

/// `keygen`: writes a secret key file (mode 0600), prints the public key.
pub fn keygen(scheme: SchemeArg, out: &Path) -> Result<()> {
    if out.exists() {
        bail!("{} already exists; not overwriting a key", out.display());
    }
    let key = match scheme {
        SchemeArg::Ed25519 => SigningKey::generate_ed25519(),
        SchemeArg::Secp256k1 => SigningKey::generate_secp256k1(),
    };
    std::fs::write(out, key.to_key_file()).with_context(|| format!("writing {}", out.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o600))?;
    }
    println!("{}", key.public_key());
    Ok(())
}

/// Reads a key file (see [`SigningKey::from_key_file`]).
pub fn read_key(path: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading key file {}", path.display()))?;
    SigningKey::from_key_file(&text).with_context(|| format!("{}: malformed key", path.display()))
}

/// A `--subject`: hex, on its curve.
fn parse_subject(s: &str) -> Result<PublicKey> {
    PublicKey::parse_strict(s).with_context(|| format!("--subject {s:?}"))
}

/// The signing key, subject and salt of a `put` or `delete`.
fn signer_of(signer: SignerArgs) -> Result<(SigningKey, PublicKey, String)> {
    let key = read_key(&signer.key)?;
    let subject = subject_or_own(signer.subject.as_deref(), &key)?;
    Ok((key, subject, signer.salt))
}

fn subject_or_own(subject: Option<&str>, key: &SigningKey) -> Result<PublicKey> {
    match subject {
        Some(s) => parse_subject(s),
        None => Ok(key.public_key()),
    }
}

fn read_value(path: Option<&Path>) -> Result<Vec<u8>> {
    match path {
        Some(p) if p != Path::new("-") => {
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))
        }
        _ => {
            let mut v = Vec::new();
            std::io::stdin()
                .read_to_end(&mut v)
                .context("reading standard input")?;
            Ok(v)
        }
    }
}
