//! The client half of a session that every Coordinator implementation shares: the lease clock,
//! the registry of live guards, and the routing of pushed events to subscribers and waiters.
//!
//! A backend (in-process hub, network client) owns the transport; it reports what it learns
//! through a [`SessionLink`]: renewals acknowledged, ports lost, tokens changed, events pushed.

use crate::types::{Event, NodeId, SessionConfig, Token};
use std::collections::HashMap;
use std::sync::atomic::{fence, AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};

/// One guard's shared state: the key, its current token, and whether it is lost.
#[derive(Debug)]
pub(crate) struct GuardState {
    pub(crate) key: Arc<str>,
    pub(crate) token: AtomicI64,
    lost: AtomicBool,
    /// Created by the first `lost()` waiter only: most guards are never waited on, and a
    /// notifier per guard (a watch channel before) cost more than the claim itself.
    lost_waiters: OnceLock<Notify>,
    pub(crate) released: AtomicBool,
}

impl GuardState {
    fn new(key: Arc<str>, token: Token) -> GuardState {
        GuardState {
            key,
            token: AtomicI64::new(token),
            lost: AtomicBool::new(false),
            lost_waiters: OnceLock::new(),
            released: AtomicBool::new(false),
        }
    }

    /// Use [`SessionLink::lose`], which also moves the session's loss epoch.
    fn mark_lost(&self) {
        if self.lost.swap(true, Ordering::SeqCst) {
            return;
        }
        // Pairs with the fence in `wait_lost`: either the waiter sees the flag, or this sees
        // the waiter's notifier (created before its fence) and wakes it.
        fence(Ordering::SeqCst);
        if let Some(n) = self.lost_waiters.get() {
            n.notify_waiters();
        }
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    pub(crate) async fn wait_lost(&self) {
        let n = self.lost_waiters.get_or_init(Notify::new);
        loop {
            // A `Notified` receives every `notify_waiters` from its creation on.
            let notified = n.notified();
            fence(Ordering::SeqCst);
            if self.lost.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

type Map<K, V> = hashbrown::HashMap<K, V>;

/// Reserves `key` for a claim by this node; see [`SessionLink::reserve`].
fn reserve_in(slots: &mut Map<Arc<str>, Slot>, key: &str) -> Result<(), Token> {
    match slots.get_mut(key) {
        Some(Slot::Claiming) => Err(0),
        Some(slot @ Slot::Held(_)) => {
            if let Slot::Held(w) = slot {
                if let Some(g) = w.upgrade().filter(|g| !g.is_lost()) {
                    return Err(g.token.load(Ordering::Acquire));
                }
            }
            *slot = Slot::Claiming;
            Ok(())
        }
        None => {
            slots.insert(Arc::from(key), Slot::Claiming);
            Ok(())
        }
    }
}

/// A granted key's slot becomes a live guard's (sharing the slot's key); a refused key's
/// reservation goes.
fn settle_in<E>(
    slots: &mut Map<Arc<str>, Slot>,
    key: &str,
    reply: Result<Token, E>,
) -> Result<Arc<GuardState>, E> {
    match reply {
        Ok(token) => Ok(match slots.get_key_value_mut(key) {
            Some((k, slot)) => {
                let state = Arc::new(GuardState::new(k.clone(), token));
                *slot = Slot::Held(Arc::downgrade(&state));
                state
            }
            None => {
                let k: Arc<str> = Arc::from(key);
                let state = Arc::new(GuardState::new(k.clone(), token));
                slots.insert(k, Slot::Held(Arc::downgrade(&state)));
                state
            }
        }),
        Err(e) => {
            unclaim(slots, key);
            Err(e)
        }
    }
}

/// A session's slots, locked.
pub(crate) struct Slots<'a>(MutexGuard<'a, Map<Arc<str>, Slot>>);

impl Slots<'_> {
    /// Settles one reserved key with the service's answer: a granted key's slot becomes a
    /// live guard's (sharing the slot's key), a refused key's reservation goes.
    pub(crate) fn settle<E>(
        &mut self,
        key: &str,
        reply: Result<Token, E>,
    ) -> Result<Arc<GuardState>, E> {
        settle_in(&mut self.0, key, reply)
    }
}

/// Drops this node's reservation of `key`, if it is still one (not a guard since).
fn unclaim(slots: &mut Map<Arc<str>, Slot>, key: &str) {
    if matches!(slots.get(key), Some(Slot::Claiming)) {
        slots.remove(key);
    }
}

/// A key this node holds, or is in the middle of claiming.
enum Slot {
    Claiming,
    Held(Weak<GuardState>),
}

/// Shared between a `Coordinator`, its guards and its backend.
pub struct SessionLink {
    node: NodeId,
    lease: Duration,
    margin: Duration,
    base: Instant,
    /// Nanoseconds after `base` until which this node may believe it owns its ports.
    believed_until: AtomicU64,
    closed: AtomicBool,
    /// Moves after every guard that becomes lost or released: see [`Self::loss_epoch`].
    losses: AtomicU64,
    slots: Mutex<Map<Arc<str>, Slot>>,
    subscribers: Mutex<Vec<(String, mpsc::UnboundedSender<Event>)>>,
    release_waiters: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
    /// Woken whenever `believed_until` moves, so that the watchdog re-arms.
    renewed: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for SessionLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionLink")
            .field("node", &self.node)
            .finish()
    }
}

impl SessionLink {
    /// A link for a session that has not been acknowledged yet: it believes in nothing until the
    /// backend reports the first renewal.
    pub fn new(node: NodeId, config: &SessionConfig) -> Arc<Self> {
        Arc::new(SessionLink {
            node,
            lease: config.lease,
            margin: config.margin.min(config.lease),
            base: Instant::now(),
            believed_until: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            losses: AtomicU64::new(0),
            slots: Mutex::new(Map::default()),
            subscribers: Mutex::new(Vec::new()),
            release_waiters: Mutex::new(HashMap::new()),
            renewed: Arc::new(tokio::sync::Notify::new()),
        })
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// The server acknowledged a renewal that the client sent at `sent_at`. The client may
    /// believe in its ports until `sent_at + lease - margin`: measured from the send time, since
    /// the server started its lease no earlier than that.
    pub fn renewed(&self, sent_at: Instant) {
        let until = self.nanos(sent_at + self.lease - self.margin);
        self.believed_until.fetch_max(until, Ordering::AcqRel);
        self.renewed.notify_waiters();
    }

    /// Instant until which this session believes it owns its ports.
    pub fn believed_until(&self) -> Instant {
        self.base + Duration::from_nanos(self.believed_until.load(Ordering::Acquire))
    }

    /// Whether the lease, as the client computes it, still holds now.
    pub fn lease_valid(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
            && self.nanos(Instant::now()) < self.believed_until.load(Ordering::Acquire)
    }

    /// Marks a guard lost (or, after its `released` flag, released), then moves the epoch.
    pub(crate) fn lose(&self, g: &GuardState) {
        g.mark_lost();
        self.losses.fetch_add(1, Ordering::AcqRel);
    }

    /// A number that moves after any guard of this session stops being valid other than by
    /// the lease running out. A guard found valid after reading epoch `e` stays valid while
    /// the epoch is still `e` and [`Self::lease_valid`] holds: a holder of many guards can
    /// re-check one by two reads of shared, cache-hot state instead of the guard's own.
    pub fn loss_epoch(&self) -> u64 {
        self.losses.load(Ordering::Acquire)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The ports named are no longer this node's (lease expired at the server, re-registration
    /// failed after a failover, or taken away): their guards resolve `lost()`.
    pub fn lost(&self, keys: &[String]) {
        // Slots stay until their guard goes, so that dropping it still sends UnRegPort (the
        // server ignores an UnRegPort for a port that is no longer the caller's).
        let slots = lock(&self.slots);
        for key in keys {
            if let Some(Slot::Held(weak)) = slots.get(key.as_str()) {
                if let Some(g) = weak.upgrade() {
                    self.lose(&g);
                }
            }
        }
    }

    /// Every guard is lost: the lease ran out on the client's clock, or the session ended.
    pub fn lose_all(&self) {
        for slot in lock(&self.slots).values() {
            if let Slot::Held(weak) = slot {
                if let Some(g) = weak.upgrade() {
                    self.lose(&g);
                }
            }
        }
    }

    /// The session is over for good (explicit close, or the backend gave up).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.lose_all();
        self.renewed.notify_waiters();
        lock(&self.subscribers).clear();
        lock(&self.release_waiters).clear();
    }

    /// After a failover the port was re-registered with a fresh, larger token.
    pub fn retoken(&self, key: &str, token: Token) {
        if let Some(Slot::Held(weak)) = lock(&self.slots).get(key) {
            if let Some(g) = weak.upgrade() {
                g.token.fetch_max(token, Ordering::AcqRel);
            }
        }
    }

    /// Keys this node holds now, with their tokens: what a backend re-registers after a failover.
    pub fn held(&self) -> Vec<(String, Token)> {
        lock(&self.slots)
            .iter()
            .filter_map(|(k, s)| match s {
                Slot::Held(w) => w
                    .upgrade()
                    .filter(|g| !g.is_lost())
                    .map(|g| (k.to_string(), g.token.load(Ordering::Acquire))),
                Slot::Claiming => None,
            })
            .collect()
    }

    /// A pushed event: wake release waiters, then hand it to every subscriber whose prefix
    /// matches. Subscribers that went away are dropped.
    pub fn event(&self, ev: Event) {
        if let Event::Released { key } = &ev {
            if let Some(waiters) = lock(&self.release_waiters).remove(key) {
                for w in waiters {
                    let _ = w.send(());
                }
            }
        }
        let mut subs = lock(&self.subscribers);
        subs.retain(|(prefix, tx)| {
            if ev.key().starts_with(prefix.as_str()) {
                tx.send(ev.clone()).is_ok()
            } else {
                !tx.is_closed()
            }
        });
    }

    pub(crate) fn subscribe(&self, prefix: &str) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.subscribers).push((prefix.to_owned(), tx));
        rx
    }

