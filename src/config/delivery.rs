//! `[delivery]`: the settings of following messages after the API accepted them
//! (`crate::delivery`) and of the support journal. Kept with the rest of the
//! configuration, so that reading the config needs nothing of what acts on it.

use std::time::Duration;

use serde::Deserialize;

/// `[delivery]`: following messages after the API accepted them, and the support journal.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Look messages and campaigns up after the API accepted them (the support journal is
    /// kept either way).
    pub enabled: bool,
    /// Most lookups per second, across all keys.
    pub lookups_per_sec: u32,
    /// Most messages and campaigns taken per round of lookups.
    pub batch: u32,
    /// The first lookup this long after the API accepted a send; each next one waits
    /// twice as long as the last, up to `max_check_interval_ms`.
    pub first_check_ms: u64,
    pub max_check_interval_ms: u64,
    /// A message or campaign not ended this long after it was accepted is no longer
    /// looked up.
    pub give_up_after_secs: u64,
    /// The messages query: `{phoneNumber}` is the single send's number, every other
    /// `{name}` a segment of its route's path.
    pub messages_path: String,
    /// A campaign's counters: `{name}` is a segment of the bulk route's path.
    pub campaign_path: String,
    /// Journal entries, and messages and campaigns no longer looked up, are deleted this
    /// long after their last change.
    pub retention_secs: u64,
    /// Most journal entries kept; the oldest go first.
    pub max_journal_entries: u64,
}

// === impl DeliveryConfig ===

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            lookups_per_sec: 20,
            batch: 200,
            first_check_ms: 5_000,
            max_check_interval_ms: 300_000,
            give_up_after_secs: 172_800,
            messages_path: crate::routes::DEFAULT_LOOKUP.into(),
            campaign_path: "/api/v1/campaigns/{campaignId}".into(),
            retention_secs: 604_800,
            max_journal_entries: 1_000_000,
        }
    }
}

impl DeliveryConfig {
    /// Refuses values that make no sense: `(key, why)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.lookups_per_sec == 0 {
            return Err(("delivery.lookups_per_sec", "must be at least 1".into()));
        }
        if self.batch == 0 {
            return Err(("delivery.batch", "must be at least 1".into()));
        }
        if self.first_check_ms == 0 || self.max_check_interval_ms < self.first_check_ms {
            return Err((
                "delivery.max_check_interval_ms",
                "first_check_ms must be above 0 and max_check_interval_ms at least first_check_ms"
                    .into(),
            ));
        }
        if !self.messages_path.starts_with('/') || !self.messages_path.contains("{phoneNumber}") {
            return Err((
                "delivery.messages_path",
                "must start with '/' and contain {phoneNumber}".into(),
            ));
        }
        if !self.campaign_path.starts_with('/') {
            return Err(("delivery.campaign_path", "must start with '/'".into()));
        }
        if self.retention_secs == 0 || self.max_journal_entries == 0 {
            return Err((
                "delivery.retention_secs",
                "retention_secs and max_journal_entries must be above 0".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn first_check(&self) -> Duration {
        Duration::from_millis(self.first_check_ms)
    }
}
