//! The simulator's world, as pure logic: companies, their templates and campaigns, the
//! messages they accepted and the pending-message capacity that produces the 429.
//!
//! Nothing here knows HTTP. Handlers call in with an API key (already authenticated), a
//! parsed request and `now` (a `tokio::time::Instant`, so tests can pause time), and get
//! back data or a typed error to render.
//!
//! What happens inside one company (counters, statuses, the deterministic Viber outcome
//! rule) is in `company.rs`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::company::{message_id, Campaign, Company};
pub use super::company::{SendError, SendKind};
use super::faults::CapacityFlip;
use super::model::{
    CampaignStatus, CampaignType, CampaignView, Channel, Id, MessageView, Template,
};
use super::phone::PhoneKey;
use super::queue::Record;

/// Field name → message, as in the seed's `validationErrors`.
pub type Errors = BTreeMap<String, String>;

/// All companies, keyed by API key, plus the id counters and the capacity limit.
#[derive(Debug)]
pub struct State {
    companies: HashMap<String, Company>,
    next_template: Id,
    next_campaign: Id,
    max_pending: u64,
    /// While it says full, every send is refused as if every company were at `max_pending`.
    flip: Option<CapacityFlip>,
}

/// A campaign to create, from a validated `POST /api/v1/campaigns` body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CampaignDraft {
    pub name: String,
    pub kind: CampaignType,
    pub channel: Channel,
    pub template_id: Option<Id>,
}

/// Why a campaign could not be created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CampaignError {
    TemplateNotFound,
    Invalid(Errors),
}

/// The result of an accepted send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub count: u64,
    /// Id of the first message accepted (the only one for a single send).
    pub first_message_id: String,
    /// Recipients not accepted for this campaign before.
    pub distinct_new: u64,
    /// Recipients already accepted for this campaign before (each extra time counts).
    pub duplicates: u64,
}

// === impl State ===

impl State {
    /// One company per key in `api_keys`, each with an empty queue draining at `drain_rate`.
    pub fn new(api_keys: &[String], max_pending: u64, drain_rate: f64, now: Instant) -> Self {
        let companies = api_keys
            .iter()
            .enumerate()
            .map(|(i, key)| (key.clone(), Company::new(i + 1, drain_rate, now)))
            .collect();
        Self {
            companies,
            next_template: 1,
            next_campaign: 1,
            max_pending,
            flip: None,
        }
    }

    /// True when `key` is exactly one of the configured keys.
    pub fn is_known(&self, key: &str) -> bool {
        self.companies.contains_key(key)
    }

    /// Changes `maxAllowed` for every company from now on.
    pub fn set_max_pending(&mut self, max: u64) {
        self.max_pending = max;
    }

    /// `maxAllowed`, as set.
    pub fn max_pending(&self) -> u64 {
        self.max_pending
    }

    /// Capacity flips every `period` from `now` on (`None` or zero: never).
    pub fn set_capacity_flip(&mut self, period: Option<Duration>, now: Instant) {
        self.flip = period.and_then(|p| CapacityFlip::new(p, now));
    }

    /// The period of the capacity flips, if they are on.
    pub fn capacity_flip(&self) -> Option<Duration> {
        self.flip.map(|f| f.period())
    }

    /// The company's pending messages as of `now`, rounded down.
    #[cfg(test)]
    pub fn pending(&mut self, key: &str, now: Instant) -> Option<u64> {
        let company = self.companies.get_mut(key)?;
        company.advance(now);
        Some(company.queue.pending())
    }

