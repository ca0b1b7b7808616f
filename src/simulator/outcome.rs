//! How a message ends: the delivery outcome model.
//!
//! Every message's fate is decided once, when its send is accepted, under the rules in
//! force then, and kept with the message (see `queue.rs`); it shows only once the drain
//! has taken the message through Pending and Sending. Fates never depend on wall time or
//! on timing, so a test can predict them, and a campaign's counters and the messages
//! query always agree (both read the same stored fate).
//!
//! # Rules
//! Draws are uniform numbers in `[0, 1)` from a hash of `(seed, company index, message
//! sequence number, which draw)` (splitmix64), so a seed gives the same outcomes whatever
//! the timing; "drawn with probability `p`" means "the draw is below `p`".
//!
//! - **SMS** message: Failed with probability `sms_fail_rate` (default 0), with the
//!   simulator's own `details` `{"code": 1, "error": "UNDELIVERABLE"}` (the provider
//!   documents no SMS codes); otherwise Delivered.
//! - **Viber** message: first, does Viber fail?
//!   - `viber_fail_rate` unset (the default): the fixed rule, a message to a number
//!     ending in `9` fails with code 9 (`NOT_VIBER_USER`), every other one is delivered;
//!   - `viber_fail_rate` set: it fails with that probability, with code 8
//!     (`USER_BLOCKED`), 9 (`NOT_VIBER_USER`) or 10 (`NO_SUITABLE_DEVICE`) drawn by the
//!     weights of `viber_fail_codes` (default 1 each); the phone number plays no part.
//!
//!   A failed Viber message of a campaign whose template has `smsFallbackEnabled` is then
//!   delivered by SMS fallback with probability `sms_fallback_rate` (default 1): status
//!   Delivered, `deliveredViaSmsFallback: true`, `details` keeping the Viber code. Any
//!   other failed Viber message is Failed with its code and
//!   `deliveredViaSmsFallback: false`.
//!
//! Changing a rule at run time applies to messages accepted from then on.

use std::collections::BTreeMap;
use std::fmt;

use super::model::{Channel, Details};
use super::phone::PhoneKey;
use super::SimConfig;

/// Why a message was not delivered on its channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Viber code 8.
    UserBlocked,
    /// Viber code 9.
    NotViberUser,
    /// Viber code 10.
    NoSuitableDevice,
    /// An SMS not delivered: the simulator's code 1.
    SmsUndeliverable,
}

/// How a message ends, decided at acceptance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Delivered,
    /// Viber failed for this reason, and SMS fallback delivered it.
    ViaFallback(Reason),
    Failed(Reason),
}

/// The relative weights of Viber error codes 8, 9 and 10 among drawn Viber failures:
/// finite, not negative, at least one above zero. Default: 1 each.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ViberFailCodes {
    /// Weights of codes 8, 9, 10, in that order.
    weights: [f64; 3],
}

/// The outcome rules in force (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    pub seed: u64,
    /// `None`: the "number ending in 9" rule.
    pub viber_fail_rate: Option<f64>,
    pub viber_fail_codes: ViberFailCodes,
    pub sms_fallback_rate: f64,
    pub sms_fail_rate: f64,
}

/// Outcomes so far, counted when messages become done.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Delivered, SMS fallback included.
    pub delivered: u64,
    /// Failed, by [`Reason`] (in declaration order).
    pub failed: [u64; 4],
    pub sms_fallback_delivered: u64,
}

/// The Viber codes a failure may have, in the order of [`ViberFailCodes`]' weights.
const VIBER_REASONS: [Reason; 3] = [
    Reason::UserBlocked,
    Reason::NotViberUser,
    Reason::NoSuitableDevice,
];

/// Which draw of a message: each is independent of the others.
const DRAW_FAIL: u64 = 1;
const DRAW_CODE: u64 = 2;
const DRAW_FALLBACK: u64 = 3;

// === impl Reason ===

impl Reason {
    /// All reasons, in [`Tally::failed`]'s order.
    const ALL: [Reason; 4] = [
        Reason::UserBlocked,
        Reason::NotViberUser,
        Reason::NoSuitableDevice,
        Reason::SmsUndeliverable,
    ];

