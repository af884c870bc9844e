//! Put items bound for one peer share requests when several are ready at once. Up to
//! [`MAX_IN_FLIGHT`] put requests go to a peer unbatched, as soon as they are made (a
//! lone put never waits); an item made while that many are in flight waits for one of
//! them to end and then travels with the other waiting items in ONE request (the item
//! protocol's put request has always carried a list of items, answered one result per
//! item, as hand-offs use it). A burst of puts (a mirror publishing a batch of keys) then
//! costs one substream, its multistream negotiation and its frames per few items instead
//! of per item. What a replica did with each item is told to that item's put alone.

use std::collections::HashMap;

use libp2p::PeerId;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::node::Node;
use crate::protocol::{PutItem, PutResult, Request, Response};
use crate::report::ReplicaResult;

/// Put requests to one peer in flight before items wait to share one.
pub(crate) const MAX_IN_FLIGHT: usize = 4;
/// Most items in one request.
pub(crate) const MAX_ITEMS: usize = 64;
/// Most value bytes (as they travel) in one request, besides its first item.
pub(crate) const MAX_BYTES: usize = 256 * 1024;

/// What a replica did with one item: stored (`Ok`), or the put result to act on.
pub(crate) type ItemAnswer = Result<ReplicaResult, PutResult>;

type Waiting = (PutItem, oneshot::Sender<ItemAnswer>);

/// The put requests in flight, and the items waiting, per peer.
#[derive(Default)]
pub(crate) struct PutBatches {
    peers: Mutex<HashMap<PeerId, PeerQueue>>,
}

#[derive(Default)]
struct PeerQueue {
    in_flight: usize,
    waiting: Vec<Waiting>,
}

/// Bytes an item's value adds to a request, roughly.
fn size(p: &PutItem) -> usize {
    p.coded
        .as_ref()
        .map_or_else(|| p.item.value().map_or(0, |v| v.len()), |w| w.wire_len())
        + 200
}

/// Takes the next request's items from the waiting ones.
fn take(waiting: &mut Vec<Waiting>) -> Vec<Waiting> {
    let mut bytes = 0;
    let mut n = 0;
    for (p, _) in waiting.iter() {
        let s = size(p);
        if n > 0 && (n >= MAX_ITEMS || bytes + s > MAX_BYTES) {
            break;
        }
        bytes += s;
        n += 1;
    }
    waiting.drain(..n).collect()
}

impl Node {
    /// Sends one put item to `peer`, alone or with others waiting for the same peer,
    /// and returns what the peer did with it.
    pub(crate) async fn exchange_put(&self, peer: PeerId, put: PutItem) -> ItemAnswer {
        let (tx, rx) = oneshot::channel();
        let now = {
            let mut peers = self.inner.put_batches.peers.lock();
            let q = peers.entry(peer).or_default();
            if q.in_flight < MAX_IN_FLIGHT {
                q.in_flight += 1;
                Some(vec![(put, tx)])
            } else {
                q.waiting.push((put, tx));
                None
            }
        };
        if let Some(batch) = now {
            // Its own task: items that joined it are answered even if this put stops
            // waiting.
            let node = self.clone();
            tokio::spawn(async move { node.send_batches(peer, batch).await });
        }
        rx.await
            .unwrap_or_else(|_| Ok(ReplicaResult::Failed("put request dropped".into())))
    }

    /// Sends `batch` to `peer`, then the items left waiting for it, until none wait.
    async fn send_batches(&self, peer: PeerId, mut batch: Vec<Waiting>) {
        loop {
            let (items, answers): (Vec<PutItem>, Vec<_>) = batch.into_iter().unzip();
            if items.len() > 1 {
                self.metrics().put_items_batched.inc_by(items.len() as u64);
            }
            let results = self.put_request(peer, items).await;
            for (tx, r) in answers.into_iter().zip(results) {
                let _ = tx.send(r);
            }
            let mut peers = self.inner.put_batches.peers.lock();
            let Some(q) = peers.get_mut(&peer) else {
                return;
            };
            if q.waiting.is_empty() {
                q.in_flight -= 1;
                if q.in_flight == 0 {
                    peers.remove(&peer);
                }
                return;
            }
            batch = take(&mut q.waiting);
        }
    }

    /// One put request of `items` to `peer`: one answer per item.
    async fn put_request(&self, peer: PeerId, items: Vec<PutItem>) -> Vec<ItemAnswer> {
        let n = items.len();
        let all = |r: ReplicaResult| vec![Ok(r); n];
        let frame = match self
            .inner
            .client
            .send(peer, Request::put(items).into())
            .await
        {
            Ok(frame) => frame,
            Err(e) => return all(ReplicaResult::Failed(e.to_string())),
        };
        match Response::decode(frame, self.inner.client.limits()) {
            Ok(Response::Put(results)) => {
                let mut out: Vec<ItemAnswer> = results
                    .into_iter()
                    .take(n)
                    .map(|r| match r {
                        r @ PutResult::Stored(_) => Ok(r.into()),
                        r => Err(r),
                    })
                    .collect();
                out.resize_with(n, || {
                    Ok(ReplicaResult::Failed("no put result for the item".into()))
                });
                out
            }
            // A refusal of the whole request with a reason code (a frame over the limit
            // is refused from its header) is a rejection; anything else is a failure.
            Ok(Response::Refused(refusal)) => all(match refusal.reason() {
                Some(code) => ReplicaResult::Rejected {
                    code,
                    detail: refusal.detail,
                },
                None => ReplicaResult::Failed(format!("{}: {}", refusal.code, refusal.detail)),
            }),
            _ => all(ReplicaResult::Failed("unexpected response".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dht_core::{MutableItem, SigningKey};

    fn waiting(value_len: usize) -> Waiting {
        let key = SigningKey::generate_ed25519();
        let item = MutableItem::sign(&key, key.public_key(), "s", 1, vec![b'x'; value_len]);
        (
            PutItem::plain(item, Default::default()),
            oneshot::channel().0,
        )
    }

    #[test]
    fn a_request_takes_at_most_its_items_and_bytes_and_always_one() {
        let mut w: Vec<Waiting> = (0..100).map(|_| waiting(10)).collect();
        assert_eq!(take(&mut w).len(), MAX_ITEMS);
        assert_eq!(w.len(), 100 - MAX_ITEMS);
        // Bytes: 100 KB values, two to a request.
        let mut w: Vec<Waiting> = (0..5).map(|_| waiting(100 * 1024)).collect();
        assert_eq!(take(&mut w).len(), 2);
        // One item over the byte bound still goes, alone.
        let mut w: Vec<Waiting> = vec![waiting(MAX_BYTES + 1), waiting(10)];
        assert_eq!(take(&mut w).len(), 1);
        assert_eq!(take(&mut w).len(), 1);
        assert!(take(&mut w).is_empty());
    }
}
