//! The visor client: transports by edge, services by visor and the DMSG entry of a key,
//! from the DHT first and the HTTP discoveries as fallback (v3, then v2 on 404), within a
//! time budget. Every answer says which source gave it.

use std::time::Duration;

use dht_core::{PublicKey, SALT_DMSG, SALT_SERVICES, SALT_TRANSPORTS};
use dht_node::{GetMode, GetOutcome, Node};
use serde::de::DeserializeOwned;
use tracing::debug;

use crate::formats::{ServiceEntry, TransportEntry};

/// Who answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The DHT (a value, or a tombstone meaning "none").
    Dht,
    /// The HTTP discovery's v3 endpoint.
    HttpV3,
    /// The HTTP discovery's v2 endpoint.
    HttpV2,
    /// The HTTP discovery (DMSG or service discovery).
    Http,
}

/// An answer and its source.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer<T> {
    /// The data.
    pub value: T,
    /// Who gave it.
    pub source: Source,
}

/// Why a lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum VisorError {
    /// Neither the DHT nor HTTP answered within the budget.
    #[error("no source answered within {0:?}")]
    Budget(Duration),
    /// No HTTP discovery configured and the DHT had nothing.
    #[error("not in the DHT and no HTTP discovery configured")]
    NoFallback,
    /// The HTTP discovery failed.
    #[error("http discovery: {0}")]
    Http(String),
    /// A value could not be parsed.
    #[error("malformed value from {from:?}: {message}")]
    Malformed {
        /// Where it came from.
        from: Source,
        /// What was wrong.
        message: String,
    },
}

/// HTTP fallbacks and the time budget.
#[derive(Debug, Clone)]
pub struct VisorClientConfig {
    /// Transport discovery base URL.
    pub transport_discovery: Option<String>,
    /// Service discovery base URL.
    pub service_discovery: Option<String>,
    /// DMSG discovery base URL.
    pub dmsg_discovery: Option<String>,
    /// Total time for one lookup.
    pub budget: Duration,
    /// Share of the budget the DHT gets before falling back.
    pub dht_share: f64,
}

impl Default for VisorClientConfig {
    fn default() -> Self {
        VisorClientConfig {
            transport_discovery: None,
            service_discovery: None,
            dmsg_discovery: None,
            budget: Duration::from_secs(5),
            dht_share: 0.5,
        }
    }
}

/// Reads Skywire data for a visor.
pub struct VisorClient {
    node: Option<Node>,
    config: VisorClientConfig,
    http: reqwest::Client,
}

enum DhtAnswer {
    Value(Vec<u8>),
    Deleted,
    Nothing,
}

impl VisorClient {
    /// A client reading through `node` (a client-mode node, or None for HTTP only).
    pub fn new(node: Option<Node>, config: VisorClientConfig) -> Self {
        VisorClient {
            node,
            config,
            http: reqwest::Client::new(),
        }
    }

    async fn read_dht(&self, subject: PublicKey, salt: &[u8]) -> DhtAnswer {
        let Some(node) = &self.node else {
            return DhtAnswer::Nothing;
        };
        let share = self.config.budget.mul_f64(self.config.dht_share);
        match tokio::time::timeout(share, node.get(subject, salt, GetMode::First)).await {
            Ok(Ok(r)) => match r.lookup {
                GetOutcome::Found(f) => {
                    DhtAnswer::Value(f.item.value().map(|v| v.to_vec()).unwrap_or_default())
                }
                GetOutcome::Deleted(_) => DhtAnswer::Deleted,
                _ => DhtAnswer::Nothing,
            },
            Ok(Err(e)) => {
                debug!(error = %e, "DHT read failed");
                DhtAnswer::Nothing
            }
            Err(_) => DhtAnswer::Nothing,
        }
    }

    /// The DHT's answer, when it has one: a value (`parse`d) or a tombstone (`deleted`).
    /// `None` when the DHT holds nothing (or there is no node): the caller falls back to
    /// HTTP.
    async fn answer_from_dht<T>(
        &self,
        subject: PublicKey,
        salt: &[u8],
        parse: impl FnOnce(Vec<u8>) -> Result<T, VisorError>,
        deleted: impl FnOnce() -> T,
    ) -> Result<Option<Answer<T>>, VisorError> {
        let value = match self.read_dht(subject, salt).await {
            DhtAnswer::Value(v) => parse(v)?,
            DhtAnswer::Deleted => deleted(),
            DhtAnswer::Nothing => return Ok(None),
        };
        Ok(Some(Answer {
            value,
            source: Source::Dht,
        }))
    }

