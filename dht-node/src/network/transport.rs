//! The swarm: TCP (noise, yamux) and optionally QUIC, the combined behaviour (block
//! list, kad under [`KAD_PROTOCOL`], identify, ping, the item protocol), and listening.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::time::Duration;

use futures::StreamExt;
use libp2p::kad;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{allow_block_list, identify, identity, ping, Multiaddr, Swarm};

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::Transport as _;
use libp2p::PeerId;

use crate::bandwidth::{Metered, ProtocolBytes};
use crate::config::{NodeConfig, NodeMode};
use crate::kad_records::ItemRecordStore;
use crate::metrics::Metrics;
use crate::protocol::{ItemCodec, ITEM_PROTOCOL, ITEM_PROTOCOL_CODED, KAD_PROTOCOL};
use crate::NodeError;

/// How often connected peers are pinged (`/ipfs/ping/1.0.0`): a pong clears a
/// suspicion, a missed one closes the connection. Both ends of every connection ping,
/// and pings are most of what a quiet network does: a 100-node network keeps 4,950
/// warm connections, so a ping a minute cost it about 0.05 cores. A peer that crashed
/// or whose socket closed is seen at once (the connection fails), and a request that
/// fails or misses its deadline suspects its peer at once, so the ping only catches
/// peers that vanished silently while nobody asked them anything (within three minutes
/// and the ping timeout). Each node pings at its own interval, within a fifth of this
/// (see [`ping_interval`]).
pub(super) const PING_INTERVAL: Duration = Duration::from_secs(180);

/// How often identify repeats itself on a connection (its first exchange happens when
/// the connection opens): libp2p's five minutes would be one exchange per connection
/// every five minutes in a quiet network, and a peer's protocols and addresses change
/// only when it restarts, which opens new connections.
const IDENTIFY_INTERVAL: Duration = Duration::from_secs(3600);

/// Item-protocol streams one connection may have open at once (each may buffer up to
/// one frame, so this bounds a peer's share of memory).
const MAX_STREAMS_PER_CONNECTION: usize = 32;

/// How long listeners may take to report their addresses.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The combined behaviour of a node.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(super) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(super) gate: super::gate::Gate,
    pub(super) kad: kad::Behaviour<ItemRecordStore>,
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
    pub(super) items: request_response::Behaviour<ItemCodec>,
}

/// Builds the swarm.
pub(crate) fn build_swarm(
    keypair: identity::Keypair,
    config: &NodeConfig,
    metrics: &Metrics,
) -> Result<Swarm<Behaviour>, NodeError> {
    let local_id = keypair.public().to_peer_id();
    let mut kad_config = kad::Config::new(KAD_PROTOCOL);
    kad_config
        .set_replication_factor(NonZeroUsize::new(config.replication).unwrap_or(NonZeroUsize::MIN))
        .set_parallelism(NonZeroUsize::new(config.parallelism).unwrap_or(NonZeroUsize::MIN))
        .set_kbucket_size(NonZeroUsize::new(config.bucket_size).unwrap_or(kad::K_VALUE))
        .set_query_timeout(config.lookup_timeout)
        // Items travel in this project's own protocol; kad serves them read-only as
        // records (see `kad_records`) and stores none itself: disable the record jobs.
        .set_replication_interval(None)
        .set_publication_interval(None)
        .set_record_ttl(None)
        .set_provider_publication_interval(None)
        // Inbound PUT_VALUE records are validated and stored by `on_kad_put`.
        .set_record_filtering(kad::StoreInserts::FilterBoth)
        // A record is one encoded item: let the largest item through in both directions.
        .set_max_packet_size(config.max_message_len())
        // The node runs its own periodic bootstrap (see `Node::join`), only when it knows
        // peers: kad's would warn "No known peers" on a lone bootstrap node.
        .set_periodic_bootstrap_interval(None);
    let max_message_len = config.max_message_len();
    let traffic = metrics.item_protocol_bytes.clone();
    let (forms, saved) = (
        metrics.put_value_forms.clone(),
        metrics.put_value_bytes_saved.clone(),
    );
    let mode = config.mode;
    let idle = config.idle_connection_timeout;
    let request_timeout = config.request_timeout;

    let behaviour = move |key: &identity::Keypair| {
        let kad = kad::Behaviour::with_config(local_id, ItemRecordStore::new(local_id), kad_config);
        let identify = identify::Behaviour::new(
            identify::Config::new("/skywire-dht/id/1.0.0".into(), key.public())
                .with_agent_version(format!("dht-node/{}", env!("CARGO_PKG_VERSION")))
                .with_interval(IDENTIFY_INTERVAL),
        );
        let support = match mode {
            NodeMode::Full => ProtocolSupport::Full,
            NodeMode::Client => ProtocolSupport::Outbound,
        };
        let mut protocols = vec![(ITEM_PROTOCOL_CODED, support)];
        if mode == NodeMode::Full {
            protocols.push((ITEM_PROTOCOL, ProtocolSupport::Inbound));
        }
        let items = request_response::Behaviour::with_codec(
            ItemCodec::new(max_message_len, &traffic).counting_forms(&forms, &saved),
            // Requests go out on the coded protocol alone: with one protocol proposed,
            // multistream-select sends the proposal and the request in one flight (lazy),
            // so a request costs one round trip. Offering two would cost a second: the
            // dialer must hear the first proposal accepted or refused before it may try
            // the next. 1.0.0 is still answered, for peers that speak only it.
            protocols,
            request_response::Config::default()
                .with_request_timeout(request_timeout)
                .with_max_concurrent_streams(MAX_STREAMS_PER_CONNECTION),
        );
        Behaviour {
            blocked: Default::default(),
            gate: super::gate::Gate::new(metrics.connections_throttled.clone()),
            kad,
            identify,
            ping: ping::Behaviour::new(ping::Config::new().with_interval(ping_interval())),
            items,
        }
    };

    let quic = config.quic;
    let bytes = ProtocolBytes::new(metrics.protocol_bytes.clone());
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| {
            transport(key, quic, bytes)
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
        })
        .map_err(|e| NodeError::Transport(e.to_string()))?
        .with_behaviour(behaviour)
        .map_err(|e| NodeError::Transport(e.to_string()))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(idle)
                // Every request opens a substream: propose its protocol and send the
                // request in the same flight instead of waiting a round trip for the
                // listener to confirm (every peer speaks every protocol this node opens).
                .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
        })
        .build();
    swarm.behaviour_mut().kad.set_mode(Some(match config.mode {
        NodeMode::Full => kad::Mode::Server,
        NodeMode::Client => kad::Mode::Client,
    }));
    Ok(swarm)
}

