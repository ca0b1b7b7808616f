//! Tests for per-key cooldowns, on a paused clock.
//!
//! With the clock paused, tokio moves time forward only when no task can make progress,
//! so `run_until(t)` deterministically means "let every task run as far as it can, with
//! the clock stopping at `t`". Nothing here depends on real time passing.

use super::*;
use tokio::sync::mpsc;

const KEY: &str = "fingerprint-a";

type Passed = (usize, Instant, Permit<&'static str>);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Spawns `n` tasks that each acquire `key` and then hand over their permit, with the
/// time it was granted, so that the test decides how each request ends.
fn spawn_waiters(
    cooldowns: &Arc<Cooldowns<&'static str>>,
    key: &'static str,
    n: usize,
) -> mpsc::UnboundedReceiver<Passed> {
    let (tx, rx) = mpsc::unbounded_channel();
    for i in 0..n {
        let cooldowns = Arc::clone(cooldowns);
        let tx = tx.clone();
        tokio::spawn(async move {
            let permit = cooldowns.acquire(&key).await;
            let _ = tx.send((i, Instant::now(), permit));
        });
    }
    rx
}

async fn run_until(t: Instant) {
    tokio::time::sleep_until(t).await;
}

fn drain(rx: &mut mpsc::UnboundedReceiver<Passed>) -> Vec<Passed> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

/// Takes the single permit that has passed, checking that it is the probe granted at `at`.
fn only_probe(passed: Vec<Passed>, at: Instant) -> Permit<&'static str> {
    assert_eq!(passed.len(), 1, "exactly one request goes after a cooldown");
    let (_, granted, permit) = passed.into_iter().next().unwrap();
    assert!(permit.is_probe());
    assert_eq!(granted, at);
    permit
}

fn assert_all_pass_at_once(passed: &[Passed], n: usize, at: Instant) {
    assert_eq!(passed.len(), n);
    for (i, granted, permit) in passed {
        assert!(!permit.is_probe(), "waiter {i} is a second probe");
        assert_eq!(*granted, at, "waiter {i} did not pass with the others");
    }
}