    async fn http_get(
        &self,
        url: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Vec<u8>>, VisorError> {
        let fut = async {
            let r = self
                .http
                .get(url)
                .send()
                .await
                .map_err(|e| VisorError::Http(e.to_string()))?;
            if r.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !r.status().is_success() {
                return Err(VisorError::Http(format!("{url}: {}", r.status())));
            }
            Ok(Some(
                r.bytes()
                    .await
                    .map_err(|e| VisorError::Http(e.to_string()))?
                    .to_vec(),
            ))
        };
        tokio::time::timeout_at(deadline, fut)
            .await
            .map_err(|_| VisorError::Budget(self.config.budget))?
    }

    fn parse<T: DeserializeOwned>(bytes: &[u8], source: Source) -> Result<T, VisorError> {
        serde_json::from_slice(bytes).map_err(|e| VisorError::Malformed {
            from: source,
            message: e.to_string(),
        })
    }

    /// The full transport list of an edge.
    pub async fn transports_by_edge(
        &self,
        edge: PublicKey,
    ) -> Result<Answer<Vec<TransportEntry>>, VisorError> {
        let deadline = tokio::time::Instant::now() + self.config.budget;
        let dht = self.answer_from_dht(
            edge,
            SALT_TRANSPORTS,
            |v| Self::parse(&v, Source::Dht),
            Vec::new,
        );
        if let Some(answer) = dht.await? {
            return Ok(answer);
        }
        let base = self
            .config
            .transport_discovery
            .as_deref()
            .ok_or(VisorError::NoFallback)?;
        if let Some(v) = self
            .http_get(&format!("{base}/v3/transports/edge:{edge}"), deadline)
            .await?
        {
            return Ok(Answer {
                value: Self::parse(&v, Source::HttpV3)?,
                source: Source::HttpV3,
            });
        }
        // An older transport discovery without v3: retry on v2.
        let value = match self
            .http_get(&format!("{base}/transports/edge:{edge}"), deadline)
            .await?
        {
            Some(v) => Self::parse(&v, Source::HttpV2)?,
            None => Vec::new(),
        };
        Ok(Answer {
            value,
            source: Source::HttpV2,
        })
    }

    /// The full service list of a visor.
    pub async fn services_by_visor(
        &self,
        visor: PublicKey,
    ) -> Result<Answer<Vec<ServiceEntry>>, VisorError> {
        let deadline = tokio::time::Instant::now() + self.config.budget;
        let dht = self.answer_from_dht(
            visor,
            SALT_SERVICES,
            |v| Self::parse(&v, Source::Dht),
            Vec::new,
        );
        if let Some(answer) = dht.await? {
            return Ok(answer);
        }
        let base = self
            .config
            .service_discovery
            .as_deref()
            .ok_or(VisorError::NoFallback)?;
        let all: Vec<ServiceEntry> = match self
            .http_get(&format!("{base}/api/services"), deadline)
            .await?
        {
            Some(v) => Self::parse(&v, Source::Http)?,
            None => Vec::new(),
        };
        let prefix = format!("{visor}:");
        Ok(Answer {
            value: all
                .into_iter()
                .filter(|s| s.address.starts_with(&prefix))
                .collect(),
            source: Source::Http,
        })
    }

    /// The DMSG entry of a key, as raw JSON (None when there is none).
    pub async fn dmsg_entry(&self, pk: PublicKey) -> Result<Answer<Option<Vec<u8>>>, VisorError> {
        let deadline = tokio::time::Instant::now() + self.config.budget;
        if let Some(answer) = self
            .answer_from_dht(pk, SALT_DMSG, |v| Ok(Some(v)), || None)
            .await?
        {
            return Ok(answer);
        }
        let base = self
            .config
            .dmsg_discovery
            .as_deref()
            .ok_or(VisorError::NoFallback)?;
        Ok(Answer {
            value: self
                .http_get(&format!("{base}/dmsg-discovery/entry/{pk}"), deadline)
                .await?,
            source: Source::Http,
        })
    }
}
