//! One cooldown per API key, so that a 429 makes one retry wave, not a storm.
//!
//! The upstream's capacity belongs to the company behind an API key. When one request for
//! a key gets a 429, every other request for that key would get one too; so the key
//! "cools down" and all its requests wait. When the cooldown ends, exactly one request
//! goes first as a *probe*; the rest wait for its result. If the probe is not refused
//! (any non-429 answer) the gate opens for all; if it gets a 429 a new cooldown starts.
//!
//! The state of each key is a small state machine in a [`tokio::sync::watch`] channel:
//! every transition is made under the channel's lock and wakes every waiter, and a waiter
//! marks the version it has seen in the same step as reading the state, so no wake-up is
//! lost. No lock is held across an `.await`. Keys are whatever the caller uses to tell API keys
//! apart (a fingerprint, never the key itself).
//!
//! State is kept only for keys that met a 429: a key with no entry is open, and its
//! permits hold no gate until one of them reports a 429. [`Cooldowns::evict_idle`] drops
//! the entries that say nothing any more (open, or cooled down long ago) and that no
//! permit holds, so keys that clients invent cannot grow the map without bound.

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::watch;
use tokio::time::Instant;

/// The cooldowns of all keys.
pub struct Cooldowns<K> {
    gates: Arc<DashMap<K, Arc<Gate>>>,
}

/// The right to send one request for a key, from [`Cooldowns::acquire`].
///
/// Report the request's result with [`succeeded`](Self::succeeded) (any answer but a 429)
/// or [`rate_limited`](Self::rate_limited). A probe permit dropped without a report (an
/// error, a cancelled request) gives the probe role to the next waiter.
#[must_use = "report the request's result, or the probe role passes to another request"]
pub struct Permit<K: Eq + Hash + Clone = crate::keys::apikey::KeyId> {
    /// The key's gate; `None` for a key that has never cooled down (it is open).
    gate: Option<Arc<Gate>>,
    /// `Some(id)` while this permit is the key's unreported probe.
    probe: Option<u64>,
    /// Where the key's gate is made if this permit reports a 429.
    gates: Arc<DashMap<K, Arc<Gate>>>,
    key: K,
}

/// The state of one key.
struct Gate {
    phase: watch::Sender<Phase>,
    /// Numbers probes, so that only the current probe's report can open the gate.
    next_probe: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Requests go freely.
    Open,
    /// Requests wait until `until`. Once that has passed, the cooldown is over but the gate
    /// is not open yet: the first request to see it becomes the probe.
    Cooling { until: Instant },
    /// The probe with this id is in flight; other requests wait for its result.
    Probing { id: u64 },
}

/// How far ahead "forever" is when a wait overflows the clock (as tokio does it: ~30 years).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

// === impl Cooldowns ===

impl<K: Eq + Hash + Clone> Default for Cooldowns<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Clone> Cooldowns<K> {
    /// No key cooling down.
    pub fn new() -> Self {
        Self {
            gates: Arc::new(DashMap::new()),
        }
    }

    fn permit(&self, key: &K, gate: Option<Arc<Gate>>, probe: Option<u64>) -> Permit<K> {
        Permit {
            gate,
            probe,
            gates: Arc::clone(&self.gates),
            key: key.clone(),
        }
    }

