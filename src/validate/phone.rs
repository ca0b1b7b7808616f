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
    DIGITS.contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit)
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
        fn too_short_or_too_long_fails(plus in any::<bool>(), digits in "[0-9]{0,9}|[0-9]{16,30}") {
            let text = if plus { format!("+{digits}") } else { digits };
            prop_assert!(!is_valid(&text));
        }
    }
}
