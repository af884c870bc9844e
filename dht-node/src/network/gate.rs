//! The connection gate: new inbound connections from the IP address of a banned peer
//! are let in at most one a second (a burst of two) while the ban lasts, and the rest
//! are dropped before the noise handshake. A banned flooder that redials at once then
//! costs this node an accept and a close per attempt instead of a handshake, while
//! honest peers behind the same address (a NAT) still get in.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};
use prometheus_client::metrics::counter::Counter;

use super::driver::ip_of;

/// New connections a throttled address may open per second.
const PER_SECOND: f64 = 1.0;
/// And at once.
const BURST: f64 = 2.0;
/// Addresses throttled at once; past it, a new one is not throttled.
const MAX_THROTTLED: usize = 4_096;

/// Why a connection was dropped before its handshake.
#[derive(Debug, thiserror::Error)]
#[error("{ip} is throttled: a peer there was banned")]
pub(crate) struct Throttled {
    ip: IpAddr,
}

/// One throttled address.
#[derive(Debug, Clone, Copy)]
struct Throttle {
    until: Instant,
    tokens: f64,
    last: Instant,
}

/// The gate behaviour.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    throttled: HashMap<IpAddr, Throttle>,
    /// Connections dropped before their handshake.
    dropped: Counter,
}

impl Gate {
    /// A gate counting the connections it drops in `dropped`.
    pub(crate) fn new(dropped: Counter) -> Self {
        Gate {
            throttled: HashMap::new(),
            dropped,
        }
    }

    /// Throttles new connections from `ip` for `time`.
    pub(crate) fn throttle(&mut self, ip: IpAddr, time: Duration) {
        let now = Instant::now();
        self.throttled.retain(|_, t| t.until > now);
        if self.throttled.len() >= MAX_THROTTLED && !self.throttled.contains_key(&ip) {
            return;
        }
        let t = self.throttled.entry(ip).or_insert(Throttle {
            until: now,
            tokens: BURST,
            last: now,
        });
        t.until = t.until.max(now + time);
    }

    /// Whether a new connection from `ip` may go on to its handshake now.
    fn admit(&mut self, ip: IpAddr, now: Instant) -> bool {
        let Some(t) = self.throttled.get_mut(&ip) else {
            return true;
        };
        if t.until <= now {
            self.throttled.remove(&ip);
            return true;
        }
        t.tokens = (t.tokens + now.duration_since(t.last).as_secs_f64() * PER_SECOND).min(BURST);
        t.last = now;
        if t.tokens >= 1.0 {
            t.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl NetworkBehaviour for Gate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        match ip_of(remote) {
            Some(ip) if !self.admit(ip, Instant::now()) => {
                self.dropped.inc();
                Err(ConnectionDenied::new(Throttled { ip }))
            }
            _ => Ok(()),
        }
    }

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_address_gets_one_connection_a_second_until_the_throttle_ends() {
        let mut gate = Gate::default();
        let (banned, other): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        gate.throttle(banned, Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!((0..100).filter(|_| gate.admit(banned, t0)).count(), 2);
        assert_eq!((0..100).filter(|_| gate.admit(other, t0)).count(), 100);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..100).filter(|_| gate.admit(banned, t1)).count(), 1);
        let t2 = t0 + Duration::from_secs(31);
        assert_eq!((0..100).filter(|_| gate.admit(banned, t2)).count(), 100);
    }
}
