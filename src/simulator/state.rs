//! The simulator's world, as pure logic: companies, their templates and campaigns, the
//! messages they accepted and the pending-message capacity that produces the 429.
//!
//! Nothing here knows HTTP. Handlers call in with an API key (already authenticated), a
//! parsed request and `now` (a `tokio::time::Instant`, so tests can pause time), and get
//! back data or a typed error to render.
//!
//! Message outcomes are deterministic so that tests and demos can predict them: SMS
//! messages are always Delivered; a Viber message to a number ending in `9` is treated as
//! "not a Viber user" (code 9) and is Failed, or Delivered with
//! `deliveredViaSmsFallback: true` when the campaign's template has
//! `smsFallbackEnabled`. All other Viber messages are Delivered.

use std::collections::{BTreeMap, HashMap, HashSet};

use tokio::time::Instant;

use super::model::{
    CampaignStatus, CampaignType, CampaignView, Channel, Details, Id, MessageStatus, MessageView,
    Template,
};
use super::phone::PhoneKey;
use super::queue::{Queue, Record, Stage};

/// Field name → message, as in the seed's `validationErrors`.
pub type Errors = BTreeMap<String, String>;

/// All companies, keyed by API key, plus the id counters and the capacity limit.
#[derive(Debug)]
pub struct State {
    companies: HashMap<String, Company>,
    next_template: Id,
    next_campaign: Id,
    max_pending: u64,
}

/// What one API key owns.
#[derive(Debug)]
struct Company {
    /// 1-based position of the key in the configuration; part of every message id.
    index: usize,
    templates: HashMap<Id, Template>,
    campaigns: HashMap<Id, Campaign>,
    queue: Queue,
}

/// A campaign and its running counters.
#[derive(Debug)]
struct Campaign {
    view: CampaignView,
    /// Copied from the template at creation: Viber failures are delivered by SMS instead.
    sms_fallback: bool,
    /// Every phone number accepted for this campaign, to count duplicates.
    seen: HashSet<PhoneKey>,
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

/// Which send endpoint was called: bulk or single, and the channel in its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendKind {
    pub bulk: bool,
    pub channel: Channel,
}

/// Why a send was refused, in the order the checks run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendError {
    CampaignNotFound,
    NotActive(CampaignStatus),
    /// A single send to a bulk campaign.
    BulkCampaign,
    /// A bulk send to a transactional campaign.
    NotBulk,
    /// The path's channel, which the campaign is not.
    WrongChannel(Channel),
    /// Accepting would take the company over `max_allowed` pending messages.
    OverCapacity {
        pending: u64,
        requested: u64,
        max_allowed: u64,
    },
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

/// How a message that left the queue ended.
enum Outcome {
    Delivered,
    DeliveredViaFallback,
    Failed,
}

// === impl State ===

impl State {
    /// One company per key in `api_keys`, each with an empty queue draining at `drain_rate`.
    pub fn new(api_keys: &[String], max_pending: u64, drain_rate: f64, now: Instant) -> Self {
        let companies = api_keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let company = Company {
                    index: i + 1,
                    templates: HashMap::new(),
                    campaigns: HashMap::new(),
                    queue: Queue::new(drain_rate, now),
                };
                (key.clone(), company)
            })
            .collect();
        Self {
            companies,
            next_template: 1,
            next_campaign: 1,
            max_pending,
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
        let campaign = Campaign {
            view: view.clone(),
            sms_fallback,
            seen: HashSet::new(),
        };
        company.campaigns.insert(view.id, campaign);
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
    /// exceed `max_pending`).
    pub fn accept(
        &mut self,
        key: &str,
        id: Id,
        kind: SendKind,
        phones: &[PhoneKey],
        now: Instant,
    ) -> Result<Accepted, SendError> {
        let company = self
            .companies
            .get_mut(key)
            .ok_or(SendError::CampaignNotFound)?;
        company.check_send(id, kind)?;
        company.advance(now);
        let pending = company.queue.pending();
        let requested = phones.len() as u64;
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
            .filter(|(_, r)| r.phone == phone && campaign.map_or(true, |id| r.campaign == id))
            .filter_map(|(seq, r)| company.message_view(seq, r))
            .collect();
        Some(views)
    }
}

/// The id of message `seq` of company `index`: unique across companies.
fn message_id(index: usize, seq: usize) -> String {
    format!("msg-{index}-{seq}")
}

// === impl Company ===

impl Company {
    fn check_send(&self, id: Id, kind: SendKind) -> Result<(), SendError> {
        let campaign = &self
            .campaigns
            .get(&id)
            .ok_or(SendError::CampaignNotFound)?
            .view;
        if campaign.status != CampaignStatus::InProgress {
            return Err(SendError::NotActive(campaign.status));
        }
        match (kind.bulk, campaign.kind) {
            (false, CampaignType::Bulk) => return Err(SendError::BulkCampaign),
            (true, CampaignType::Transactional) => return Err(SendError::NotBulk),
            _ => {}
        }
        if kind.channel != campaign.channel {
            return Err(SendError::WrongChannel(kind.channel));
        }
        Ok(())
    }

    /// Drains the queue up to `now` and moves the messages that changed stage into their
    /// campaigns' counters.
    fn advance(&mut self, now: Instant) {
        let progress = self.queue.advance(now);
        let records = self.queue.records();
        for record in &records[progress.left_pending] {
            if let Some(c) = self.campaigns.get_mut(&record.campaign) {
                c.view.sent_count += 1;
            }
        }
        for record in &records[progress.done] {
            if let Some(c) = self.campaigns.get_mut(&record.campaign) {
                match c.outcome(record.phone) {
                    Outcome::Delivered => c.view.delivered_count += 1,
                    Outcome::DeliveredViaFallback => {
                        c.view.delivered_count += 1;
                        c.view.sms_fallback_delivered_count += 1;
                    }
                    Outcome::Failed => c.view.failed_count += 1,
                }
            }
        }
    }

    fn message_view(&self, seq: usize, record: &Record) -> Option<MessageView> {
        let campaign = self.campaigns.get(&record.campaign)?;
        let channel = campaign.view.channel;
        let (status, details, fallback) = match self.queue.stage(seq) {
            Stage::Pending => (MessageStatus::Pending, None, None),
            Stage::Sending => (MessageStatus::Sending, None, None),
            Stage::Done => match campaign.outcome(record.phone) {
                Outcome::Delivered if channel == Channel::Viber => {
                    (MessageStatus::Delivered, None, Some(false))
                }
                Outcome::Delivered => (MessageStatus::Delivered, None, None),
                Outcome::DeliveredViaFallback => (
                    MessageStatus::Delivered,
                    Some(Details::NOT_VIBER_USER),
                    Some(true),
                ),
                Outcome::Failed => (
                    MessageStatus::Failed,
                    Some(Details::NOT_VIBER_USER),
                    Some(false),
                ),
            },
        };
        Some(MessageView {
            message_id: message_id(self.index, seq),
            campaign_id: record.campaign,
            phone_number: record.phone.to_string(),
            channel,
            status,
            details,
            delivered_via_sms_fallback: fallback,
        })
    }
}

// === impl Campaign ===

impl Campaign {
    /// The module's deterministic rule: Viber to a number ending in 9 is not a Viber user.
    fn outcome(&self, phone: PhoneKey) -> Outcome {
        if self.view.channel == Channel::Viber && phone.last_digit() == 9 {
            if self.sms_fallback {
                Outcome::DeliveredViaFallback
            } else {
                Outcome::Failed
            }
        } else {
            Outcome::Delivered
        }
    }
}

#[cfg(test)]
mod tests;
