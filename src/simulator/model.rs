//! The simulator's resources as the API shows them: channels, templates, campaigns and
//! messages, with their JSON field names.
//!
//! These are plain data with `Serialize`; the rules that create and change them live in
//! `state.rs` (ownership, capacity, counters) and `validate.rs` (request bodies).

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// A template, campaign or Viber service id. Ids are global across companies, so one
/// company asking for another's id gets a 404 rather than someone else's resource.
pub type Id = u32;

/// The channel of a template, a campaign or a send path (`.../bulk/sms`, `.../viber`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Channel {
    #[serde(rename = "SMS")]
    Sms,
    Viber,
}

/// A campaign's type: bulk campaigns take bulk sends, transactional ones single sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CampaignType {
    Bulk,
    Transactional,
}

/// A campaign's lifecycle: created as Draft; sends are accepted only when InProgress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CampaignStatus {
    Draft,
    InProgress,
}

/// A message template, as created by `POST /api/v1/templates` and returned by `GET`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Template {
    pub id: Id,
    pub name: String,
    pub template_content: String,
    pub channel: Channel,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_type: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub viber_service_id: Option<Id>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub survey: Option<Survey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carousel: Option<Carousel>,
    pub sms_fallback_enabled: bool,
}

/// A survey (Viber message type 6): a question and its answer options.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Survey {
    pub question: String,
    pub options: Vec<String>,
}

/// A carousel: a title and its items, each kept as sent.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Carousel {
    pub title: String,
    pub items: Vec<Value>,
}

/// A campaign as `GET /api/v1/campaigns/{id}` shows it, counters as of the request.
///
/// `sentCount` counts messages that have left Pending (Sending, Delivered or Failed);
/// `deliveredCount` includes those delivered through SMS fallback, which
/// `smsFallbackDeliveredCount` counts again on their own; `acceptedCount` is every
/// message the campaign has accepted.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CampaignView {
    pub id: Id,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: CampaignType,
    pub channel: Channel,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_id: Option<Id>,
    pub status: CampaignStatus,
    pub accepted_count: u64,
    pub sent_count: u64,
    pub delivered_count: u64,
    pub failed_count: u64,
    pub sms_fallback_delivered_count: u64,
}

/// A message's status in the messages query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum MessageStatus {
    Pending,
    Sending,
    Delivered,
    Failed,
}

/// Why a message was not delivered on its channel: the seed's Viber error codes, or the
/// simulator's own code 1 for an SMS (see `outcome.rs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Details {
    pub code: u16,
    pub error: &'static str,
}

/// One message as `GET /api/v1/messages` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    pub message_id: String,
    pub campaign_id: Id,
    pub phone_number: String,
    pub channel: Channel,
    /// When the API accepted the message: RFC 3339 UTC with milliseconds.
    pub created_at: String,
    pub status: MessageStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_via_sms_fallback: Option<bool>,
}

// === impl Channel ===

impl Channel {
    /// Parses `sms` / `viber` in any letter case (paths use lower case, bodies `SMS`).
    pub fn parse(text: &str) -> Option<Channel> {
        if text.eq_ignore_ascii_case("sms") {
            Some(Channel::Sms)
        } else if text.eq_ignore_ascii_case("viber") {
            Some(Channel::Viber)
        } else {
            None
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Channel::Sms => "SMS",
            Channel::Viber => "Viber",
        })
    }
}

// === impl CampaignType ===

impl CampaignType {
    /// Parses `Bulk` / `Transactional` in any letter case.
    pub fn parse(text: &str) -> Option<CampaignType> {
        if text.eq_ignore_ascii_case("bulk") {
            Some(CampaignType::Bulk)
        } else if text.eq_ignore_ascii_case("transactional") {
            Some(CampaignType::Transactional)
        } else {
            None
        }
    }
}

// === impl CampaignStatus ===

impl fmt::Display for CampaignStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CampaignStatus::Draft => "Draft",
            CampaignStatus::InProgress => "InProgress",
        })
    }
}

// === impl Details ===

impl Details {
    /// Viber error 8: the user blocked the Viber service (SMS fallback applies).
    pub const USER_BLOCKED: Details = Details {
        code: 8,
        error: "USER_BLOCKED",
    };
    /// Viber error 9: the recipient is not registered on Viber (SMS fallback applies).
    pub const NOT_VIBER_USER: Details = Details {
        code: 9,
        error: "NOT_VIBER_USER",
    };
    /// Viber error 10: no compatible device for Viber (SMS fallback applies).
    pub const NO_SUITABLE_DEVICE: Details = Details {
        code: 10,
        error: "NO_SUITABLE_DEVICE",
    };
    /// An SMS that was not delivered. The provider documents no SMS error codes: this is
    /// the simulator's choice.
    pub const SMS_UNDELIVERABLE: Details = Details {
        code: 1,
        error: "UNDELIVERABLE",
    };
}

/// A Viber sender identity, as `GET /api/v1/viber-services` lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ViberService {
    pub id: Id,
    pub name: &'static str,
}

/// The fixed Viber services every company has; templates may name one by id.
pub const VIBER_SERVICES: [ViberService; 2] = [
    ViberService {
        id: 1,
        name: "Sluice Demo",
    },
    ViberService {
        id: 2,
        name: "Sluice Alerts",
    },
];