    /// Stores a validated template, adding the per-company name-uniqueness rule to the
    /// validation errors already found. Returns the stored template with its new id.
    pub fn create_template(
        &mut self,
        key: &str,
        mut draft: Template,
        mut errors: Errors,
    ) -> Result<Template, Errors> {
        let Some(company) = self.companies.get_mut(key) else {
            return Err(errors);
        };
        let name_taken = company.templates.values().any(|t| t.name == draft.name);
        if name_taken && !draft.name.is_empty() {
            errors.insert("name".into(), "Template name must be unique".into());
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        draft.id = self.next_template;
        self.next_template += 1;
        company.templates.insert(draft.id, draft.clone());
        Ok(draft)
    }

    /// The company's template `id`, if it owns one.
    pub fn template(&self, key: &str, id: Id) -> Option<Template> {
        self.companies.get(key)?.templates.get(&id).cloned()
    }

    /// Deletes the company's template `id`; false when it owns none. Campaigns made from
    /// it keep working (they copied what they need).
    pub fn delete_template(&mut self, key: &str, id: Id) -> bool {
        self.companies
            .get_mut(key)
            .is_some_and(|c| c.templates.remove(&id).is_some())
    }

    /// Creates a Draft campaign. A given template must belong to the company and have
    /// the campaign's channel.
    pub fn create_campaign(
        &mut self,
        key: &str,
        draft: CampaignDraft,
    ) -> Result<CampaignView, CampaignError> {
        let company = self
            .companies
            .get_mut(key)
            .ok_or(CampaignError::TemplateNotFound)?;
        let mut sms_fallback = false;
        if let Some(template_id) = draft.template_id {
            let template = company
                .templates
                .get(&template_id)
                .ok_or(CampaignError::TemplateNotFound)?;
            if template.channel != draft.channel {
                let message = format!(
                    "Template {} is a {} template; the campaign's channel is {}",
                    template.id, template.channel, draft.channel
                );
                return Err(CampaignError::Invalid(Errors::from([(
                    "templateId".to_string(),
                    message,
                )])));
            }
            sms_fallback = template.sms_fallback_enabled;
        }
        let view = CampaignView {
            id: self.next_campaign,
            name: draft.name,
            kind: draft.kind,
            channel: draft.channel,
            template_id: draft.template_id,
            status: CampaignStatus::Draft,
            accepted_count: 0,
            sent_count: 0,
            delivered_count: 0,
            failed_count: 0,
            sms_fallback_delivered_count: 0,
        };
        self.next_campaign += 1;
        company
            .campaigns
            .insert(view.id, Campaign::new(view.clone(), sms_fallback));
        Ok(view)
    }

    /// The company's campaign `id` with its counters as of `now`.
    pub fn campaign(&mut self, key: &str, id: Id, now: Instant) -> Option<CampaignView> {
        let company = self.companies.get_mut(key)?;
        company.advance(now);
        company.campaigns.get(&id).map(|c| c.view.clone())
    }

    /// Moves the campaign to InProgress (starting one already InProgress changes nothing).
    pub fn start_campaign(&mut self, key: &str, id: Id, now: Instant) -> Option<CampaignView> {
        let company = self.companies.get_mut(key)?;
        company.advance(now);
        let campaign = company.campaigns.get_mut(&id)?;
        campaign.view.status = CampaignStatus::InProgress;
        Some(campaign.view.clone())
    }

    /// Every check a send passes before its body matters: the campaign exists and is the
    /// company's, is InProgress, has the endpoint's type and channel.
    pub fn check_send(&self, key: &str, id: Id, kind: SendKind) -> Result<(), SendError> {
        let company = self.companies.get(key).ok_or(SendError::CampaignNotFound)?;
        company.check_send(id, kind)
    }

    /// Accepts `phones` for campaign `id` whole, or refuses them whole: the checks of
    /// [`check_send`](Self::check_send), then capacity (`pending + requested` must not
    /// exceed `max_pending`; during a full period of the capacity flips, nothing fits and
    /// the company counts as `max_pending` pending). `wall` is the wall-clock time the
    /// messages list as their `createdAt`.
    pub fn accept(
        &mut self,
        key: &str,
        id: Id,
        kind: SendKind,
        phones: &[PhoneKey],
        now: Instant,
        wall: SystemTime,
    ) -> Result<Accepted, SendError> {
        let company = self
            .companies
            .get_mut(key)
            .ok_or(SendError::CampaignNotFound)?;
        company.check_send(id, kind)?;
        company.advance(now);
        let requested = phones.len() as u64;
        if self.flip.is_some_and(|flip| flip.full(now)) {
            return Err(SendError::OverCapacity {
                pending: self.max_pending,
                requested,
                max_allowed: self.max_pending,
            });
        }
        let pending = company.queue.pending();
        if pending.saturating_add(requested) > self.max_pending {
            return Err(SendError::OverCapacity {
                pending,
                requested,
                max_allowed: self.max_pending,
            });
        }
        let campaign = company
            .campaigns
            .get_mut(&id)
            .ok_or(SendError::CampaignNotFound)?;
        let first_seq = company.queue.records().len();
        let (mut distinct_new, mut duplicates) = (0, 0);
        company.queue.reserve(phones.len());
        company.queue.start_batch(unix_ms(wall));
        for &phone in phones {
            company.queue.push(Record {
                phone,
                campaign: id,
            });
            if campaign.seen.insert(phone) {
                distinct_new += 1;
            } else {
                duplicates += 1;
            }
        }
        campaign.view.accepted_count += requested;
        // New messages may fall inside the Sending window at once.
        company.advance(now);
        Ok(Accepted {
            count: requested,
            first_message_id: message_id(company.index, first_seq),
            distinct_new,
            duplicates,
        })
    }

    /// The company's messages to `phone` (optionally only campaign `campaign`), oldest
    /// first, with statuses as of `now`. `None` when the campaign filter names a campaign
    /// the company does not own. This scans the company's messages: 16 bytes each, fast
    /// enough for a query meant for troubleshooting.
    pub fn messages(
        &mut self,
        key: &str,
        phone: PhoneKey,
        campaign: Option<Id>,
        now: Instant,
    ) -> Option<Vec<MessageView>> {
        let company = self.companies.get_mut(key)?;
        if campaign.is_some_and(|id| !company.campaigns.contains_key(&id)) {
            return None;
        }
        company.advance(now);
        let views = company
            .queue
            .records()
            .iter()
            .enumerate()
            .filter(|(_, r)| r.phone == phone && campaign.is_none_or(|id| r.campaign == id))
            .filter_map(|(seq, r)| company.message_view(seq, r))
            .collect();
        Some(views)
    }
}

/// Milliseconds since the Unix epoch (0 before it, saturating far after it).
fn unix_ms(wall: SystemTime) -> u64 {
    let ms = wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    u64::try_from(ms).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
