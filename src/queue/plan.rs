//! Pure decisions of the send queue: how big a part may be, and how to cut it after a 429.
//!
//! Kept apart from the I/O (like `retry::policy`), so the rules read in one place and
//! are tested exhaustively without a store or a network:
//! - a part never exceeds the route's `max_recipients_per_request`, nor the `maxAllowed`
//!   the API last reported for the key (a larger part could never be accepted);
//! - when a 429 says `availableCapacity` > 0, a piece of exactly that size can go at once
//!   (the API said it has room) and the rest waits for the hint.

use crate::capacity::Capacity;

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
}
