//! Pure decisions of the send queue: how big a part may be, and how to cut it after a 429.
//!
//! Kept apart from the I/O (like `retry::policy`), so the rules read in one place and
//! are tested exhaustively without a store or a network:
//! - a part never exceeds the route's `max_recipients_per_request`, nor the `maxAllowed`
//!   the API last reported for the key (a larger part could never be accepted);
//! - when a 429 says `availableCapacity` > 0, a piece of exactly that size can go at once
//!   (the API said it has room) and the rest waits for the hint;
//! - recipients skipped by validation are in no part: a part is one contiguous run of the
//!   body's array (its bytes are sent as they are), so parts are cut around each skipped
//!   recipient ([`initial_parts`]).

use std::ops::Range;

use crate::keys::capacity::Capacity;
use crate::split;

/// How to cut a part of `n` recipients: optionally a first piece to send at once, then
/// the rest in pieces of at most `piece_max`, to send when the wait is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub now: Option<u64>,
    pub piece_max: u64,
}

/// The largest part the API could accept for this route and key.
pub fn part_limit(route_max: u64, known_max_allowed: Option<u64>) -> u64 {
    match known_max_allowed {
        Some(m) if m > 0 => route_max.min(m),
        _ => route_max,
    }
    .max(1)
}

/// Before sending: `Some(limit)` when a part of `n` recipients must be cut first.
pub fn cut_before_send(n: u64, limit: u64) -> Option<u64> {
    (n > limit).then_some(limit)
}

/// After a 429 for a part of `n` recipients (`limit`: the route's maximum): `None` to
/// retry the part whole after the wait, or how to cut it.
pub fn cut_after_429(n: u64, limit: u64, cap: &Capacity) -> Option<Cut> {
    let piece_max = part_limit(limit, cap.max_allowed);
    let now = cap
        .available_capacity
        .filter(|&a| a > 0 && a < n)
        .map(|a| a.min(piece_max));
    if now.is_none() && n <= piece_max {
        return None;
    }
    Some(Cut { now, piece_max })
}

/// The sizes of the pieces a [`Cut`] makes of `n` recipients, in order.
pub fn piece_sizes(n: u64, cut: Cut) -> Vec<u64> {
    let mut sizes = Vec::new();
    let mut left = n;
    if let Some(first) = cut.now {
        let first = first.min(left);
        sizes.push(first);
        left -= first;
    }
    while left > 0 {
        let take = left.min(cut.piece_max.max(1));
        sizes.push(take);
        left -= take;
    }
    sizes
}

/// The parts of a new bulk job of `n` recipients: the runs of consecutive recipients not
/// in `skipped` (indices in increasing order), each cut into pieces of at most `limit`, in
/// order. Every kept recipient is in exactly one part; no part is empty.
///
/// # Panics
///
/// If `limit` is 0.
pub fn initial_parts(n: usize, skipped: &[usize], limit: usize) -> Vec<Range<usize>> {
    let mut parts = Vec::new();
    let mut start = 0;
    for end in skipped.iter().copied().chain(std::iter::once(n)) {
        if end > start {
            parts.extend(split::chunks(end - start, limit).map(|r| start + r.start..start + r.end));
        }
        start = start.max(end + 1);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(max: Option<u64>, available: Option<u64>) -> Capacity {
        Capacity {
            max_allowed: max,
            available_capacity: available,
            ..Capacity::default()
        }
    }

    #[test]
    fn limit_is_the_smaller_of_route_and_max_allowed() {
        assert_eq!(part_limit(200_000, None), 200_000);
        assert_eq!(part_limit(200_000, Some(50_000)), 50_000);
        assert_eq!(part_limit(10, Some(50_000)), 10);
        assert_eq!(part_limit(200_000, Some(0)), 200_000);
        assert_eq!(cut_before_send(200_000, 50_000), Some(50_000));
        assert_eq!(cut_before_send(50_000, 50_000), None);
    }

    #[test]
    fn a_part_above_max_allowed_is_split_even_without_room() {
        let cut = cut_after_429(200_000, 200_000, &cap(Some(50_000), Some(0))).unwrap();
        assert_eq!(
            cut,
            Cut {
                now: None,
                piece_max: 50_000
            }
        );
        assert_eq!(piece_sizes(200_000, cut), vec![50_000; 4]);
    }

    #[test]
    fn available_capacity_goes_at_once_and_the_rest_waits() {
        let cut = cut_after_429(5_000, 200_000, &cap(Some(50_000), Some(1_500))).unwrap();
        assert_eq!(cut.now, Some(1_500));
        assert_eq!(piece_sizes(5_000, cut), vec![1_500, 3_500]);
        // Both at once: the first piece is the room, the rest in maxAllowed pieces.
        let cut = cut_after_429(120_000, 200_000, &cap(Some(50_000), Some(20_000))).unwrap();
        assert_eq!(piece_sizes(120_000, cut), vec![20_000, 50_000, 50_000]);
    }

    #[test]
    fn nothing_to_cut_means_retry_whole() {
        assert_eq!(
            cut_after_429(5_000, 200_000, &cap(Some(50_000), Some(0))),
            None
        );
        assert_eq!(cut_after_429(5_000, 200_000, &cap(None, None)), None);
        // Room for everything (the 429 was stale by the time it was read): retry whole.
        assert_eq!(
            cut_after_429(5_000, 200_000, &cap(Some(50_000), Some(9_000))),
            None
        );
    }

    #[test]
    fn pieces_always_cover_the_part_exactly() {
        for n in [1u64, 2, 7, 1_000, 49_999, 50_001, 450_000] {
            for (max, avail) in [(1, 0), (3, 2), (50_000, 1_500), (50_000, 0), (7, 6)] {
                if let Some(cut) = cut_after_429(n, 200_000, &cap(Some(max), Some(avail))) {
                    let sizes = piece_sizes(n, cut);
                    assert_eq!(sizes.iter().sum::<u64>(), n);
                    assert!(sizes.iter().all(|&s| s >= 1 && s <= max));
                }
            }
        }
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // one range per part is the point here
    fn initial_parts_cut_around_skipped_recipients() {
        assert_eq!(initial_parts(10, &[], 4), [0..4, 4..8, 8..10]);
        assert_eq!(initial_parts(10, &[3], 100), [0..3, 4..10]);
        assert_eq!(initial_parts(10, &[0, 9], 100), [1..9]);
        assert_eq!(initial_parts(10, &[3, 4, 5], 2), [0..2, 2..3, 6..8, 8..10]);
        assert_eq!(initial_parts(3, &[0, 1, 2], 2), Vec::<Range<usize>>::new());
        assert_eq!(initial_parts(1, &[], 1), [0..1]);
    }

    proptest::proptest! {
        #[test]
        fn initial_parts_keep_every_other_recipient_once(
            n in 1usize..300,
            skip in proptest::collection::btree_set(0usize..300, 0..40),
            limit in 1usize..50,
        ) {
            let skipped: Vec<usize> = skip.into_iter().filter(|&i| i < n).collect();
            let parts = initial_parts(n, &skipped, limit);
            let kept: Vec<usize> = parts.iter().flat_map(Clone::clone).collect();
            let expected: Vec<usize> = (0..n).filter(|i| !skipped.contains(i)).collect();
            proptest::prop_assert_eq!(kept, expected);
            proptest::prop_assert!(parts.iter().all(|p| !p.is_empty() && p.len() <= limit));
        }
    }
}
