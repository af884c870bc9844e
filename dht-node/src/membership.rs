//! The membership exchange: at each joining round (and each periodic bootstrap) a full
//! node asks a couple of its connected full nodes for every full node they know (one
//! members request each), and adds those it lacks to its routing table. In a network of
//! up to a few hundred full nodes (Skywire's DMSG servers), every routing table then
//! holds the whole membership, and the responsible set of any target is computed
//! locally: puts and gets go straight to the replicas, with no lookup (one hop).
//!
//! An answer only adds addresses: a member that does not exist or does not answer is
//! dialled by the warming step, fails, and is declared dead like any peer that went
//! away. Answers leave out the members the answerer holds down, and the asker skips
//! those it holds down itself: a node declared dead is not brought back by hearsay. Answers are bounded (`MAX_MEMBERS`), and the routing table's per-IP-range
//! bound applies to what they add.

use std::time::Duration;

use libp2p::PeerId;
use rand::seq::IteratorRandom;
use tracing::{debug, instrument};

use crate::network::{Client, Command};
use crate::protocol::{Request, Response};
use crate::state::NodeState;

/// Peers asked per round.
const ASKED_PER_ROUND: usize = 2;

/// Most members rounds one [`converge`] makes.
const MAX_CONVERGING_ROUNDS: usize = 8;

/// Pause between the rounds of one [`converge`].
const CONVERGING_PAUSE: Duration = Duration::from_secs(1);

/// Members rounds until one brings no new member (at most [`MAX_CONVERGING_ROUNDS`], a
/// second apart, and none once the routing table has no room left). A forming network's answers bring new members for a while (nodes still
/// joining, tables still filling); stopping at the first round that brought some would
/// leave the membership unknown, and every put paying a lookup, until the next periodic
/// round minutes later.
pub(crate) async fn converge(client: &Client, state: &NodeState, me: PeerId) {
    for round in 0..MAX_CONVERGING_ROUNDS {
        if round > 0 {
            tokio::time::sleep(CONVERGING_PAUSE).await;
        }
        if learn(client, state, me).await == 0 {
            return;
        }
        // A table without room (a full k-bucket, or more peers than one holds) is a
        // network too large for one hop: more rounds would only cost (at 1,000 nodes,
        // answers of a thousand members each, eight rounds a time per node).
        tokio::time::sleep(CONVERGING_PAUSE / 2).await;
        if !state.buckets_have_room() {
            return;
        }
    }
}

/// Asks up to [`ASKED_PER_ROUND`] connected routing-table peers for the full nodes they
/// know and adds the new ones to the routing table. Returns how many were added; once a
/// round's answers bring no new member, [`NodeState::membership_known`] may hold.
#[instrument(skip_all)]
pub(crate) async fn learn(client: &Client, state: &NodeState, me: PeerId) -> usize {
    let asked: Vec<PeerId> = {
        let connected = state.connected.read();
        state
            .view
            .snapshot()
            .into_keys()
            .filter(|p| connected.contains(p))
            .choose_multiple(&mut rand::thread_rng(), ASKED_PER_ROUND)
    };
    let mut added = 0;
    let mut answered = false;
    for peer in asked {
        let members = match client.request(peer, Request::Members).await {
            Ok(Response::Members(members)) => members,
            Ok(other) => {
                // A node of an older version refuses the request: it knows no members.
                debug!(%peer, ?other, "members request refused");
                continue;
            }
            Err(e) => {
                debug!(%peer, error = %e, "members request failed");
                continue;
            }
        };
        answered = true;
        let known = state.view.snapshot();
        for (member, addrs) in members {
            // A member this node holds down (suspected, or declared dead and out of
            // the table) stays out: the answerer may not have noticed yet, and adding
            // it back would give a dead node a replica slot again.
            if member == me || known.contains_key(&member) || state.liveness.is_down(&member) {
                continue;
            }
            added += 1;
            for addr in addrs {
                if client
                    .command(Command::AddPeer(member, addr))
                    .await
                    .is_err()
                {
                    return added;
                }
            }
        }
    }
    if added > 0 {
        debug!(added, "learned full nodes from the members exchange");
    } else if answered {
        // The peers asked know no full node this one lacks: the exchange converged.
        // (While answers still bring new members, a table without a full k-bucket
        // may only be a table still filling: a network of a thousand nodes is not
        // known whole from the first answers.)
        state.set_members_learned();
    }
    added
}