    /// Waits until a request for `key` may go.
    ///
    /// An open key lets the caller through at once. While the key is cooling down, every
    /// caller waits for the cooldown's end (however often it is extended). Then exactly one
    /// caller goes as the probe ([`Permit::is_probe`]); the others wait for the probe's
    /// report. Cancel-safe: dropping the future while it waits leaves no trace.
    pub async fn acquire(&self, key: &K) -> Permit<K> {
        let Some(gate) = self.existing(key) else {
            return self.permit(key, None, None);
        };
        let mut changes = gate.phase.subscribe();
        loop {
            // Reading the phase marks its version seen, in one step: any transition after
            // this read makes `changed()` return at once, so no wake-up is lost. Most
            // arrivals only read; taking the probe role is the one write.
            let phase = *changes.borrow_and_update();
            let now = Instant::now();
            match phase {
                Phase::Open => return self.permit(key, Some(gate), None),
                Phase::Cooling { until } if until > now => {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        _ = changes.changed() => {}
                    }
                }
                Phase::Cooling { .. } => {
                    if let Some(id) = gate.take_probe(now) {
                        return self.permit(key, Some(gate), Some(id));
                    }
                    // Another request changed the phase first: read it again.
                }
                // The sender lives in `gate`, which we hold, so `changed` cannot fail.
                Phase::Probing { .. } => {
                    let _ = changes.changed().await;
                }
            }
        }
    }

    /// [`acquire`](Self::acquire) without waiting: a permit if a request for `key` may go
    /// now (the key is open, or its cooldown is over and this caller becomes the probe),
    /// else `Err` with the time left in the cooldown (`None`: a probe is in flight).
    pub fn try_acquire(&self, key: &K) -> Result<Permit<K>, Option<Duration>> {
        let Some(gate) = self.existing(key) else {
            return Ok(self.permit(key, None, None));
        };
        let now = Instant::now();
        let phase = *gate.phase.borrow();
        match phase {
            Phase::Open => Ok(self.permit(key, Some(gate), None)),
            Phase::Cooling { until } if until > now => Err(Some(until - now)),
            Phase::Cooling { .. } => match gate.take_probe(now) {
                Some(id) => Ok(self.permit(key, Some(gate), Some(id))),
                // Another caller changed the phase first: it is probing, or cooling again.
                None => Err(gate.remaining(now)),
            },
            Phase::Probing { .. } => Err(None),
        }
    }

    /// Records a 429 for `key` (from any request, probe or not): the key cools down until
    /// `wait` from now. A running cooldown is extended, never shortened.
    pub fn on_rate_limited(&self, key: &K, wait: Duration) {
        self.gate(key).cool_for(wait);
    }

    /// Sets `key`'s gate, whatever its phase, to what another instance of a cluster
    /// learned: open (`None`: its probe was not refused), or cooling down for exactly
    /// `wait` (a cooldown may be shortened here). A probe in flight here still reports;
    /// its report no longer changes anything.
    pub fn reset(&self, key: &K, wait: Option<Duration>) {
        let gate = self.gate(key);
        let now = Instant::now();
        let next = match wait {
            None => Phase::Open,
            Some(wait) => Phase::Cooling {
                until: now.checked_add(wait).unwrap_or(now + FAR_FUTURE),
            },
        };
        gate.phase.send_if_modified(|phase| {
            let changed = *phase != next;
            *phase = next;
            changed
        });
    }

    /// The time left in `key`'s cooldown; `None` when it is not cooling down.
    pub fn remaining(&self, key: &K) -> Option<Duration> {
        let gate = self.gates.get(key)?;
        gate.remaining(Instant::now())
    }

    /// Calls `f` with each key that is cooling down and its time left. The keys are
    /// collected first, so `f` may call back into this [`Cooldowns`].
    pub fn for_each_remaining(&self, mut f: impl FnMut(&K, Duration)) {
        let now = Instant::now();
        let cooling: Vec<(K, Duration)> = self
            .gates
            .iter()
            .filter_map(|entry| Some((entry.key().clone(), entry.value().remaining(now)?)))
            .collect();
        for (key, remaining) in &cooling {
            f(key, *remaining);
        }
    }

    /// The keys with a gate (keys that met a 429 and were not evicted since).
    pub fn keys(&self) -> Vec<K> {
        self.gates.iter().map(|e| e.key().clone()).collect()
    }

    /// Keys with a gate (keys that met a 429 and were not evicted since).
    pub fn len(&self) -> usize {
        self.gates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.gates.is_empty()
    }

    /// Drops the gates that no permit holds and that say nothing any more: open, or
    /// whose cooldown ended at least `idle` ago. Returns the keys dropped.
    pub fn evict_idle(&self, idle: Duration) -> Vec<K> {
        let now = Instant::now();
        let mut gone = Vec::new();
        self.gates.retain(|key, gate| {
            let stale = match *gate.phase.borrow() {
                Phase::Open => true,
                Phase::Cooling { until } => until + idle <= now,
                Phase::Probing { .. } => false,
            };
            // The map's own reference is the only one: no permit and no waiter holds it.
            let keep = !(stale && Arc::strong_count(gate) == 1);
            if !keep {
                gone.push(key.clone());
            }
            keep
        });
        gone
    }

    /// The gate of `key`, if it has one.
    fn existing(&self, key: &K) -> Option<Arc<Gate>> {
        self.gates.get(key).map(|g| Arc::clone(&g))
    }

    /// The gate of `key`, created open if it has none yet.
    fn gate(&self, key: &K) -> Arc<Gate> {
        gate_in(&self.gates, key)
    }
}

