//! One company's world: its templates, campaigns and queue, and how messages that
//! leave the queue turn into campaign counters and message statuses.
//!
//! `state.rs` finds the company for an API key and applies the cross-company rules
//! (ids, `max_pending`); this file holds what happens inside one company.
//!
//! Message outcomes are deterministic so that tests and demos can predict them: SMS
//! messages are always Delivered; a Viber message to a number ending in `9` is treated as
//! "not a Viber user" (code 9) and is Failed, or Delivered with
//! `deliveredViaSmsFallback: true` when the campaign's template has
//! `smsFallbackEnabled`. All other Viber messages are Delivered.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, UNIX_EPOCH};

use tokio::time::Instant;

use super::model::{
    CampaignStatus, CampaignType, CampaignView, Channel, Details, Id, MessageStatus, MessageView,
    Template,
};
use super::phone::PhoneKey;
use super::queue::{Queue, Record, Stage};

/// What one API key owns.
#[derive(Debug)]
pub struct Company {
    /// 1-based position of the key in the configuration; part of every message id.
    pub index: usize,
    pub templates: HashMap<Id, Template>,
    pub campaigns: HashMap<Id, Campaign>,
    pub queue: Queue,
}

/// A campaign and its running counters.
#[derive(Debug)]
pub struct Campaign {
    pub view: CampaignView,
    /// Copied from the template at creation: Viber failures are delivered by SMS instead.
    pub sms_fallback: bool,
    /// Every phone number accepted for this campaign, to count duplicates.
    pub seen: HashSet<PhoneKey>,
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

/// How a message that left the queue ended.
enum Outcome {
    Delivered,
    DeliveredViaFallback,
    Failed,
}

/// The id of message `seq` of company `index`: unique across companies.
pub fn message_id(index: usize, seq: usize) -> String {
    format!("msg-{index}-{seq}")
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-12-01T22:05:19.123Z`.
fn created_at(unix_ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(at).to_string()
}

// === impl Company ===

impl Company {
    /// An empty company; `index` is its key's 1-based position in the configuration.
    pub fn new(index: usize, drain_rate: f64, now: Instant) -> Self {
        Self {
            index,
            templates: HashMap::new(),
            campaigns: HashMap::new(),
            queue: Queue::new(drain_rate, now),
        }
    }

    /// The campaign checks of a send, in order: exists, InProgress, type, channel.
    pub fn check_send(&self, id: Id, kind: SendKind) -> Result<(), SendError> {
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
    pub fn advance(&mut self, now: Instant) {
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

    /// Message `seq` as the messages query lists it, status as of the last advance.
    /// Viber messages that are done say whether SMS fallback delivered them.
    pub fn message_view(&self, seq: usize, record: &Record) -> Option<MessageView> {
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
            created_at: created_at(self.queue.created_ms(seq)),
            status,
            details,
            delivered_via_sms_fallback: fallback,
        })
    }
}

// === impl Campaign ===

impl Campaign {
    /// A campaign with zeroed counters.
    pub fn new(view: CampaignView, sms_fallback: bool) -> Self {
        Self {
            view,
            sms_fallback,
            seen: HashSet::new(),
        }
    }

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
