//! Unit tests of the world's pure logic: the capacity model as the 429 sees it, message
//! statuses and campaign counters over (paused) time, ownership and the send checks.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::{advance, Instant};

use super::*;
use crate::simulator::model::{Details, MessageStatus};
use crate::simulator::outcome::{Rules, Tally};

const A: &str = "key-a";
const B: &str = "key-b";

fn world(max_pending: u64, drain_rate: f64) -> State {
    let keys = [A.to_string(), B.to_string()];
    State::new(&keys, max_pending, drain_rate, Instant::now())
}

fn template(name: &str, channel: Channel, sms_fallback: bool) -> Template {
    Template {
        id: 0,
        name: name.into(),
        template_content: "Hello {name}".into(),
        channel,
        message_type: (channel == Channel::Viber).then_some(1),
        viber_service_id: None,
        image_url: None,
        survey: None,
        carousel: None,
        sms_fallback_enabled: sms_fallback,
    }
}

/// Creates and starts a campaign; returns its id.
fn started(s: &mut State, key: &str, kind: CampaignType, channel: Channel) -> Id {
    started_with(s, key, kind, channel, None)
}

fn started_with(
    s: &mut State,
    key: &str,
    kind: CampaignType,
    channel: Channel,
    template_id: Option<Id>,
) -> Id {
    let draft = CampaignDraft {
        name: "c".into(),
        kind,
        channel,
        template_id,
    };
    let id = s.create_campaign(key, draft).unwrap().id;
    s.start_campaign(key, id, Instant::now()).unwrap();
    id
}

/// 2026-12-01T22:05:19.123Z: the wall-clock time the tests accept messages at.
const WALL_MS: u64 = 1_796_162_719_123;

fn wall() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(WALL_MS)
}

fn phones(n: u64) -> Vec<PhoneKey> {
    (0..n)
        .map(|i| PhoneKey::parse(&format!("3897{:07}", i * 10)).unwrap())
        .collect()
}

const BULK_SMS: SendKind = SendKind {
    bulk: true,
    channel: Channel::Sms,
};

#[tokio::test(start_paused = true)]
async fn capacity_refuses_whole_and_reports_the_seed_numbers() {
    let mut s = world(100, 10.0);
    let id = started(&mut s, A, CampaignType::Bulk, Channel::Sms);
    assert_eq!(
        s.accept(A, id, BULK_SMS, &phones(80), Instant::now(), wall())
            .unwrap()
            .count,
        80
    );

    let refused = s.accept(A, id, BULK_SMS, &phones(30), Instant::now(), wall());
    let expected = SendError::OverCapacity {
        pending: 80,
        requested: 30,
        max_allowed: 100,
    };
    assert_eq!(refused, Err(expected));
    assert_eq!(
        s.pending(A, Instant::now()),
        Some(80),
        "a refusal accepts nothing"
    );

    advance(Duration::from_millis(1550)).await; // 15.5 drained: 64.5 pending
    let refused = s.accept(A, id, BULK_SMS, &phones(40), Instant::now(), wall());
    assert!(matches!(
        refused,
        Err(SendError::OverCapacity { pending: 64, .. })
    ));
    assert!(s
        .accept(A, id, BULK_SMS, &phones(35), Instant::now(), wall())
        .is_ok());
}

