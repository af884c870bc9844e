//! Runnable examples of the Skywire DHT (see the `[[example]]` targets):
//!
//! - `bootstrap_node`: a full node with its redb store, a bootstrap node for others;
//! - `local_network`: a local network with the DMSG-server plugin, a transport discovery
//!   feeding it through the mirror adapter, and the HTTP gateway serving its reads;
//! - `visor_lookup`: a visor looking an edge up, DHT first, HTTP discovery as fallback.
