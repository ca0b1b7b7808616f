//! One company's pending-message queue: the capacity model behind the 429.
//!
//! The provider lets a company have at most `maxAllowed` messages *pending* (accepted,
//! not yet sent) and sends them at a rate the client does not know. This file models
//! exactly that, and nothing about HTTP:
//!
//! - every accepted message gets the next per-company sequence number (its index here);
//! - `drained` counts how many messages have left the queue so far. It grows by
//!   `drain_rate × elapsed` on every access (lazily, from `tokio::time::Instant`, so
//!   tests with paused time are exact) and never passes the number accepted, so an idle
//!   company does not bank capacity;
//! - pending = accepted − drained;
//! - a message's stage follows from its sequence number alone: *done* (Delivered or
//!   Failed) when `seq < floor(drained)`, *Sending* when it is within the next
//!   `ceil(drain_rate × 0.5 s)` messages, else *Pending*.
//!
//! Each message costs one 16-byte [`Record`] (its fate fits in what would be padding);
//! the time a message was accepted is kept per accepted send (one entry per batch, found
//! by binary search on the sequence number), not per message. Two cursors remember how
//! far the stages have already advanced, so [`Queue::advance`] can report exactly the
//! messages that changed stage since the last call and the caller can keep per-campaign
//! counters up to date in amortised O(1) per message.

use std::ops::Range;
use std::time::Duration;

use tokio::time::Instant;

use super::model::Id;
use super::outcome::Fate;
use super::phone::PhoneKey;

/// How long a message counts as Sending before it is done, in drain time.
pub const SENDING_WINDOW: Duration = Duration::from_millis(500);

/// One accepted message: who it goes to, which campaign it belongs to and how it will
/// end (decided at acceptance, shown once it is done).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub phone: PhoneKey,
    pub campaign: Id,
    pub fate: Fate,
}

/// Where a message is on its way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Pending,
    Sending,
    /// Left the provider: Delivered or Failed, decided by the campaign's rules.
    Done,
}

/// The sequence numbers that changed stage during one [`Queue::advance`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Messages that left Pending (now Sending, or straight to done).
    pub left_pending: Range<usize>,
    /// Messages that became done.
    pub done: Range<usize>,
}

/// A company's queue of accepted messages and its drain state.
#[derive(Debug)]
pub struct Queue {
    records: Vec<Record>,
    /// Messages drained so far, fractional; never above `records.len()`.
    drained: f64,
    /// When `drained` was last brought up to date.
    last: Instant,
    /// Messages per second leaving the queue.
    rate: f64,
    /// Records `[0, left_pending)` have already been reported as having left Pending.
    left_pending: usize,
    /// Records `[0, done)` have already been reported as done.
    done: usize,
    /// `(first sequence number, wall-clock milliseconds since the Unix epoch)` of every
    /// accepted send, in sequence order: message `seq` was accepted at the time of the
    /// last entry whose first sequence number is at most `seq`.
    created: Vec<(usize, u64)>,
}

// === impl Queue ===

impl Queue {
    /// An empty queue draining at `rate` messages per second (negative means zero).
    pub fn new(rate: f64, now: Instant) -> Self {
        Self {
            records: Vec::new(),
            drained: 0.0,
            last: now,
            rate: if rate.is_nan() { 0.0 } else { rate.max(0.0) },
            left_pending: 0,
            done: 0,
            created: Vec::new(),
        }
    }

    /// Brings the drain up to `now` and reports which messages changed stage since the
    /// previous call. Times earlier than the last one are treated as "no time passed".
    pub fn advance(&mut self, now: Instant) -> Progress {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        if now > self.last {
            self.last = now;
        }
        let accepted = self.records.len() as f64;
        // Skipping zero elapsed time also avoids `inf × 0 = NaN` for an infinite rate.
        if elapsed > 0.0 {
            self.drained = (self.drained + self.rate * elapsed).min(accepted);
        }

        let done_to = self.done_boundary();
        let left_to = self.sending_boundary();
        let progress = Progress {
            left_pending: self.left_pending..left_to.max(self.left_pending),
            done: self.done..done_to.max(self.done),
        };
        self.left_pending = progress.left_pending.end;
        self.done = progress.done.end;
        progress
    }

    /// Messages accepted and not yet drained, rounded down. Call [`advance`](Self::advance)
    /// first for an up-to-date figure.
    pub fn pending(&self) -> u64 {
        // Non-negative and at most `records.len()`, so the cast is exact after `floor`.
        (self.records.len() as f64 - self.drained).max(0.0).floor() as u64
    }

    /// Appends one accepted message; returns its sequence number.
    pub fn push(&mut self, record: Record) -> usize {
        self.records.push(record);
        self.records.len() - 1
    }

    /// Notes that the messages pushed from now on were accepted at `unix_ms` (wall-clock
    /// milliseconds since the Unix epoch), until the next call. Call it once per accepted
    /// send, before pushing its messages.
    pub fn start_batch(&mut self, unix_ms: u64) {
        let first = self.records.len();
        match self.created.last_mut() {
            // Nothing pushed since the last batch began: that batch is empty.
            Some(last) if last.0 == first => last.1 = unix_ms,
            Some(last) if last.1 == unix_ms => {}
            _ => self.created.push((first, unix_ms)),
        }
    }

    /// When message `seq` was accepted, in wall-clock milliseconds since the Unix epoch
    /// (0 for a message pushed before any [`start_batch`](Self::start_batch)).
    pub fn created_ms(&self, seq: usize) -> u64 {
        let after = self.created.partition_point(|&(first, _)| first <= seq);
        after.checked_sub(1).map_or(0, |i| self.created[i].1)
    }