/// TCP (noise, yamux) and, with `quic`, QUIC; every substream's bytes counted under
/// its protocol.
fn transport(
    key: &identity::Keypair,
    quic: bool,
    bytes: ProtocolBytes,
) -> Result<Metered<Boxed<(PeerId, StreamMuxerBox)>>, libp2p::noise::Error> {
    let tcp = libp2p::tcp::tokio::Transport::new(libp2p::tcp::Config::default().nodelay(true))
        .upgrade(libp2p::core::upgrade::Version::V1Lazy)
        .authenticate(libp2p::noise::Config::new(key)?)
        // Yamux frames written together (a request's stream opening, the request and
        // its FIN) leave in one noise frame and one TCP segment (see `coalesce`).
        .multiplex(super::coalesce::Coalesced(libp2p::yamux::Config::default()))
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    let transport = if quic {
        libp2p::quic::tokio::Transport::new(libp2p::quic::Config::new(key))
            .map(|(peer, connection), _| (peer, StreamMuxerBox::new(connection)))
            .or_transport(tcp)
            .map(|either, _| either.into_inner())
            .boxed()
    } else {
        tcp.boxed()
    };
    Ok(Metered::new(transport, bytes))
}

/// This node's ping interval: [`PING_INTERVAL`] give or take a fifth, drawn once. The
/// warm connections of a network open within seconds of each other, so with one shared
/// interval every connection would ping in the same few seconds of every interval (a
/// burst that delays whatever the nodes do then); with intervals that differ, the
/// pings spread out over the interval from the second round on.
fn ping_interval() -> Duration {
    use rand::Rng;
    PING_INTERVAL.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
}

/// Listens on `addrs` and waits until every listener reports an address, so callers
/// learn the real ports. Returns the addresses.
pub(crate) async fn listen(
    swarm: &mut Swarm<Behaviour>,
    addrs: &[Multiaddr],
) -> Result<Vec<Multiaddr>, NodeError> {
    let mut listeners = HashMap::new();
    for addr in addrs {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| NodeError::listen(addr, e))?;
        listeners.insert(id, addr.clone());
    }
    let mut listen_addrs = Vec::new();
    let deadline = tokio::time::Instant::now() + LISTEN_TIMEOUT;
    while !listeners.is_empty() {
        match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
            Ok(SwarmEvent::NewListenAddr {
                listener_id,
                address,
            }) => {
                listeners.remove(&listener_id);
                listen_addrs.push(address);
            }
            Ok(SwarmEvent::ListenerError { listener_id, error })
            | Ok(SwarmEvent::ListenerClosed {
                listener_id,
                reason: Err(error),
                ..
            }) => {
                // The OS cause stays the error's source.
                return Err(match listeners.get(&listener_id) {
                    Some(addr) => NodeError::Listen {
                        addr: addr.clone(),
                        source: error,
                    },
                    None => NodeError::Transport(format!("listener failed: {error}")),
                });
            }
            Ok(_) => {}
            Err(_) => return Err(NodeError::Transport("listeners did not start".into())),
        }
    }
    Ok(listen_addrs)
}
