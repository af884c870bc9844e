//! The configuration schema of a node, shared by `dht-node run` and `dht-sidecar` (which
//! adds its own sections): every key with its default and range, layered
//! file < environment < flags with [figment], validated at start with an error that names
//! the key and where its value came from.
//!
//! * file: TOML (`--config`), keys as in [`NodeSettings`];
//! * environment: `DHT_<KEY>` (upper case; a section's key as `DHT_<SECTION>__<KEY>`,
//!   e.g. `DHT_GATEWAY__LISTEN`); lists as `a,b` or `[a, b]`;
//! * flags: [`NodeFlags`], shared by both binaries.
//!
//! Unknown keys in the file or flags are refused (an unknown `DHT_*` variable is only
//! warned about: other programs' settings share the prefix), as are values out of range
//! (`replication = 0`, `ttl_secs = 0`, `max_value_len = 0`, ...).
//!
//! [`NodeSettings`] (the node's keys) is in `node.rs`; this file is the loader.

mod node;

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use node::{NodeFlags, NodeSettings, MAX_VALUE_LEN_LIMIT, NODE_KEYS, NODE_RENAMED};

/// Prefix of the environment variables (`DHT_DATA_DIR`, `DHT_GATEWAY__LISTEN`, ...).
pub const ENV_PREFIX: &str = "DHT_";

/// A configuration that could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The configuration file could not be read.
    #[error("reading {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A value does not parse, or has the wrong type.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A key the schema does not have.
    #[error("invalid configuration: unknown key `{key}`{from}{hint}")]
    UnknownKey {
        /// The key (`section.key` inside a section).
        key: String,
        /// Where it was set (` in FILE`, ` in environment variable DHT_...`).
        from: String,
        /// What it is called now, for a renamed key.
        hint: String,
    },
    /// A value out of its range or otherwise refused.
    #[error("invalid configuration: {key} {message}{from}")]
    Invalid {
        /// The key.
        key: String,
        /// Where it was set.
        from: String,
        /// What is wrong.
        message: String,
    },
}

/// A refused value: the key and what is wrong (see [`Schema::validate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The key (`section.key` inside a section).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl Invalid {
    /// A refusal of `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A configuration schema: defaults, validation, renamed keys.
pub trait Schema: Serialize + DeserializeOwned + Default {
    /// Checks every value; the first refusal names its key.
    fn validate(&self) -> Result<(), Invalid>;

    /// `(old key, new key)` of renamed keys, named in the unknown-key error.
    fn renamed() -> &'static [(&'static str, &'static str)] {
        &[]
    }
}

/// One documented key: its name, an example value (the default unless said) and what it
/// does. The help of both binaries lists them; a test checks that every key of the schema
/// is here and in the example files.
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    /// The key.
    pub key: &'static str,
    /// `key = <this>` in TOML.
    pub example: &'static str,
    /// What it does, default and range.
    pub doc: &'static str,
}

/// `value` within `min..=max`, else a refusal naming `key`.
pub fn in_range<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), Invalid> {
    if value < min || value > max {
        return Err(Invalid::new(
            key,
            format!("= {value} is out of range (expected {min} to {max})"),
        ));
    }
    Ok(())
}

/// A figment provider named after its origin (so errors say "command-line flags").
struct Named {
    name: &'static str,
    data: Serialized<serde_json::Value>,
}

impl Provider for Named {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.data.data()
    }
}

/// The layers of a configuration: defaults < `file` < `DHT_*` variables (but those in
/// `env_ignore`, lower case without the prefix, e.g. `config`) < `flags` (an object of
/// the keys given on the command line).
pub struct Layers<'a> {
    /// The TOML file, if any (it must exist).
    pub file: Option<&'a Path>,
    /// `DHT_*` variables that are not keys (they name the file).
    pub env_ignore: &'a [&'a str],
    /// The flags given, as an object of keys.
    pub flags: serde_json::Value,
}

/// A loaded configuration, and warnings for the log (unknown `DHT_*` variables).
#[derive(Debug)]
pub struct Loaded<T> {
    /// The validated settings.
    pub value: T,
    /// To log once logging is set up.
    pub warnings: Vec<String>,
}

