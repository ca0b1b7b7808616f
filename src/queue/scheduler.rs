//! The scheduler: when each queued part may go, and how many of a key's parts are let
//! loose at once.
//!
//! Parts wait in a heap ordered by the time they may go next. A due part becomes a worker
//! task (see `dispatch`), but at most `per_key` of one API key's parts are tasks at any
//! moment: the rest of a key's due parts wait here, in order, as plain data. A task costs
//! a few kilobytes while it waits on its key's cooldown or lock, so without this a
//! backlog of a million single sends for a key in cooldown would hold a million tasks.
//! Keys do not wait on each other: each has its own allowance. A piece sent on the API's
//! stated room (`bypass`) always goes at once.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::dispatch::Inner;
use super::store::Dispatchable;
use crate::apikey::KeyId;

/// A part waiting for its time.
pub(super) struct Entry {
    pub at: Instant,
    pub part: Dispatchable,
    /// Skip the key's cooldown: the API just said it has room for exactly this piece.
    pub bypass: bool,
}

/// Which keys have how many tasks out, and their due parts waiting for a turn.
struct Admission {
    per_key: usize,
    active: HashMap<KeyId, usize>,
    parked: HashMap<KeyId, VecDeque<Entry>>,
}

/// Tells the scheduler that a key's task ended, however it ended (a panic included).
struct Done {
    key: KeyId,
    tx: mpsc::UnboundedSender<KeyId>,
}

impl Drop for Done {
    fn drop(&mut self) {
        let _ = self.tx.send(self.key);
    }
}

/// The scheduler loop; ends when the queue shuts down.
pub(super) async fn schedule(
    inner: Arc<Inner>,
    mut rx: mpsc::UnboundedReceiver<Entry>,
    per_key: usize,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<KeyId>();
    let mut admission = Admission {
        per_key: per_key.max(1),
        active: HashMap::new(),
        parked: HashMap::new(),
    };
    let mut heap: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut entries: HashMap<u64, Entry> = HashMap::new();
    let mut counter = 0u64;
    loop {
        let next = heap.peek().map(|Reverse((at, _))| *at);
        tokio::select! {
            entry = rx.recv() => match entry {
                Some(entry) => {
                    counter += 1;
                    heap.push(Reverse((entry.at, counter)));
                    entries.insert(counter, entry);
                }
                None => return,
            },
            Some(key) = done_rx.recv() => {
                if let Some(entry) = admission.finished(key) {
                    start(&inner, entry, Some(key), &done_tx, &tasks, &shutdown);
                }
            }
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let now = Instant::now();
                while let Some(Reverse((at, id))) = heap.peek().copied() {
                    if at > now {
                        break;
                    }
                    heap.pop();
                    let Some(entry) = entries.remove(&id) else { continue };
                    let key = inner.key_for(&entry.part).map(|(_, id)| id);
                    if let Some(entry) = admission.admit(key, entry) {
                        start(&inner, entry, key, &done_tx, &tasks, &shutdown);
                    }
                }
            }
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Spawns the worker task for `entry`; its end is reported on `done`. At shutdown the
/// worker stops wherever it waits: every step it takes is committed before the next, so
/// the part is found where it was at the next start (one in flight is looked up first).
fn start(
    inner: &Arc<Inner>,
    entry: Entry,
    key: Option<KeyId>,
    done: &mpsc::UnboundedSender<KeyId>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let guard = key.map(|key| Done {
        key,
        tx: done.clone(),
    });
    let inner = inner.clone();
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        let _done = guard;
        tokio::select! {
            () = inner.run(entry.part, entry.bypass) => {}
            () = shutdown.cancelled() => {}
        }
    });
}

// === impl Admission ===

impl Admission {
    /// The entry back if it may start now (counted as active), else parked.
    fn admit(&mut self, key: Option<KeyId>, entry: Entry) -> Option<Entry> {
        let Some(key) = key else { return Some(entry) };
        let active = self.active.entry(key).or_default();
        if entry.bypass || *active < self.per_key {
            *active += 1;
            return Some(entry);
        }
        self.parked.entry(key).or_default().push_back(entry);
        None
    }

    /// A task of `key` ended: the key's next parked entry, if any, takes its place.
    fn finished(&mut self, key: KeyId) -> Option<Entry> {
        let next = self.parked.get_mut(&key).and_then(VecDeque::pop_front);
        if next.is_some() {
            return next;
        }
        self.parked.remove(&key);
        if let Some(active) = self.active.get_mut(&key) {
            *active = active.saturating_sub(1);
            if *active == 0 {
                self.active.remove(&key);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(bypass: bool) -> Entry {
        Entry {
            at: Instant::now(),
            part: Dispatchable::sample(),
            bypass,
        }
    }

    #[tokio::test]
    async fn a_key_gets_its_allowance_and_the_rest_waits_in_order() {
        let (a, b) = (KeyId::of(b"a"), KeyId::of(b"b"));
        let mut adm = Admission {
            per_key: 2,
            active: HashMap::new(),
            parked: HashMap::new(),
        };
        assert!(adm.admit(Some(a), entry(false)).is_some());
        assert!(adm.admit(Some(a), entry(false)).is_some());
        let mut third = entry(false);
        third.part.seq = 3;
        assert!(
            adm.admit(Some(a), third).is_none(),
            "over the allowance: parked"
        );
        // Another key is not held up by the first one's backlog.
        assert!(adm.admit(Some(b), entry(false)).is_some());
        // A piece the API said it has room for goes at once.
        assert!(adm.admit(Some(a), entry(true)).is_some());
        // Keyless parts are not counted.
        assert!(adm.admit(None, entry(false)).is_some());
        // When one of a's tasks ends, the parked part takes its place.
        assert_eq!(adm.finished(a).map(|e| e.part.seq), Some(3));
        assert!(adm.finished(a).is_none());
        assert!(adm.finished(a).is_none());
        assert!(adm.finished(a).is_none());
        assert!(!adm.active.contains_key(&a), "{:?}", adm.active.get(&a));
        assert!(adm.finished(b).is_none());
        assert!(adm.active.is_empty() && adm.parked.is_empty());
    }
}