/// The gate of `key` in `gates`, created open if it has none yet.
fn gate_in<K: Eq + Hash + Clone>(gates: &DashMap<K, Arc<Gate>>, key: &K) -> Arc<Gate> {
    if let Some(gate) = gates.get(key) {
        return Arc::clone(&gate);
    }
    let entry = gates.entry(key.clone()).or_default();
    Arc::clone(&entry)
}

// === impl Permit ===

impl<K: Eq + Hash + Clone> Permit<K> {
    /// Whether this request is the probe sent after a cooldown, whose result decides
    /// whether the other waiting requests may go.
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }

    /// The request got an answer other than a 429. A probe's success opens the gate for
    /// every waiting request; otherwise this is a no-op.
    pub fn succeeded(mut self) {
        if let (Some(id), Some(gate)) = (self.probe.take(), &self.gate) {
            gate.probe_succeeded(id);
        }
    }

    /// The request got a 429: the key cools down for `wait` (see [`Cooldowns::on_rate_limited`]).
    pub fn rate_limited(mut self, wait: Duration) {
        self.probe = None;
        let gate = match self.gate.take() {
            Some(gate) => gate,
            None => gate_in(&self.gates, &self.key),
        };
        gate.cool_for(wait);
    }
}

impl<K: Eq + Hash + Clone> Drop for Permit<K> {
    fn drop(&mut self) {
        if let (Some(id), Some(gate)) = (self.probe.take(), &self.gate) {
            gate.probe_abandoned(id);
        }
    }
}

impl<K: Eq + Hash + Clone> std::fmt::Debug for Permit<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("probe", &self.probe)
            .finish_non_exhaustive()
    }
}

// === impl Gate ===

impl Default for Gate {
    fn default() -> Self {
        Self {
            phase: watch::Sender::new(Phase::Open),
            next_probe: AtomicU64::new(0),
        }
    }
}

impl Gate {
    /// Makes the caller the probe if the cooldown has ended (by `now`) and no probe has
    /// been chosen yet; `None` if the phase is anything else by now.
    fn take_probe(&self, now: Instant) -> Option<u64> {
        let mut probe = None;
        self.phase.send_if_modified(|phase| match *phase {
            Phase::Cooling { until } if until <= now => {
                let id = self.next_probe.fetch_add(1, Ordering::Relaxed);
                *phase = Phase::Probing { id };
                probe = Some(id);
                true
            }
            Phase::Open | Phase::Cooling { .. } | Phase::Probing { .. } => false,
        });
        probe
    }

    /// Cools down until `wait` from now, unless already cooling down for longer.
    fn cool_for(&self, wait: Duration) {
        let now = Instant::now();
        let until = now.checked_add(wait).unwrap_or(now + FAR_FUTURE);
        self.phase.send_if_modified(|phase| match *phase {
            Phase::Cooling { until: current } if current >= until => false,
            Phase::Open | Phase::Cooling { .. } | Phase::Probing { .. } => {
                *phase = Phase::Cooling { until };
                true
            }
        });
    }

    /// Probe `id` was not refused: open the gate, if that probe is still the current one
    /// (a 429 seen meanwhile by another request has started a new cooldown).
    fn probe_succeeded(&self, id: u64) {
        self.replace_probe(id, Phase::Open);
    }

    /// Probe `id` ended without a report: the cooldown stays over, and the next request to
    /// look becomes the probe.
    fn probe_abandoned(&self, id: u64) {
        self.replace_probe(
            id,
            Phase::Cooling {
                until: Instant::now(),
            },
        );
    }

    fn replace_probe(&self, id: u64, next: Phase) {
        self.phase.send_if_modified(|phase| {
            let current = *phase == Phase::Probing { id };
            if current {
                *phase = next;
            }
            current
        });
    }

    fn remaining(&self, now: Instant) -> Option<Duration> {
        match *self.phase.borrow() {
            Phase::Cooling { until } if until > now => Some(until - now),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