/// Loads, checks for unknown keys and validates a configuration.
pub fn load<T: Schema>(layers: Layers<'_>) -> Result<Loaded<T>, SettingsError> {
    let mut figment = Figment::new().merge(Named {
        name: "the defaults",
        data: Serialized::defaults(
            serde_json::to_value(T::default()).map_err(|e| SettingsError::Parse(e.to_string()))?,
        ),
    });
    if let Some(path) = layers.file {
        std::fs::metadata(path)
            .and_then(|m| {
                if m.is_file() {
                    Ok(())
                } else {
                    Err(std::io::Error::other("not a file"))
                }
            })
            .map_err(|source| SettingsError::File {
                path: path.to_owned(),
                source,
            })?;
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment
        .merge(
            Env::prefixed(ENV_PREFIX)
                .split("__")
                .ignore(layers.env_ignore),
        )
        .merge(Named {
            name: "command-line flags",
            data: Serialized::defaults(layers.flags),
        });
    let value: T = figment.extract().map_err(|e| parse_error(&figment, e))?;
    let warnings = check_unknown::<T>(&figment, &value)?;
    value.validate().map_err(|e| SettingsError::Invalid {
        from: origin(&figment, &e.key),
        key: e.key,
        message: e.message,
    })?;
    Ok(Loaded { value, warnings })
}

/// Where `key` was set: ` (in FILE)`, ` (in environment variable DHT_...)`, ` (in
/// command-line flags)`; empty for a default.
fn origin(figment: &Figment, key: &str) -> String {
    // A key inside a map (authorized_publishers.tp) is found at its deepest known level.
    let mut path = key.to_owned();
    loop {
        if let Some(md) = figment.find_metadata(&path) {
            return describe(md, &path);
        }
        match path.rsplit_once('.') {
            Some((parent, _)) => path = parent.to_owned(),
            None => return String::new(),
        }
    }
}

fn describe(md: &Metadata, key: &str) -> String {
    if md.name == "the defaults" {
        return String::new();
    }
    match &md.source {
        Some(figment::Source::File(p)) => format!(" (in {})", p.display()),
        _ if md.name.contains("environment") => {
            let var = key.to_uppercase().replace('.', "__");
            format!(" (in environment variable {ENV_PREFIX}{var})")
        }
        _ => format!(" (in {})", md.name),
    }
}

fn parse_error(figment: &Figment, e: figment::Error) -> SettingsError {
    let messages: Vec<String> = e
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let from = e
                .metadata
                .as_ref()
                .map(|md| describe(md, &key))
                .unwrap_or_default();
            let from = if from.is_empty() && !key.is_empty() {
                origin(figment, &key)
            } else {
                from
            };
            if key.is_empty() {
                format!("{}{from}", e.kind)
            } else {
                format!("{key}{from}: {}", e.kind)
            }
        })
        .collect();
    SettingsError::Parse(messages.join("; "))
}

/// Every key given in the file or by flags must be one the schema keeps; unknown `DHT_*`
/// variables (other programs' settings, typos) are only warned about.
fn check_unknown<T: Schema>(figment: &Figment, value: &T) -> Result<Vec<String>, SettingsError> {
    let known = serde_json::to_value(value).map_err(|e| SettingsError::Parse(e.to_string()))?;
    let given: serde_json::Value = figment
        .extract()
        .map_err(|e| SettingsError::Parse(e.to_string()))?;
    let mut unknown = Vec::new();
    collect_unknown(&given, &known, "", &mut unknown);
    let mut warnings = Vec::new();
    for key in unknown {
        let from = origin(figment, &key);
        if from.contains("environment variable") {
            let var = from.trim().trim_start_matches("(in ").trim_end_matches(')');
            warnings.push(format!(
                "ignoring {var}: not a configuration key{}",
                renamed_hint::<T>(&key)
            ));
            continue;
        }
        let hint = renamed_hint::<T>(&key);
        return Err(SettingsError::UnknownKey { from, key, hint });
    }
    Ok(warnings)
}

fn renamed_hint<T: Schema>(key: &str) -> String {
    T::renamed()
        .iter()
        .find(|(old, _)| *old == key)
        .map(|(_, new)| format!(" (renamed: now `{new}`)"))
        .unwrap_or_default()
}

fn collect_unknown(
    given: &serde_json::Value,
    known: &serde_json::Value,
    at: &str,
    out: &mut Vec<String>,
) {
    let (serde_json::Value::Object(given), serde_json::Value::Object(known)) = (given, known)
    else {
        return;
    };
    for (k, v) in given {
        let path = if at.is_empty() {
            k.clone()
        } else {
            format!("{at}.{k}")
        };
        match known.get(k) {
            None => out.push(path),
            Some(kv) => collect_unknown(v, kv, &path, out),
        }
    }
}

/// The keys of a schema's defaults (sections as `section.key`), for documentation tests.
pub fn keys_of<T: Schema>() -> Vec<String> {
    fn walk(v: &serde_json::Value, at: &str, out: &mut Vec<String>) {
        if let serde_json::Value::Object(m) = v {
            for (k, v) in m {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                if v.is_object() && !v.as_object().is_some_and(|o| o.is_empty()) {
                    walk(v, &path, out);
                } else {
                    out.push(path);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &serde_json::to_value(T::default()).unwrap_or_default(),
        "",
        &mut out,
    );
    out
}

/// The help text listing `keys` (for `--help`).
pub fn keys_help(keys: &[KeyDoc]) -> String {
    let mut out = String::new();
    for k in keys {
        let line = format!("  {} = {}", k.key, k.example);
        if line.len() < 39 {
            out.push_str(&format!("{line:<40}{}\n", k.doc));
        } else {
            out.push_str(&format!("{line}\n{:<40}{}\n", "", k.doc));
        }
    }
    out
}

/// Both binaries' settings printed by `--check`: TOML of the effective values.
pub fn to_toml<T: Serialize>(value: &T) -> String {
    toml::to_string_pretty(value).unwrap_or_else(|e| format!("# not printable: {e}\n"))
}