#[tokio::test(start_paused = true)]
async fn capacity_is_per_company_and_a_batch_over_the_limit_never_fits() {
    let mut s = world(100, 1000.0);
    let a = started(&mut s, A, CampaignType::Bulk, Channel::Sms);
    let b = started(&mut s, B, CampaignType::Bulk, Channel::Sms);
    assert!(s
        .accept(A, a, BULK_SMS, &phones(100), Instant::now(), wall())
        .is_ok());
    assert!(s
        .accept(B, b, BULK_SMS, &phones(100), Instant::now(), wall())
        .is_ok());

    advance(Duration::from_secs(3600)).await;
    assert_eq!(s.pending(A, Instant::now()), Some(0));
    let refused = s.accept(A, a, BULK_SMS, &phones(101), Instant::now(), wall());
    assert!(matches!(
        refused,
        Err(SendError::OverCapacity {
            pending: 0,
            requested: 101,
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn lowering_max_pending_applies_to_the_next_send() {
    let mut s = world(100, 0.0);
    let id = started(&mut s, A, CampaignType::Bulk, Channel::Sms);
    s.set_max_pending(5);
    assert!(s
        .accept(A, id, BULK_SMS, &phones(6), Instant::now(), wall())
        .is_err());
    assert!(s
        .accept(A, id, BULK_SMS, &phones(5), Instant::now(), wall())
        .is_ok());
}

#[tokio::test(start_paused = true)]
async fn capacity_flips_refuse_everything_every_other_period() {
    let mut s = world(100, 0.0);
    let id = started(&mut s, A, CampaignType::Bulk, Channel::Sms);
    let period = Duration::from_secs(10);
    s.set_capacity_flip(Some(period), Instant::now());
    assert_eq!(s.capacity_flip(), Some(period));
    let send = |s: &mut State, n| s.accept(A, id, BULK_SMS, &phones(n), Instant::now(), wall());
    assert!(send(&mut s, 10).is_ok(), "the first period is open");
    advance(period).await;
    let full = SendError::OverCapacity {
        pending: 100,
        requested: 1,
        max_allowed: 100,
    };
    assert_eq!(send(&mut s, 1), Err(full));
    advance(period).await;
    assert!(send(&mut s, 10).is_ok(), "open again");
    assert_eq!(
        s.pending(A, Instant::now()),
        Some(20),
        "as usual in open periods"
    );
    advance(period).await;
    assert!(send(&mut s, 1).is_err());
    s.set_capacity_flip(None, Instant::now());
    assert_eq!(s.capacity_flip(), None);
    assert!(send(&mut s, 1).is_ok(), "flips off");
}

#[tokio::test(start_paused = true)]
async fn statuses_and_counters_move_with_time() {
    let mut s = world(1000, 10.0); // Sending window: 5 messages
    let id = started(&mut s, A, CampaignType::Bulk, Channel::Sms);
    let sent = phones(30);
    s.accept(A, id, BULK_SMS, &sent, Instant::now(), wall())
        .unwrap();
    let status = |s: &mut State, i: usize| {
        let list = s.messages(A, sent[i], None, Instant::now()).unwrap();
        list[0].status
    };
    assert_eq!(status(&mut s, 0), MessageStatus::Sending);
    assert_eq!(status(&mut s, 5), MessageStatus::Pending);
    let view = s.campaign(A, id, Instant::now()).unwrap();
    assert_eq!((view.sent_count, view.delivered_count), (5, 0));

    advance(Duration::from_secs(1)).await;
    assert_eq!(status(&mut s, 9), MessageStatus::Delivered);
    assert_eq!(status(&mut s, 10), MessageStatus::Sending);
    assert_eq!(status(&mut s, 15), MessageStatus::Pending);
    let view = s.campaign(A, id, Instant::now()).unwrap();
    assert_eq!((view.accepted_count, view.sent_count), (30, 15));
    assert_eq!((view.delivered_count, view.failed_count), (10, 0));

    advance(Duration::from_secs(10)).await;
    let view = s.campaign(A, id, Instant::now()).unwrap();
    assert_eq!((view.sent_count, view.delivered_count), (30, 30));
}

#[tokio::test(start_paused = true)]
async fn viber_numbers_ending_in_9_fail_or_fall_back_to_sms() {
    let mut s = world(1000, 1000.0);
    let plain = s.create_template(A, template("plain", Channel::Viber, false), Errors::new());
    let fallback = s.create_template(A, template("fb", Channel::Viber, true), Errors::new());
    let kind = SendKind {
        bulk: true,
        channel: Channel::Viber,
    };
    let to = [
        PhoneKey::parse("38970000009").unwrap(),
        PhoneKey::parse("38970000001").unwrap(),
    ];
    let no_fb = started_with(
        &mut s,
        A,
        CampaignType::Bulk,
        Channel::Viber,
        Some(plain.unwrap().id),
    );
    let fb = started_with(
        &mut s,
        A,
        CampaignType::Bulk,
        Channel::Viber,
        Some(fallback.unwrap().id),
    );
    s.accept(A, no_fb, kind, &to, Instant::now(), wall())
        .unwrap();
    s.accept(A, fb, kind, &to, Instant::now(), wall()).unwrap();
    advance(Duration::from_secs(1)).await;

    let view = s.campaign(A, no_fb, Instant::now()).unwrap();
    assert_eq!((view.delivered_count, view.failed_count), (1, 1));
    assert_eq!(view.sms_fallback_delivered_count, 0);
    let view = s.campaign(A, fb, Instant::now()).unwrap();
    assert_eq!((view.delivered_count, view.failed_count), (2, 0));
    assert_eq!(view.sms_fallback_delivered_count, 1);

    let failed = s.messages(A, to[0], Some(no_fb), Instant::now()).unwrap();
    assert_eq!(failed[0].status, MessageStatus::Failed);
    assert_eq!(failed[0].details, Some(Details::NOT_VIBER_USER));
    let rescued = s.messages(A, to[0], Some(fb), Instant::now()).unwrap();
    assert_eq!(rescued[0].status, MessageStatus::Delivered);
    assert_eq!(rescued[0].delivered_via_sms_fallback, Some(true));
}

#[tokio::test(start_paused = true)]
async fn duplicates_count_per_campaign() {
    let mut s = world(1000, 0.0);
    let one = started(&mut s, A, CampaignType::Bulk, Channel::Sms);
    let two = started(&mut s, A, CampaignType::Bulk, Channel::Sms);
    let p = phones(3);
    let first = s.accept(
        A,
        one,
        BULK_SMS,
        &[p[0], p[1], p[0]],
        Instant::now(),
        wall(),
    );
    assert_eq!(first.map(|a| (a.distinct_new, a.duplicates)), Ok((2, 1)));
    let again = s.accept(A, one, BULK_SMS, &[p[0], p[2]], Instant::now(), wall());
    assert_eq!(again.map(|a| (a.distinct_new, a.duplicates)), Ok((1, 1)));
    let other = s.accept(A, two, BULK_SMS, &[p[0]], Instant::now(), wall());
    assert_eq!(other.map(|a| (a.distinct_new, a.duplicates)), Ok((1, 0)));
    // Every message is listed, filtered by campaign on request.
    assert_eq!(s.messages(A, p[0], None, Instant::now()).unwrap().len(), 4);
    assert_eq!(
        s.messages(A, p[0], Some(two), Instant::now())
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn send_checks_run_in_the_documented_order() {
    let mut s = world(1000, 0.0);
    let draft = CampaignDraft {
        name: "d".into(),
        kind: CampaignType::Bulk,
        channel: Channel::Sms,
        template_id: None,
    };
    let draft_id = s.create_campaign(A, draft).unwrap().id;
    let single_viber = SendKind {
        bulk: false,
        channel: Channel::Viber,
    };
    // Draft beats both the type and the channel mismatch.
    assert_eq!(
        s.check_send(A, draft_id, single_viber),
        Err(SendError::NotActive(CampaignStatus::Draft))
    );
    assert_eq!(
        s.check_send(B, draft_id, BULK_SMS),
        Err(SendError::CampaignNotFound)
    );
    s.start_campaign(A, draft_id, Instant::now()).unwrap();
    assert_eq!(
        s.check_send(A, draft_id, single_viber),
        Err(SendError::BulkCampaign)
    );
    let bulk_viber = SendKind {
        bulk: true,
        channel: Channel::Viber,
    };
    assert_eq!(
        s.check_send(A, draft_id, bulk_viber),
        Err(SendError::WrongChannel(Channel::Viber))
    );
    let tx = started(&mut s, A, CampaignType::Transactional, Channel::Sms);
    assert_eq!(s.check_send(A, tx, BULK_SMS), Err(SendError::NotBulk));
    let single_sms = SendKind {
        bulk: false,
        channel: Channel::Sms,
    };
    assert_eq!(s.check_send(A, tx, single_sms), Ok(()));
}

#[tokio::test(start_paused = true)]
async fn message_ids_are_unique_across_companies() {
    let mut s = world(1000, 0.0);
    let single = SendKind {
        bulk: false,
        channel: Channel::Sms,
    };
    let a = started(&mut s, A, CampaignType::Transactional, Channel::Sms);
    let b = started(&mut s, B, CampaignType::Transactional, Channel::Sms);
    let p = phones(1);
    let ma = s
        .accept(A, a, single, &p, Instant::now(), wall())
        .unwrap()
        .first_message_id;
    let mb = s
        .accept(B, b, single, &p, Instant::now(), wall())
        .unwrap()
        .first_message_id;
    assert_ne!(ma, mb);
    let listed = s.messages(A, p[0], None, Instant::now()).unwrap();
    assert_eq!(listed.len(), 1, "B's message is not A's to see");
    assert_eq!(listed[0].message_id, ma);
}

#[tokio::test(start_paused = true)]
async fn messages_list_when_their_send_was_accepted() {
    let mut s = world(1000, 0.0);
    let id = started(&mut s, A, CampaignType::Bulk, Channel::Sms);
    let p = phones(2);
    s.accept(A, id, BULK_SMS, &p, Instant::now(), wall())
        .unwrap();
    let later = wall() + Duration::from_millis(2_001);
    s.accept(A, id, BULK_SMS, &p[..1], Instant::now(), later)
        .unwrap();
    let mut created = |phone| -> Vec<String> {
        let list = s.messages(A, phone, None, Instant::now()).unwrap();
        list.into_iter().map(|m| m.created_at).collect()
    };
    assert_eq!(
        created(p[0]),
        ["2026-12-01T22:05:19.123Z", "2026-12-01T22:05:21.124Z"]
    );
    assert_eq!(created(p[1]), ["2026-12-01T22:05:19.123Z"]);
}

#[test]
fn template_names_are_unique_per_company_until_deleted() {
    let mut s = world(10, 0.0);
    let t = s
        .create_template(A, template("welcome", Channel::Sms, false), Errors::new())
        .unwrap();
    let dup = s.create_template(A, template("welcome", Channel::Sms, false), Errors::new());
    assert_eq!(
        dup.unwrap_err().get("name").map(String::as_str),
        Some("Template name must be unique")
    );
    assert!(s
        .create_template(B, template("welcome", Channel::Sms, false), Errors::new())
        .is_ok());
    assert!(
        s.template(B, t.id).is_none(),
        "another company's template is hidden"
    );
    assert!(!s.delete_template(B, t.id));
    assert!(s.delete_template(A, t.id));
    assert!(s
        .create_template(A, template("welcome", Channel::Sms, false), Errors::new())
        .is_ok());
}

#[test]
fn campaigns_need_an_owned_template_of_their_channel() {
    let mut s = world(10, 0.0);
    let sms = s
        .create_template(A, template("t", Channel::Sms, false), Errors::new())
        .unwrap();
    let draft = |channel| CampaignDraft {
        name: "c".into(),
        kind: CampaignType::Bulk,
        channel,
        template_id: Some(sms.id),
    };
    assert_eq!(
        s.create_campaign(B, draft(Channel::Sms)),
        Err(CampaignError::TemplateNotFound)
    );
    assert!(matches!(
        s.create_campaign(A, draft(Channel::Viber)),
        Err(CampaignError::Invalid(e)) if e.contains_key("templateId")
    ));
    let view = s.create_campaign(A, draft(Channel::Sms)).unwrap();
    assert_eq!(view.status, CampaignStatus::Draft);
}

const BULK_VIBER: SendKind = SendKind {
    bulk: true,
    channel: Channel::Viber,
};

/// A started bulk Viber campaign of `key` from a new template with or without fallback.
fn viber_campaign(s: &mut State, key: &str, name: &str, fallback: bool) -> Id {
    let t = s
        .create_template(key, template(name, Channel::Viber, fallback), Errors::new())
        .unwrap();
    started_with(s, key, CampaignType::Bulk, Channel::Viber, Some(t.id))
}

/// Sums what the messages query shows for every phone in `to`, campaign `id`:
/// `(delivered, failed, via fallback, failed by code)`.
fn summed(s: &mut State, key: &str, id: Id, to: &[PhoneKey]) -> (u64, u64, u64, Vec<u16>) {
    let (mut delivered, mut failed, mut fallback, mut codes) = (0, 0, 0, Vec::new());
    for &phone in to {
        for m in s.messages(key, phone, Some(id), Instant::now()).unwrap() {
            match m.status {
                MessageStatus::Delivered => delivered += 1,
                MessageStatus::Failed => failed += 1,
                other => panic!("{other:?}: not done"),
            }
            if m.delivered_via_sms_fallback == Some(true) {
                fallback += 1;
                assert_eq!(m.status, MessageStatus::Delivered);
            }
            if let Some(d) = m.details {
                codes.push(d.code);
            }
        }
    }
    (delivered, failed, fallback, codes)
}

#[tokio::test(start_paused = true)]
async fn drawn_outcomes_agree_between_counters_query_and_tally() {
    let mut s = world(10_000, 1000.0);
    *s.rules_mut() = Rules {
        viber_fail_rate: Some(0.4),
        sms_fallback_rate: 0.5,
        sms_fail_rate: 0.2,
        ..Rules::default()
    };
    let fb = viber_campaign(&mut s, A, "fb", true);
    let plain = viber_campaign(&mut s, A, "plain", false);
    let sms = started(&mut s, A, CampaignType::Bulk, Channel::Sms);
    let to = phones(300);
    for id in [fb, plain] {
        s.accept(A, id, BULK_VIBER, &to, Instant::now(), wall())
            .unwrap();
    }
    s.accept(A, sms, BULK_SMS, &to, Instant::now(), wall())
        .unwrap();
    advance(Duration::from_secs(2)).await;

    let mut total = Tally::default();
    for id in [fb, plain, sms] {
        let view = s.campaign(A, id, Instant::now()).unwrap();
        let (delivered, failed, fallback, codes) = summed(&mut s, A, id, &to);
        assert_eq!(view.sent_count, 300);
        assert_eq!(view.delivered_count, delivered, "campaign {id}");
        assert_eq!(view.failed_count, failed, "campaign {id}");
        assert_eq!(view.sms_fallback_delivered_count, fallback, "campaign {id}");
        assert!(failed > 0, "campaign {id}: some fail at these rates");
        assert_eq!(codes.len() as u64, failed + fallback, "a reason for each");
        total.delivered += delivered;
        total.sms_fallback_delivered += fallback;
        let allowed: &[u16] = if id == sms { &[1] } else { &[8, 9, 10] };
        assert!(codes.iter().all(|c| allowed.contains(c)), "{codes:?}");
    }
    let plain_view = s.campaign(A, plain, Instant::now()).unwrap();
    assert_eq!(plain_view.sms_fallback_delivered_count, 0);
    let fb_view = s.campaign(A, fb, Instant::now()).unwrap();
    assert!(fb_view.sms_fallback_delivered_count > 0);

    let tally = s.outcomes(Instant::now());
    assert_eq!(tally.delivered, total.delivered);
    assert_eq!(tally.sms_fallback_delivered, total.sms_fallback_delivered);
    let failed: u64 = tally.failed_by_code().values().sum();
    assert_eq!(tally.delivered + failed, 900);
}

#[tokio::test(start_paused = true)]
async fn outcome_rules_apply_from_the_next_acceptance_and_stay_with_the_message() {
    let mut s = world(10_000, 1000.0);
    let id = viber_campaign(&mut s, A, "plain", false);
    let to = phones(100); // none ends in 9
    s.rules_mut().viber_fail_rate = Some(1.0);
    s.accept(A, id, BULK_VIBER, &to, Instant::now(), wall())
        .unwrap();
    s.rules_mut().viber_fail_rate = Some(0.0);
    s.accept(A, id, BULK_VIBER, &to, Instant::now(), wall())
        .unwrap();
    assert_eq!(
        s.outcomes(Instant::now()),
        Tally::default(),
        "nothing is done yet"
    );
    s.rules_mut().viber_fail_rate = None;
    advance(Duration::from_secs(1)).await;

    let view = s.campaign(A, id, Instant::now()).unwrap();
    assert_eq!((view.delivered_count, view.failed_count), (100, 100));
    for &phone in &to {
        let list = s.messages(A, phone, Some(id), Instant::now()).unwrap();
        let statuses: Vec<_> = list.iter().map(|m| m.status).collect();
        assert_eq!(statuses, [MessageStatus::Failed, MessageStatus::Delivered]);
    }
    let tally = s.outcomes(Instant::now());
    assert_eq!(tally.delivered, 100);
    assert_eq!(tally.failed_by_code().values().sum::<u64>(), 100);
}

#[tokio::test(start_paused = true)]
async fn sms_failures_show_the_simulators_code_and_no_fallback_field() {
    let mut s = world(1000, 1000.0);
    s.rules_mut().sms_fail_rate = 1.0;
    let id = started(&mut s, A, CampaignType::Bulk, Channel::Sms);
    let to = phones(3);
    s.accept(A, id, BULK_SMS, &to, Instant::now(), wall())
        .unwrap();
    advance(Duration::from_secs(1)).await;
    let m = &s.messages(A, to[1], None, Instant::now()).unwrap()[0];
    assert_eq!(m.status, MessageStatus::Failed);
    assert_eq!(m.details, Some(Details::SMS_UNDELIVERABLE));
    assert_eq!(m.delivered_via_sms_fallback, None);
    let view = s.campaign(A, id, Instant::now()).unwrap();
    assert_eq!((view.delivered_count, view.failed_count), (0, 3));
    let tally = s.outcomes(Instant::now());
    assert_eq!(tally.failed_by_code(), BTreeMap::from([(1, 3)]));
}