    pub(crate) fn wait_release(&self, key: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        lock(&self.release_waiters)
            .entry(key.to_owned())
            .or_default()
            .push(tx);
        rx
    }

    /// Reserves each key for a claim by this node, under one lock. Per key, `Err(token)` when
    /// this node already holds or is claiming it (token 0 while claiming, which includes a
    /// key repeated in `keys`): at most one guard per key per node.
    pub(crate) fn reserve(&self, keys: &[&str]) -> Vec<Result<(), Token>> {
        let mut slots = lock(&self.slots);
        keys.iter()
            .map(|&key| reserve_in(&mut slots, key))
            .collect()
    }

    /// [`reserve`](Self::reserve) for one key.
    pub(crate) fn reserve_one(&self, key: &str) -> Result<(), Token> {
        reserve_in(&mut lock(&self.slots), key)
    }

    /// Drops the reservations of a claim that failed as a whole.
    pub(crate) fn unreserve(&self, keys: &[&str]) {
        let mut slots = lock(&self.slots);
        for &key in keys {
            unclaim(&mut slots, key);
        }
    }

    /// The slots under one lock, to settle the keys of a claim (see [`Slots::settle`]).
    pub(crate) fn slots(&self) -> Slots<'_> {
        Slots(lock(&self.slots))
    }

    /// Removes the slot of a guard that is being released, if it still is that guard's.
    pub(crate) fn uninstall(&self, state: &Arc<GuardState>) -> bool {
        let mut slots = lock(&self.slots);
        // One lookup in the usual case, where the slot is this guard's.
        match slots.remove_entry(&*state.key) {
            Some((_, Slot::Held(w))) if w.as_ptr() == Arc::as_ptr(state) => true,
            Some((k, other)) => {
                slots.insert(k, other);
                false
            }
            None => false,
        }
    }

    /// Runs until the session closes: whenever the client-side lease end passes without a
    /// renewal, every guard is lost. This is what keeps a paused or partitioned node from
    /// believing in ports the server has already handed to someone else.
    pub(crate) async fn watchdog(weak: Weak<Self>) {
        loop {
            let Some(link) = weak.upgrade() else { return };
            if link.is_closed() {
                return;
            }
            let renewed = link.renewed.clone();
            let notified = renewed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let until = link.believed_until();
            let now = Instant::now();
            if now >= until {
                if link.believed_until.load(Ordering::Acquire) > 0 {
                    link.lose_all();
                }
                drop(link);
                notified.await;
            } else {
                drop(link);
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = notified => {}
                }
            }
        }
    }
}

/// Locks a std mutex, recovering from poisoning: every critical section here leaves the map
/// consistent, so a panic elsewhere must not wedge the session.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
