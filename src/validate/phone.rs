//! The phone number rule, as the provider's error page states it: "10-15 digits,
//! optionally starting with +", and nothing else (no spaces, dashes or brackets).
//!
//! The rule lives here once. The proxy checks every recipient of a bulk send with it
//! (on the raw bytes, without allocating, see [`is_valid_bytes`]) and the simulator builds
//! its phone keys on [`split`], so the two cannot disagree about what is a number.

/// The shortest and longest digit runs the rule allows.
pub const DIGITS: std::ops::RangeInclusive<usize> = 10..=15;

/// Splits a valid number into (had a leading `+`, its digits); `None` when `text` breaks
/// the rule.
pub fn split(text: &str) -> Option<(bool, &str)> {
    let (plus, digits) = match text.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    is_digit_run(digits.as_bytes()).then_some((plus, digits))
}

/// True when `text` follows the rule.
pub fn is_valid(text: &str) -> bool {
    is_valid_bytes(text.as_bytes())
}

/// [`is_valid`] on bytes (say, the inside of a JSON string without escapes).
pub fn is_valid_bytes(text: &[u8]) -> bool {
    let digits = text.strip_prefix(b"+").unwrap_or(text);
    is_digit_run(digits)
}

fn is_digit_run(digits: &[u8]) -> bool {
    // Every allowed run is at least 8 bytes long: its first eight and its last eight bytes
    // (which overlap) cover it, one 64-bit word each, as a bulk send checks millions.
    const _: () = assert!(*DIGITS.start() >= 8);
    if !DIGITS.contains(&digits.len()) {
        return false;
    }
    let word = |at: usize| {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&digits[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    all_digits(word(0)) && all_digits(word(digits.len() - 8))
}

/// Whether all eight bytes of `word` are ASCII digits (0x30-0x39): each byte's high half
/// is 3, and adding 6 to it does not carry into the high half (no byte overflows, so no
/// carry crosses from one byte into the next).
fn all_digits(word: u64) -> bool {
    const ONES: u64 = u64::MAX / 255;
    const HIGH_HALVES: u64 = ONES * 0xf0;
    word & HIGH_HALVES == ONES * 0x30 && word.wrapping_add(ONES * 6) & HIGH_HALVES == ONES * 0x30
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_seed_rule_and_nothing_else() {
        for ok in [
            "38970123456",
            "+38970123456",
            "0012345678",
            "123456789012345",
            "+123456789012345",
        ] {
            assert!(is_valid(ok), "{ok} should be valid");
            assert_eq!(
                split(ok).map(|(_, d)| d.len()),
                Some(ok.trim_start_matches('+').len())
            );
        }
        for bad in [
            "",
            "+",
            "123456789",
            "+123456789",
            "1234567890123456",
            "++38970123456",
            "+-38970123456",
            " 38970123456",
            "38970123456 ",
            "389-70123456",
            "(389)70123456",
            "3897012345a",
            "389701234\u{ff15}6",
            "38970123456+",
            "3897012+3456",
            "\u{0663}\u{0663}\u{0663}\u{0663}\u{0663}\u{0663}\u{0663}\u{0663}\u{0663}\u{0663}",
        ] {
            assert!(!is_valid(bad), "{bad:?} should be invalid");
            assert_eq!(split(bad), None, "{bad:?}");
        }
    }

    /// The straightforward reading of the rule, for the word-at-a-time one to match.
    fn by_bytes(text: &[u8]) -> bool {
        let digits = text.strip_prefix(b"+").unwrap_or(text);
        DIGITS.contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit)
    }

    #[test]
    fn every_byte_in_every_place_of_a_word() {
        for at in 0..8 {
            for byte in 0..=255u8 {
                let mut bytes = *b"01234567";
                bytes[at] = byte;
                assert_eq!(
                    all_digits(u64::from_le_bytes(bytes)),
                    byte.is_ascii_digit(),
                    "{byte:#04x} at {at}"
                );
            }
        }
        for len in 0..20 {
            for at in 0..len {
                for byte in [b'/', b'0', b'9', b':', b'+', 0, 0x80, 0xff, 0x39 + 0x80] {
                    let mut text = vec![b'5'; len];
                    text[at] = byte;
                    assert_eq!(is_valid_bytes(&text), by_bytes(&text), "{text:?}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn every_number_of_10_to_15_digits_passes(plus in any::<bool>(), digits in "[0-9]{10,15}") {
            let text = if plus { format!("+{digits}") } else { digits.clone() };
            prop_assert!(is_valid(&text));
            prop_assert_eq!(split(&text), Some((plus, digits.as_str())));
        }

        #[test]
        fn a_foreign_character_anywhere_fails(
            digits in "[0-9]{10,15}",
            at in any::<prop::sample::Index>(),
            c in any::<char>().prop_filter("not an ASCII digit", |c| !c.is_ascii_digit()),
        ) {
            let at = at.index(digits.len() + 1);
            prop_assume!(!(c == '+' && at == 0));
            let mut text = digits;
            text.insert(at, c);
            prop_assert!(!is_valid(&text), "{:?}", text);
        }

        #[test]
        fn any_bytes_get_the_straightforward_answer(
            text in proptest::collection::vec(
                prop_oneof![3 => proptest::num::u8::ANY.prop_map(|b| b'0' + b % 10), 1 => any::<u8>()],
                0..20,
            ),
        ) {
            prop_assert_eq!(is_valid_bytes(&text), by_bytes(&text));
        }

        #[test]
        fn too_short_or_too_long_fails(plus in any::<bool>(), digits in "[0-9]{0,9}|[0-9]{16,30}") {
            let text = if plus { format!("+{digits}") } else { digits };
            prop_assert!(!is_valid(&text));
        }
    }
}
