//! Phone numbers: the provider's validity rule and a compact, lossless 8-byte key.
//!
//! The seed says a phone number is "10-15 digits, optionally starting with +", and
//! nothing else may appear in it (the rule itself is [`crate::validate::phone`], which the
//! proxy checks with too). The simulator remembers every accepted recipient (for
//! the messages query and the duplicate statistics), so it stores each number as a
//! [`PhoneKey`]: a `u64` holding the digits' value, how many digits there were (leading
//! zeros matter) and whether there was a `+`. That keeps a million recipients in a few
//! megabytes instead of a heap string each, and turns back into the exact text sent.

use std::fmt;

use crate::validate::phone;

/// A valid phone number, packed into one `u64`.
///
/// Layout: bits 0..50 the digits' value (15 digits are below 10^15 < 2^50), bits 50..54
/// the digit count (10..=15), bit 54 set when the number had a leading `+`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneKey(u64);

const VALUE_BITS: u32 = 50;
const LEN_BITS: u32 = 4;
const VALUE_MASK: u64 = (1 << VALUE_BITS) - 1;
const LEN_MASK: u64 = (1 << LEN_BITS) - 1;
const PLUS_BIT: u64 = 1 << (VALUE_BITS + LEN_BITS);

// === impl PhoneKey ===

impl PhoneKey {
    /// Parses `text` under the seed's rule ([`crate::validate::phone`], shared with the
    /// proxy): one optional leading `+`, then 10 to 15 ASCII digits, nothing else (no
    /// spaces, dashes or brackets). `None` when it is invalid.
    pub fn parse(text: &str) -> Option<PhoneKey> {
        let (plus, digits) = phone::split(text)?;
        let len = digits.len();
        let value = digits
            .bytes()
            .fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'));
        let mut packed = value | ((len as u64) << VALUE_BITS);
        if plus {
            packed |= PLUS_BIT;
        }
        Some(PhoneKey(packed))
    }

    /// The number's last digit (the simulator derives Viber delivery outcomes from it).
    pub fn last_digit(self) -> u8 {
        // The value modulo 10 is below 10, so the cast cannot truncate.
        ((self.0 & VALUE_MASK) % 10) as u8
    }

    fn digit_count(self) -> usize {
        ((self.0 >> VALUE_BITS) & LEN_MASK) as usize
    }
}

impl fmt::Display for PhoneKey {
    /// Writes the number exactly as it was sent, leading `+` and zeros included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 & PLUS_BIT != 0 {
            f.write_str("+")?;
        }
        write!(
            f,
            "{:0width$}",
            self.0 & VALUE_MASK,
            width = self.digit_count()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_seed_rule_and_nothing_else() {
        for ok in [
            "38970123456",
            "+38970123456",
            "0012345678",
            "123456789012345",
        ] {
            assert!(PhoneKey::parse(ok).is_some(), "{ok} should be valid");
        }
        for bad in [
            "",
            "+",
            "123456789",
            "1234567890123456",
            "++38970123456",
            " 38970123456",
            "38970123456 ",
            "389-70123456",
            "3897012345a",
            "389701234５6",
        ] {
            assert!(PhoneKey::parse(bad).is_none(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn last_digit_is_the_final_character() {
        assert_eq!(PhoneKey::parse("+38970123459").unwrap().last_digit(), 9);
        assert_eq!(PhoneKey::parse("0000000000").unwrap().last_digit(), 0);
    }

    proptest! {
        #[test]
        fn display_round_trips_every_valid_number(plus in any::<bool>(), digits in "[0-9]{10,15}") {
            let text = if plus { format!("+{digits}") } else { digits };
            let key = PhoneKey::parse(&text).unwrap();
            prop_assert_eq!(key.to_string(), text);
        }

        #[test]
        fn distinct_texts_give_distinct_keys(a in "\\+?[0-9]{10,15}", b in "\\+?[0-9]{10,15}") {
            let (ka, kb) = (PhoneKey::parse(&a).unwrap(), PhoneKey::parse(&b).unwrap());
            prop_assert_eq!(ka == kb, a == b);
        }
    }
}
