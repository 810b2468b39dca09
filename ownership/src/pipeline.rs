//! Pipelines: many single-key calls written to the service together and answered in order,
//! each with its own result, as in Redis pipelining.
//!
//! A task that has many independent things to ask (claim these keys one by one, release those
//! guards, message a few owners) pays one queue hand-off, one write and one wake-up for the
//! lot instead of one each: on a busy client those per-call costs, not the server, bound how
//! many calls a second get through. Each call is still its own request with its own answer, so
//! one refused or failed call does not fail its neighbours (unlike a batch claim, which is one
//! request for many keys).

use crate::coordinator::{Claim, Coordinator, Guard, PipeReply, PipeRequest};
use crate::error::{OwnershipError, Result};
use crate::types::{validate_key, Owner, Token};
use bytes::Bytes;
use std::sync::Arc;

/// Calls gathered by [`Coordinator::pipeline`] and sent by [`run`](Pipeline::run).
///
/// ```no_run
/// # async fn f(c: keyward_ownership::Coordinator) -> keyward_ownership::Result<()> {
/// let mut p = c.pipeline();
/// for k in ["a/1", "a/2", "a/3"] {
///     p.claim(k);
/// }
/// for answer in p.run().await? {
///     if let Some(guard) = answer?.into_claim().and_then(|c| c.granted()) {
///         // ... the key is ours
/// #       drop(guard);
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Pipeline {
    coord: Coordinator,
    calls: Vec<Call>,
}

enum Call {
    Claim { key: String, notify: bool },
    Release(Guard),
    OwnerOf(String),
    Send(String, Bytes),
}

/// The answer to one call of a pipeline, in the order the calls were added.
#[derive(Debug)]
pub enum Answer {
    Claim(Claim),
    Released,
    Owner(Option<Owner>),
    Sent,
}

impl Answer {
    pub fn into_claim(self) -> Option<Claim> {
        match self {
            Answer::Claim(c) => Some(c),
            _ => None,
        }
    }

    pub fn into_owner(self) -> Option<Option<Owner>> {
        match self {
            Answer::Owner(o) => Some(o),
            _ => None,
        }
    }
}

/// What became of a call before anything was sent.
enum Slot {
    /// Answered here: a bad key, a key this node holds, a guard with nothing left to release.
    Ready(Result<Answer>),
    /// Sent; its answer is the next reply.
    Sent,
}

impl Pipeline {
    pub(crate) fn new(coord: Coordinator) -> Pipeline {
        Pipeline {
            coord,
            calls: Vec::new(),
        }
    }

    /// Claims one key (RegPort of one port), answered [`Answer::Claim`].
    pub fn claim(&mut self, key: impl Into<String>) -> &mut Self {
        self.claim_with(key, false)
    }

    /// As [`claim`](Self::claim), with notify-on-release when refused
    /// ([`Coordinator::claim_with`]).
    pub fn claim_with(&mut self, key: impl Into<String>, notify: bool) -> &mut Self {
        self.calls.push(Call::Claim {
            key: key.into(),
            notify,
        });
        self
    }

    /// Releases a guard (UnRegPort), answered [`Answer::Released`].
    pub fn release(&mut self, guard: Guard) -> &mut Self {
        self.calls.push(Call::Release(guard));
        self
    }

    /// Asks for a key's owner (QueryPort), answered [`Answer::Owner`].
    pub fn owner_of(&mut self, key: impl Into<String>) -> &mut Self {
        self.calls.push(Call::OwnerOf(key.into()));
        self
    }