fn cooling(key: &'static str, wait: Duration) -> Arc<Cooldowns<&'static str>> {
    let cooldowns = Arc::new(Cooldowns::new());
    cooldowns.on_rate_limited(&key, wait);
    cooldowns
}

#[tokio::test(start_paused = true)]
async fn twenty_waiters_make_one_probe_then_pass_together() {
    let start = Instant::now();
    let cooldowns = cooling(KEY, secs(30));
    let mut passed = spawn_waiters(&cooldowns, KEY, 20);

    run_until(start + secs(30) - ms(1)).await;
    assert!(
        drain(&mut passed).is_empty(),
        "none passes before the cooldown's end"
    );

    run_until(start + secs(30) + ms(1)).await;
    let probe = only_probe(drain(&mut passed), start + secs(30));

    // The other 19 wait for the probe's result, however long it takes.
    run_until(start + secs(600)).await;
    assert!(drain(&mut passed).is_empty());

    probe.succeeded();
    let opened = Instant::now();
    run_until(opened + ms(1)).await;
    assert_all_pass_at_once(&drain(&mut passed), 19, opened);
    assert_eq!(cooldowns.remaining(&KEY), None);
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_probe_starts_a_new_cooldown() {
    let start = Instant::now();
    let cooldowns = cooling(KEY, secs(30));
    let mut passed = spawn_waiters(&cooldowns, KEY, 20);
    run_until(start + secs(30) + ms(1)).await;
    let probe = only_probe(drain(&mut passed), start + secs(30));

    probe.rate_limited(secs(20));
    let refused = Instant::now();
    assert_eq!(cooldowns.remaining(&KEY), Some(secs(20)));
    run_until(refused + secs(20) - ms(1)).await;
    assert!(drain(&mut passed).is_empty(), "the others keep waiting");

    run_until(refused + secs(20) + ms(1)).await;
    let probe = only_probe(drain(&mut passed), refused + secs(20));
    probe.succeeded();
    let opened = Instant::now();
    run_until(opened + ms(1)).await;
    assert_all_pass_at_once(&drain(&mut passed), 18, opened);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_hands_the_role_to_another_waiter() {
    let start = Instant::now();
    let cooldowns = cooling(KEY, secs(30));
    let mut passed = spawn_waiters(&cooldowns, KEY, 5);
    run_until(start + secs(30) + ms(1)).await;
    let first = drain(&mut passed);
    assert_eq!(first.len(), 1);
    let (first_id, _, probe) = first.into_iter().next().unwrap();
    assert!(probe.is_probe());

    drop(probe);
    let dropped = Instant::now();
    run_until(dropped + ms(1)).await;
    let second = drain(&mut passed);
    assert_eq!(
        second.len(),
        1,
        "exactly one waiter takes over the probe role"
    );
    assert_ne!(second[0].0, first_id);
    let (_, _, probe) = second.into_iter().next().unwrap();
    assert!(probe.is_probe());
    assert_eq!(cooldowns.remaining(&KEY), None, "the cooldown stays over");

    probe.succeeded();
    let opened = Instant::now();
    run_until(opened + ms(1)).await;
    assert_all_pass_at_once(&drain(&mut passed), 3, opened);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_leaves_no_trace() {
    let start = Instant::now();
    let cooldowns = cooling(KEY, secs(30));
    let gave_up = tokio::time::timeout(secs(5), cooldowns.acquire(&KEY)).await;
    assert!(gave_up.is_err());

    run_until(start + secs(30)).await;
    let probe = cooldowns.acquire(&KEY).await;
    assert!(probe.is_probe());
    assert_eq!(Instant::now(), start + secs(30));
}

#[tokio::test(start_paused = true)]
async fn the_first_request_after_an_unwatched_cooldown_is_the_probe() {
    let start = Instant::now();
    let cooldowns = cooling(KEY, secs(1));
    run_until(start + secs(5)).await;
    let probe = cooldowns.acquire(&KEY).await;
    assert!(probe.is_probe());
    assert_eq!(
        Instant::now(),
        start + secs(5),
        "no wait once the cooldown is over"
    );
    probe.succeeded();
    assert!(!cooldowns.acquire(&KEY).await.is_probe());
}

#[tokio::test(start_paused = true)]
async fn different_keys_are_independent() {
    let start = Instant::now();
    let cooldowns = cooling("a", secs(30));
    let mut waiting_on_a = spawn_waiters(&cooldowns, "a", 3);

    let b = cooldowns.acquire(&"b").await;
    assert!(!b.is_probe());
    assert_eq!(Instant::now(), start, "an open key does not wait");
    b.succeeded();
    run_until(start + secs(1)).await;
    assert!(
        drain(&mut waiting_on_a).is_empty(),
        "b's success does not open a"
    );

    cooldowns.on_rate_limited(&"b", secs(100));
    assert_eq!(cooldowns.remaining(&"a"), Some(secs(29)));
    assert_eq!(cooldowns.remaining(&"b"), Some(secs(100)));
    assert_eq!(cooldowns.remaining(&"c"), None);
}

#[tokio::test(start_paused = true)]
async fn on_rate_limited_extends_but_never_shortens() {
    let start = Instant::now();
    let cooldowns = cooling(KEY, secs(60));
    cooldowns.on_rate_limited(&KEY, secs(10));
    assert_eq!(cooldowns.remaining(&KEY), Some(secs(60)));
    cooldowns.on_rate_limited(&KEY, secs(90));
    assert_eq!(cooldowns.remaining(&KEY), Some(secs(90)));

    // A waiter already sleeping follows the extension.
    let mut passed = spawn_waiters(&cooldowns, KEY, 1);
    run_until(start + secs(30)).await;
    cooldowns.on_rate_limited(&KEY, secs(100));
    run_until(start + secs(130) - ms(1)).await;
    assert!(drain(&mut passed).is_empty());
    run_until(start + secs(130) + ms(1)).await;
    only_probe(drain(&mut passed), start + secs(130)).succeeded();
}

#[tokio::test(start_paused = true)]
async fn a_non_probe_reports_only_429s() {
    let cooldowns: Cooldowns<&str> = Cooldowns::new();
    let in_flight = cooldowns.acquire(&KEY).await;
    let also_in_flight = cooldowns.acquire(&KEY).await;
    assert!(!in_flight.is_probe() && !also_in_flight.is_probe());

    in_flight.rate_limited(secs(30));
    assert_eq!(cooldowns.remaining(&KEY), Some(secs(30)));
    // Success of a request sent before the cooldown proves nothing about capacity now.
    also_in_flight.succeeded();
    assert_eq!(cooldowns.remaining(&KEY), Some(secs(30)));
}

#[tokio::test(start_paused = true)]
async fn a_stale_probe_cannot_cut_a_newer_cooldown() {
    let start = Instant::now();
    let cooldowns = cooling(KEY, secs(30));
    run_until(start + secs(30)).await;
    let probe = cooldowns.acquire(&KEY).await;
    assert!(probe.is_probe());

    // Another request, in flight since before the cooldown, reports a 429 meanwhile.
    cooldowns.on_rate_limited(&KEY, secs(10));
    probe.succeeded();
    assert_eq!(cooldowns.remaining(&KEY), Some(secs(10)));

    let mut passed = spawn_waiters(&cooldowns, KEY, 2);
    run_until(start + secs(40) + ms(1)).await;
    only_probe(drain(&mut passed), start + secs(40)).succeeded();
}

#[tokio::test(start_paused = true)]
async fn for_each_remaining_lists_cooling_keys_only() {
    let cooldowns = cooling("a", secs(30));
    cooldowns.on_rate_limited(&"b", secs(5));
    cooldowns.acquire(&"open").await.succeeded();

    let mut seen = Vec::new();
    cooldowns.for_each_remaining(|key, left| seen.push((*key, left)));
    seen.sort();
    assert_eq!(seen, [("a", secs(30)), ("b", secs(5))]);

    // The callback may use the cooldowns itself.
    cooldowns.for_each_remaining(|key, _| cooldowns.on_rate_limited(key, secs(60)));
    assert_eq!(cooldowns.remaining(&"b"), Some(secs(60)));

    run_until(Instant::now() + secs(61)).await;
    let mut any = false;
    cooldowns.for_each_remaining(|_, _| any = true);
    assert!(!any, "ended cooldowns are not listed");
}

#[tokio::test(start_paused = true)]
async fn an_absurd_wait_does_not_overflow() {
    let cooldowns = cooling(KEY, Duration::MAX);
    let left = cooldowns.remaining(&KEY).unwrap();
    assert!(left >= secs(86_400 * 365), "{left:?}");
}

/// On real threads, a lost wake-up would leave a waiter hanging; the timeout only turns
/// such a hang into a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_threads_get_one_probe_and_no_lost_wake_ups() {
    for round in 0..200 {
        let cooldowns = Arc::new(Cooldowns::new());
        cooldowns.on_rate_limited(&KEY, Duration::ZERO);
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let cooldowns = Arc::clone(&cooldowns);
                tokio::spawn(async move {
                    let permit = cooldowns.acquire(&KEY).await;
                    let probe = permit.is_probe();
                    tokio::task::yield_now().await;
                    permit.succeeded();
                    probe
                })
            })
            .collect();
        let mut probes = 0;
        for task in tasks {
            let probe = tokio::time::timeout(secs(10), task).await;
            probes += usize::from(probe.expect("a waiter hung").unwrap());
        }
        assert_eq!(probes, 1, "round {round}");
    }
}

/// What another instance learned replaces the wait at once: a shorter cooldown than the
/// one set here, then the gate opened, with no moment open in between.
#[tokio::test(start_paused = true)]
async fn reset_sets_the_cooldown_or_opens_the_gate() {
    let start = Instant::now();
    let cooldowns = cooling(KEY, secs(30));
    let mut passed = spawn_waiters(&cooldowns, KEY, 5);
    run_until(start + secs(1)).await;

    cooldowns.reset(&KEY, Some(secs(2)));
    assert_eq!(cooldowns.remaining(&KEY), Some(secs(2)), "shortened");
    run_until(start + secs(3) - ms(1)).await;
    assert!(drain(&mut passed).is_empty(), "still cooling down");

    cooldowns.reset(&KEY, None);
    let opened = Instant::now();
    run_until(opened + ms(1)).await;
    assert_all_pass_at_once(&drain(&mut passed), 5, opened);
    assert_eq!(cooldowns.remaining(&KEY), None);
}