    /// The `details` a message that ended for this reason shows.
    pub fn details(self) -> Details {
        match self {
            Reason::UserBlocked => Details::USER_BLOCKED,
            Reason::NotViberUser => Details::NOT_VIBER_USER,
            Reason::NoSuitableDevice => Details::NO_SUITABLE_DEVICE,
            Reason::SmsUndeliverable => Details::SMS_UNDELIVERABLE,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

// === impl ViberFailCodes ===

impl ViberFailCodes {
    /// Weights by code, e.g. `[(8, 1.0), (9, 2.0), (10, 1.0)]`; a code not given weighs 0.
    /// Refused: a code other than 8, 9, 10, one given twice, a weight negative or not
    /// finite, all weights zero.
    pub fn new(weights: impl IntoIterator<Item = (u16, f64)>) -> Result<Self, String> {
        let mut out = [None; 3];
        for (code, weight) in weights {
            let slot = match code {
                8..=10 => &mut out[usize::from(code - 8)],
                _ => return Err(format!("code {code} is not a Viber error code (8, 9, 10)")),
            };
            if slot.is_some() {
                return Err(format!("code {code} is given twice"));
            }
            if !(weight.is_finite() && weight >= 0.0) {
                return Err(format!(
                    "the weight of code {code} must be a number, 0 or more"
                ));
            }
            *slot = Some(weight);
        }
        let weights = out.map(|w| w.unwrap_or(0.0));
        if weights.iter().sum::<f64>() <= 0.0 {
            return Err("at least one weight must be above 0".into());
        }
        Ok(Self { weights })
    }

    /// Parses `8:1,9:2,10:1` (spaces around the parts allowed).
    pub fn parse(text: &str) -> Result<Self, String> {
        let pairs = text
            .split(',')
            .map(|part| {
                let (code, weight) = part
                    .split_once(':')
                    .ok_or_else(|| format!("{part:?} is not code:weight"))?;
                let code = code
                    .trim()
                    .parse::<u16>()
                    .map_err(|_| format!("{code:?} is not a code"))?;
                let weight = weight
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| format!("{weight:?} is not a weight"))?;
                Ok((code, weight))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Self::new(pairs)
    }

    /// The weight of `code` (0 for a code that is not 8, 9 or 10).
    pub fn weight(&self, code: u16) -> f64 {
        match code {
            8..=10 => self.weights[usize::from(code - 8)],
            _ => 0.0,
        }
    }

    /// Code → weight, every code included.
    pub fn to_map(&self) -> BTreeMap<u16, f64> {
        (8..=10).map(|code| (code, self.weight(code))).collect()
    }

    /// The reason a draw `u` in `[0, 1)` picks.
    fn pick(&self, u: f64) -> Reason {
        let total: f64 = self.weights.iter().sum();
        let mut at = u * total;
        for (reason, &weight) in VIBER_REASONS.iter().zip(&self.weights) {
            if weight > 0.0 && at < weight {
                return *reason;
            }
            at -= weight;
        }
        // Rounding left `at` a hair above the last weight: the last code that has one.
        let last = self.weights.iter().rposition(|&w| w > 0.0).unwrap_or(1);
        VIBER_REASONS[last]
    }
}

impl Default for ViberFailCodes {
    fn default() -> Self {
        Self { weights: [1.0; 3] }
    }
}

impl fmt::Display for ViberFailCodes {
    /// The form [`parse`](Self::parse) reads: `8:1,9:1,10:1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .to_map()
            .iter()
            .map(|(code, weight)| format!("{code}:{weight}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

// === impl Rules ===

impl Rules {
    /// The rules a configuration starts with.
    pub fn from_config(cfg: &SimConfig) -> Self {
        Self {
            seed: cfg.seed,
            viber_fail_rate: cfg.viber_fail_rate,
            viber_fail_codes: cfg.viber_fail_codes,
            sms_fallback_rate: cfg.sms_fallback_rate,
            sms_fail_rate: cfg.sms_fail_rate,
        }
    }

    /// The fate of message `seq` of company `company`, sent on `channel` to `phone` for a
    /// campaign with (or without) SMS fallback.
    pub fn fate(
        &self,
        company: usize,
        seq: usize,
        channel: Channel,
        sms_fallback: bool,
        phone: PhoneKey,
    ) -> Fate {
        let draw = |which| unit(self.seed, company as u64, seq as u64, which);
        match channel {
            Channel::Sms => {
                if draw(DRAW_FAIL) < self.sms_fail_rate {
                    Fate::Failed(Reason::SmsUndeliverable)
                } else {
                    Fate::Delivered
                }
            }
            Channel::Viber => {
                let failed = match self.viber_fail_rate {
                    None => (phone.last_digit() == 9).then_some(Reason::NotViberUser),
                    Some(rate) => (draw(DRAW_FAIL) < rate)
                        .then(|| self.viber_fail_codes.pick(draw(DRAW_CODE))),
                };
                match failed {
                    None => Fate::Delivered,
                    Some(reason)
                        if sms_fallback && draw(DRAW_FALLBACK) < self.sms_fallback_rate =>
                    {
                        Fate::ViaFallback(reason)
                    }
                    Some(reason) => Fate::Failed(reason),
                }
            }
        }
    }
}

impl Default for Rules {
    fn default() -> Self {
        Self::from_config(&SimConfig::default())
    }
}

// === impl Tally ===

impl Tally {
    /// Counts one message that became done.
    pub fn count(&mut self, fate: Fate) {
        match fate {
            Fate::Delivered => self.delivered += 1,
            Fate::ViaFallback(_) => {
                self.delivered += 1;
                self.sms_fallback_delivered += 1;
            }
            Fate::Failed(reason) => self.failed[reason.index()] += 1,
        }
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &Tally) {
        self.delivered += other.delivered;
        self.sms_fallback_delivered += other.sms_fallback_delivered;
        for (sum, n) in self.failed.iter_mut().zip(other.failed) {
            *sum += n;
        }
    }

    /// Failed messages by `details.code`, codes with none left out.
    pub fn failed_by_code(&self) -> BTreeMap<u16, u64> {
        Reason::ALL
            .iter()
            .zip(self.failed)
            .filter(|(_, n)| *n > 0)
            .map(|(reason, n)| (reason.details().code, n))
            .collect()
    }
}

/// A uniform number in `[0, 1)` from `(seed, company, seq, which)`.
fn unit(seed: u64, company: u64, seq: u64, which: u64) -> f64 {
    let h = mix(mix(mix(mix(seed) ^ company) ^ seq) ^ which);
    // The top 53 bits, exactly representable, scaled by 2^-53.
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// splitmix64's step: a bijective, well-mixed hash of a `u64`.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone(text: &str) -> PhoneKey {
        PhoneKey::parse(text).unwrap()
    }

    fn rules(viber_fail_rate: Option<f64>) -> Rules {
        Rules {
            viber_fail_rate,
            ..Rules::default()
        }
    }

    /// The fates of messages `0..n` of company 1, all to `to`.
    fn fates(r: &Rules, n: usize, channel: Channel, fallback: bool, to: &str) -> Vec<Fate> {
        (0..n)
            .map(|seq| r.fate(1, seq, channel, fallback, phone(to)))
            .collect()
    }

    fn count(fates: &[Fate], wanted: Fate) -> usize {
        fates.iter().filter(|f| **f == wanted).count()
    }

    #[test]
    fn defaults_keep_the_number_ending_in_9_rule() {
        let r = Rules::default();
        assert_eq!(r.viber_fail_rate, None);
        assert_eq!((r.sms_fallback_rate, r.sms_fail_rate), (1.0, 0.0));
        let nine = phone("38970000009");
        let one = phone("38970000001");
        for seq in 0..100 {
            assert_eq!(r.fate(1, seq, Channel::Viber, false, one), Fate::Delivered);
            let failed = Fate::Failed(Reason::NotViberUser);
            assert_eq!(r.fate(1, seq, Channel::Viber, false, nine), failed);
            let rescued = Fate::ViaFallback(Reason::NotViberUser);
            assert_eq!(r.fate(1, seq, Channel::Viber, true, nine), rescued);
            assert_eq!(r.fate(1, seq, Channel::Sms, false, nine), Fate::Delivered);
        }
    }

    #[test]
    fn the_fallback_rate_applies_to_the_number_ending_in_9_rule_too() {
        let r = Rules {
            sms_fallback_rate: 0.0,
            ..Rules::default()
        };
        let all = fates(&r, 50, Channel::Viber, true, "38970000009");
        assert_eq!(count(&all, Fate::Failed(Reason::NotViberUser)), 50);
    }

    #[test]
    fn rates_of_zero_and_one_are_exact() {
        let none = fates(
            &rules(Some(0.0)),
            1000,
            Channel::Viber,
            false,
            "38970000009",
        );
        assert_eq!(count(&none, Fate::Delivered), 1000, "the 9 rule is off");
        let all = fates(
            &rules(Some(1.0)),
            1000,
            Channel::Viber,
            false,
            "38970000001",
        );
        assert!(all.iter().all(|f| matches!(f, Fate::Failed(_))));
        let r = Rules {
            sms_fail_rate: 1.0,
            ..Rules::default()
        };
        let sms = fates(&r, 1000, Channel::Sms, true, "38970000001");
        assert_eq!(count(&sms, Fate::Failed(Reason::SmsUndeliverable)), 1000);
    }

    #[test]
    fn draws_follow_the_rates_and_the_code_weights() {
        let r = Rules {
            viber_fail_rate: Some(0.3),
            viber_fail_codes: ViberFailCodes::new([(8, 1.0), (9, 2.0), (10, 1.0)]).unwrap(),
            sms_fallback_rate: 0.5,
            ..Rules::default()
        };
        let n = 20_000;
        let all = fates(&r, n, Channel::Viber, true, "38970000001");
        let failed = all.iter().filter(|f| !matches!(f, Fate::Delivered)).count();
        let near = |got: usize, want: f64| (got as f64 - want).abs() < want * 0.06;
        assert!(near(failed, 0.3 * n as f64), "{failed} failed of {n}");
        let rescued = all
            .iter()
            .filter(|f| matches!(f, Fate::ViaFallback(_)))
            .count();
        assert!(near(rescued, failed as f64 * 0.5), "{rescued} of {failed}");
        let by_code =
            |reason| count(&all, Fate::Failed(reason)) + count(&all, Fate::ViaFallback(reason));
        let quarter = failed as f64 / 4.0;
        assert!(near(by_code(Reason::UserBlocked), quarter));
        assert!(near(by_code(Reason::NotViberUser), 2.0 * quarter));
        assert!(near(by_code(Reason::NoSuitableDevice), quarter));
    }

    #[test]
    fn a_draw_depends_on_the_seed_company_and_message_only() {
        let r = rules(Some(0.5));
        let pattern = |r: &Rules, company, to| -> Vec<bool> {
            (0..64)
                .map(|seq| {
                    r.fate(company, seq, Channel::Viber, false, phone(to)) == Fate::Delivered
                })
                .collect()
        };
        let base = pattern(&r, 1, "38970000001");
        assert_eq!(base, pattern(&r, 1, "38970000001"), "repeatable");
        assert_eq!(base, pattern(&r, 1, "38970000009"), "not the number");
        assert_ne!(base, pattern(&r, 2, "38970000001"), "the company");
        let other_seed = Rules { seed: 2, ..r };
        assert_ne!(base, pattern(&other_seed, 1, "38970000001"), "the seed");
    }

    #[test]
    fn the_hash_is_pinned_so_counts_stay_predictable() {
        // Seed 1, company 1, messages 0..1000 at a rate of 0.5: changing the hash or the
        // draws changes these numbers, and every test or demo that predicted them.
        let all = fates(
            &rules(Some(0.5)),
            1000,
            Channel::Viber,
            false,
            "38970000001",
        );
        let failed: Vec<usize> = [
            Reason::UserBlocked,
            Reason::NotViberUser,
            Reason::NoSuitableDevice,
        ]
        .map(|reason| count(&all, Fate::Failed(reason)))
        .to_vec();
        assert_eq!(failed, PINNED);
    }

    /// Failures with codes 8, 9, 10 (489 of 1000, weights 1:1:1); see the test above.
    const PINNED: [usize; 3] = [154, 156, 179];

    #[test]
    fn fail_codes_parse_and_refuse() {
        let codes = ViberFailCodes::parse("8:1, 9:2 ,10:0.5").unwrap();
        assert_eq!(
            codes.to_map(),
            BTreeMap::from([(8, 1.0), (9, 2.0), (10, 0.5)])
        );
        assert_eq!(ViberFailCodes::parse("9:1").unwrap().weight(8), 0.0);
        assert_eq!(codes.to_string(), "8:1,9:2,10:0.5");
        assert_eq!(ViberFailCodes::parse(&codes.to_string()), Ok(codes));
        for bad in [
            "", "9", "7:1", "9:1,9:2", "9:-1", "9:inf", "9:NaN", "8:0,9:0", "x:1", "9:y",
        ] {
            assert!(
                ViberFailCodes::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn a_zero_weight_code_is_never_drawn() {
        let only_ten = ViberFailCodes::parse("8:0,9:0,10:3").unwrap();
        for i in 0..1000 {
            let u = f64::from(i) / 1000.0;
            assert_eq!(only_ten.pick(u), Reason::NoSuitableDevice);
        }
        // The largest draw, and 1 itself for the rounding path: still a weighted code.
        for u in [1.0 - f64::EPSILON / 2.0, 1.0] {
            assert_eq!(only_ten.pick(u), Reason::NoSuitableDevice);
            let no_ten = ViberFailCodes::parse("8:1,9:1").unwrap();
            assert_eq!(no_ten.pick(u), Reason::NotViberUser);
        }
    }

    #[test]
    fn a_tally_counts_fallback_as_delivered_and_failures_by_code() {
        let mut t = Tally::default();
        t.count(Fate::Delivered);
        t.count(Fate::ViaFallback(Reason::UserBlocked));
        t.count(Fate::Failed(Reason::NoSuitableDevice));
        t.count(Fate::Failed(Reason::NoSuitableDevice));
        t.count(Fate::Failed(Reason::SmsUndeliverable));
        let mut sum = Tally::default();
        sum.add(&t);
        sum.add(&t);
        assert_eq!((sum.delivered, sum.sms_fallback_delivered), (4, 2));
        assert_eq!(sum.failed_by_code(), BTreeMap::from([(1, 2), (10, 4)]));
    }
}