    /// Sends a blob to a key's owner (SendMsg), answered [`Answer::Sent`].
    pub fn send(&mut self, key: impl Into<String>, payload: impl Into<Bytes>) -> &mut Self {
        self.calls.push(Call::Send(key.into(), payload.into()));
        self
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Sends every call and waits for all the answers, in the order of the calls. `Err` as a
    /// whole only when the session is closed or the connection failed; then no claim of the
    /// pipeline holds, and its releases are sent again once the session reconnects.
    pub async fn run(self) -> Result<Vec<Result<Answer>>> {
        let core = &self.coord.core;
        let link = &core.link;
        if link.is_closed() {
            return Err(OwnershipError::SessionClosed {
                node: core.node.to_string(),
            });
        }
        // Claims are reserved locally, as `Coordinator::claim` does (at most one guard per key
        // per node, also across calls of one pipeline), and guards retired, in call order: a
        // release followed by a claim of its key asks again, as the two calls one by one would.
        let mut slots = Vec::with_capacity(self.calls.len());
        let mut reqs = Vec::with_capacity(self.calls.len());
        for call in &self.calls {
            let slot = match call {
                Call::Claim { key, notify } => match validate_key(key) {
                    Err(e) => Slot::Ready(Err(e)),
                    Ok(()) => match link.reserve_one(key) {
                        Ok(()) => {
                            reqs.push(PipeRequest::Claim {
                                key,
                                notify: *notify,
                            });
                            Slot::Sent
                        }
                        Err(token) => mine(&self.coord, token),
                    },
                },
                Call::Release(g) => {
                    if g.retire() {
                        reqs.push(PipeRequest::Release { key: g.key() });
                        Slot::Sent
                    } else {
                        Slot::Ready(Ok(Answer::Released))
                    }
                }
                Call::OwnerOf(key) => match validate_key(key) {
                    Err(e) => Slot::Ready(Err(e)),
                    Ok(()) => {
                        reqs.push(PipeRequest::OwnerOf { key });
                        Slot::Sent
                    }
                },
                Call::Send(key, payload) => match validate_key(key) {
                    Err(e) => Slot::Ready(Err(e)),
                    Ok(()) => {
                        reqs.push(PipeRequest::Send {
                            key,
                            payload: payload.clone(),
                        });
                        Slot::Sent
                    }
                },
            };
            slots.push(slot);
        }
        let replies = if reqs.is_empty() {
            Vec::new()
        } else {
            match core.backend.pipeline(&reqs).await {
                Ok(r) if r.len() == reqs.len() => r,
                other => {
                    let mut asked = Vec::new();
                    let mut released = Vec::new();
                    for r in &reqs {
                        match r {
                            PipeRequest::Claim { key, .. } => asked.push(*key),
                            PipeRequest::Release { key } => released.push(Arc::from(*key)),
                            _ => {}
                        }
                    }
                    link.unreserve(&asked);
                    // The releases may not have arrived: queue them again, ahead of anything
                    // this session sends later (a second UnRegPort of a port is harmless).
                    if !released.is_empty() {
                        core.backend.release_in_background(&released);
                    }
                    return Err(match other {
                        Err(e) => e,
                        Ok(r) => OwnershipError::Protocol(format!(
                            "pipeline of {} requests answered with {} replies",
                            reqs.len(),
                            r.len()
                        )),
                    });
                }
            }
        };

        // One pass in call order; claims settle under one lock of the session's slots: a
        // granted key becomes a guard, a refused or failed one leaves its reservation.
        let mut out = Vec::with_capacity(slots.len());
        let mut granted = false;
        {
            let mut held = link.slots();
            let mut replies = reqs.iter().zip(replies);
            for slot in slots {
                let answer = match slot {
                    Slot::Ready(a) => a,
                    Slot::Sent => match replies.next() {
                        Some((PipeRequest::Claim { key, .. }, reply)) => {
                            let outcome = match reply {
                                Ok(PipeReply::Claimed(Ok(token))) => Ok(token),
                                Ok(PipeReply::Claimed(Err(owner))) => Err(Ok(owner)),
                                Ok(_) => Err(Err(OwnershipError::Protocol(
                                    "claim answered with another reply".into(),
                                ))),
                                Err(e) => Err(Err(e)),
                            };
                            match held.settle(key, outcome) {
                                Ok(state) => {
                                    granted = true;
                                    Ok(Answer::Claim(Claim::Granted(Guard {
                                        state,
                                        core: core.clone(),
                                    })))
                                }
                                Err(Ok(owner)) => Ok(Answer::Claim(Claim::OwnedBy(owner))),
                                Err(Err(e)) => Err(e),
                            }
                        }
                        Some((_, Ok(PipeReply::Released))) => Ok(Answer::Released),
                        Some((_, Ok(PipeReply::Owner(o)))) => Ok(Answer::Owner(o)),
                        Some((_, Ok(PipeReply::Sent))) => Ok(Answer::Sent),
                        Some((_, Ok(PipeReply::Claimed(_)))) => Err(OwnershipError::Protocol(
                            "call answered with a claim reply".into(),
                        )),
                        Some((_, Err(e))) => Err(e),
                        None => Err(OwnershipError::Protocol("pipeline answers missing".into())),
                    },
                };
                out.push(answer);
            }
        }
        // Checked after the guards exist, so a lease that ran out meanwhile is not missed.
        if granted && !link.lease_valid() {
            for a in &out {
                if let Ok(Answer::Claim(Claim::Granted(g))) = a {
                    link.lose(&g.state);
                }
            }
        }
        Ok(out)
    }
}

/// A key this node holds (or is claiming) is answered here, as `Coordinator::claim` does.
fn mine(coord: &Coordinator, token: Token) -> Slot {
    Slot::Ready(Ok(Answer::Claim(Claim::OwnedBy(coord.me(token)))))
}