    /// Makes room for `additional` more records in one allocation.
    pub fn reserve(&mut self, additional: usize) {
        self.records.reserve(additional);
    }

    /// The stage of message `seq` as of the last [`advance`](Self::advance).
    pub fn stage(&self, seq: usize) -> Stage {
        if seq < self.done_boundary() {
            Stage::Done
        } else if seq < self.sending_boundary() {
            Stage::Sending
        } else {
            Stage::Pending
        }
    }

    /// Every accepted message, indexed by sequence number.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Messages with `seq` below this are done.
    fn done_boundary(&self) -> usize {
        // `drained` is within `0..=records.len()`, so the cast is exact after `floor`.
        self.drained.floor() as usize
    }

    /// Messages with `seq` below this have left Pending.
    fn sending_boundary(&self) -> usize {
        let window = (self.rate * SENDING_WINDOW.as_secs_f64()).ceil();
        // A float-to-int `as` cast saturates, so an enormous rate cannot overflow here.
        let window = window as usize;
        self.done_boundary()
            .saturating_add(window)
            .min(self.records.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64) -> Record {
        Record {
            phone: PhoneKey::parse(&format!("{:011}", 38_970_000_000 + n)).unwrap(),
            campaign: 1,
            fate: Fate::Delivered,
        }
    }

    fn filled(rate: f64, n: u64, now: Instant) -> Queue {
        let mut q = Queue::new(rate, now);
        for i in 0..n {
            q.push(record(i));
        }
        q
    }

    #[test]
    fn a_message_costs_sixteen_bytes() {
        // A million recipients must stay far below 200 MB.
        assert_eq!(std::mem::size_of::<Record>(), 16);
    }

    #[test]
    fn creation_times_are_kept_per_batch() {
        let mut q = Queue::new(1.0, Instant::now());
        assert_eq!(q.created_ms(0), 0, "nothing accepted yet");
        q.start_batch(1_000);
        q.push(record(0));
        q.push(record(1));
        q.start_batch(2_000);
        q.start_batch(3_000); // an empty batch is replaced, not kept
        q.push(record(2));
        q.start_batch(3_000); // same millisecond: one entry
        q.push(record(3));
        q.start_batch(4_000);
        q.push(record(4));
        let times: Vec<u64> = (0..5).map(|seq| q.created_ms(seq)).collect();
        assert_eq!(times, [1_000, 1_000, 3_000, 3_000, 4_000]);
        assert_eq!(q.created.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn pending_drains_at_the_rate_over_paused_time() {
        let mut q = filled(100.0, 1000, Instant::now());
        assert_eq!(q.pending(), 1000);
        tokio::time::advance(Duration::from_millis(2500)).await;
        q.advance(Instant::now());
        assert_eq!(q.pending(), 750);
        tokio::time::advance(Duration::from_secs(60)).await;
        q.advance(Instant::now());
        assert_eq!(q.pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_does_not_bank_capacity() {
        let mut q = Queue::new(100.0, Instant::now());
        tokio::time::advance(Duration::from_secs(10)).await;
        q.advance(Instant::now());
        for i in 0..500 {
            q.push(record(i));
        }
        q.advance(Instant::now());
        assert_eq!(
            q.pending(),
            500,
            "ten idle seconds must not pre-drain new messages"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pending_rounds_down_partial_messages() {
        let start = Instant::now();
        let mut q = filled(3.0, 10, start);
        q.advance(start + Duration::from_millis(500)); // 1.5 drained
        assert_eq!(q.pending(), 8); // 8.5 rounded down
    }

    #[tokio::test(start_paused = true)]
    async fn stages_move_pending_sending_done_over_time() {
        let start = Instant::now();
        // 10/s: the Sending window is the next 5 messages.
        let mut q = filled(10.0, 30, start);
        let p = q.advance(start);
        assert_eq!((p.left_pending, p.done), (0..5, 0..0));
        assert_eq!(q.stage(0), Stage::Sending);
        assert_eq!(q.stage(4), Stage::Sending);
        assert_eq!(q.stage(5), Stage::Pending);

        let p = q.advance(start + Duration::from_secs(1));
        assert_eq!((p.left_pending, p.done), (5..15, 0..10));
        assert_eq!(q.stage(9), Stage::Done);
        assert_eq!(q.stage(10), Stage::Sending);
        assert_eq!(q.stage(15), Stage::Pending);

        let p = q.advance(start + Duration::from_secs(100));
        assert_eq!((p.left_pending, p.done), (15..30, 10..30));
        assert_eq!(q.stage(29), Stage::Done);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_rate_never_drains_and_nothing_is_sending() {
        let start = Instant::now();
        let mut q = filled(0.0, 3, start);
        let p = q.advance(start + Duration::from_secs(3600));
        assert_eq!((p.left_pending, p.done), (0..0, 0..0));
        assert_eq!(q.pending(), 3);
        assert_eq!(q.stage(0), Stage::Pending);
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_instant_changes_nothing() {
        let start = Instant::now();
        let mut q = filled(10.0, 100, start + Duration::from_secs(1));
        q.advance(start + Duration::from_secs(2));
        let before = q.pending();
        let p = q.advance(start);
        assert_eq!((p.left_pending.len(), p.done.len()), (0, 0));
        assert_eq!(q.pending(), before);
    }

    #[tokio::test(start_paused = true)]
    async fn an_infinite_rate_drains_everything_at_once() {
        let start = Instant::now();
        let mut q = filled(f64::INFINITY, 10, start);
        q.advance(start);
        assert_eq!(q.pending(), 10, "no time has passed yet");
        q.advance(start + Duration::from_nanos(1));
        assert_eq!(q.pending(), 0);
        assert_eq!(q.stage(9), Stage::Done);
    }
}
