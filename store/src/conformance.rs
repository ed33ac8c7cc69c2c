//! The store conformance suite: behaviour every [`Store`] backend must show, written
//! against the trait alone. Backends call [`run_all`] from their own tests (the
//! ScyllaDB backend only where `TSUNAGU_SCYLLA_NODES` names a real server).
//! Each check starts from fresh ids, so the suite tolerates a non-empty store.

use crate::model::*;
use crate::{PromptPut, PromptQuota, Store, StoreError};
use std::collections::BTreeMap;

pub fn run_all(store: &dyn Store) {
    operators_and_keys(store);
    advertisers_are_scoped(store);
    numbers_are_unique_and_scoped(store);
    numbers_are_listed_in_pages(store);
    call_inserts_are_idempotent(store);
    calls_in_progress_end_in_one_final_record(store);
    a_claimed_call_belongs_to_its_new_owner_alone(store);
    node_incarnations(store);
    a_rejoin_registers_only_after_the_incarnation_it_read(store);
    a_stale_incarnation_writes_no_call_in_progress(store);
    the_change_feed_is_ordered_and_resumable(store);
    prompts_are_shared_through_the_store(store);
    prompts_are_capped_per_operator(store);
    parallel_uploads_never_pass_the_prompt_cap(&[store]);
    call_queries_filter_sort_and_page(store);
    a_search_stops_at_its_deadline(store);
    duplicate_lookup_window(store);
    pools_are_created_atomically_and_scoped(store);
    dynamic_leases(store);
    one_time_leases_round_robin(store);
    sessions_hold_at_most_their_cap(store);
    clients_hold_at_most_their_cap(store);
    concurrent_issuers_never_share_a_number(&[store]);
    api_keys_are_listed_and_revoked(store);
    advertiser_keys_are_limited_and_go_with_their_advertiser(store);
    webhooks_are_scoped(store);
    follow_ups_are_queued_with_their_call_once(store);
    outbox_claims_retries_and_dead_letters(store);
    released_follow_ups_keep_their_attempts(store);
    a_lost_claim_writes_no_outcome(store);
    dead_follow_ups_are_pruned_after_thirty_days(store);
    caller_sms_are_capped_per_number_and_day(store);
    notices_are_capped_per_number_and_hour(store);
    store.ping().expect("ping");
}

/// The operator an operator's key (by hash) speaks for; panics on an advertiser's.
fn op_of_key(s: &dyn Store, hash: &str) -> Option<String> {
    s.key_owner(hash).unwrap().map(|o| {
        assert_eq!(o.advertiser_id, None, "an operator's key");
        o.operator_id
    })
}

fn operators_and_keys(s: &dyn Store) {
    let op = s.create_operator("op-a").unwrap();
    assert_eq!(s.get_operator(&op.id).unwrap().as_ref(), Some(&op));
    assert!(s.list_operators().unwrap().iter().any(|o| o.id == op.id));
    assert_eq!(
        s.rename_operator(&op.id, "op-b").unwrap().unwrap().name,
        "op-b"
    );
    assert!(s.rename_operator("op_missing", "x").unwrap().is_none());

    let hash = crate::hash_api_key(&crate::new_api_key());
    let key = s.add_api_key(&op.id, &hash, "tsk_00000001").unwrap();
    assert_eq!(op_of_key(s, &hash), Some(op.id.clone()));
    assert_eq!(op_of_key(s, "nope"), None);
    assert_eq!(s.list_api_keys(&op.id).unwrap(), vec![key]);

    let adv = s.create_advertiser(&op.id, "shop", None).unwrap();
    assert!(
        matches!(s.delete_operator(&op.id), Err(StoreError::InUse(_))),
        "operator with advertisers"
    );
    assert!(s.delete_advertiser(&op.id, &adv.id).unwrap());
    // Its webhooks and prompts go with it; another operator's stay.
    let other = s.create_operator("other").unwrap();
    let hook = |op: &str, id: &str| crate::Webhook {
        id: id.into(),
        operator_id: op.into(),
        url: "https://example.com/hook".into(),
        secret: "s".repeat(32),
        events: vec![],
        created_at: 1,
    };
    s.create_webhook(&hook(&op.id, "wh_gone"), 20).unwrap();
    s.create_webhook(&hook(&other.id, "wh_kept"), 20).unwrap();
    for o in [&op.id, &other.id] {
        s.put_prompt(
            o,
            "hello",
            b"RIFF",
            crate::PromptQuota {
                prompts: 10,
                bytes: 1 << 20,
            },
        )
        .unwrap();
    }
    assert_eq!(
        s.delete_operator(&op.id).unwrap(),
        Some(vec!["hello".to_string()])
    );
    assert!(s.get_operator(&op.id).unwrap().is_none());
    assert_eq!(op_of_key(s, &hash), None, "keys go with their operator");
    assert!(s.get_webhook("wh_gone").unwrap().is_none(), "webhooks too");
    assert!(s.prompt(&op.id, "hello").unwrap().is_none(), "prompts too");
    assert!(s.get_webhook("wh_kept").unwrap().is_some());
    assert!(s.prompt(&other.id, "hello").unwrap().is_some());
    assert_eq!(s.delete_operator(&op.id).unwrap(), None);
    assert!(s.delete_webhook(&other.id, "wh_kept").unwrap());
    assert!(s.delete_prompt(&other.id, "hello").unwrap());
    assert_eq!(s.delete_operator(&other.id).unwrap(), Some(vec![]));
}

fn advertisers_are_scoped(s: &dyn Store) {
    let a = s.create_operator("a").unwrap();
    let b = s.create_operator("b").unwrap();
    let adv = s.create_advertiser(&a.id, "shop", None).unwrap();
    assert_eq!(
        s.get_advertiser(&a.id, &adv.id).unwrap().as_ref(),
        Some(&adv)
    );
    assert!(s.get_advertiser(&b.id, &adv.id).unwrap().is_none());
    assert!(s.list_advertisers(&b.id).unwrap().is_empty());
    assert_eq!(s.list_advertisers(&a.id).unwrap(), vec![adv.clone()]);
    let stolen = Advertiser {
        operator_id: b.id.clone(),
        name: "stolen".into(),
        ..adv.clone()
    };
    assert_eq!(s.update_advertiser(&stolen, &adv).unwrap(), Update::Missing);
    assert!(!s.delete_advertiser(&b.id, &adv.id).unwrap());
    assert_eq!(
        s.get_advertiser(&a.id, &adv.id).unwrap().unwrap().name,
        "shop"
    );
    let renamed = Advertiser {
        name: "shop2".into(),
        ..adv.clone()
    };
    assert_eq!(
        s.update_advertiser(&renamed, &adv).unwrap(),
        Update::Updated
    );
    assert_eq!(
        s.get_advertiser(&a.id, &adv.id).unwrap(),
        Some(renamed.clone())
    );
    // A change made from the read before that one is refused, and writes nothing.
    let stale = Advertiser {
        name: "shop3".into(),
        ..adv.clone()
    };
    assert_eq!(s.update_advertiser(&stale, &adv).unwrap(), Update::Changed);
    assert_eq!(
        s.get_advertiser(&a.id, &adv.id).unwrap(),
        Some(renamed.clone())
    );
    assert!(s.advertisers_with_lines().unwrap().is_empty());
    let limit = LineLimit {
        max_lines: 3,
        max_wait_seconds: 30,
    };
    let limited = Advertiser {
        lines: Some(limit),
        ..renamed.clone()
    };
    assert_eq!(
        s.update_advertiser(&limited, &renamed).unwrap(),
        Update::Updated
    );
    assert_eq!(s.advertisers_with_lines().unwrap(), vec![limited.clone()]);
    // The limit is part of what is compared: a change made before it was set is refused.
    assert_eq!(
        s.update_advertiser(&stale, &renamed).unwrap(),
        Update::Changed
    );
    assert_eq!(
        s.update_advertiser(&renamed, &limited).unwrap(),
        Update::Updated
    );
    assert!(s.advertisers_with_lines().unwrap().is_empty());
    // Created with its limit: one write, read back with it.
    let born_limited = s.create_advertiser(&a.id, "lines", Some(limit)).unwrap();
    assert_eq!(born_limited.lines, Some(limit));
    assert_eq!(
        s.get_advertiser(&a.id, &born_limited.id).unwrap(),
        Some(born_limited.clone())
    );
    assert_eq!(s.advertisers_with_lines().unwrap(), vec![born_limited]);
}

/// A tracking number for tests with a unique random number.
pub fn sample_number(operator_id: &str, advertiser_id: &str) -> TrackingNumber {
    let digits: String = crate::new_id("x")
        .chars()
        .filter(|c| c.is_ascii_digit())
        .take(6)
        .collect();
    TrackingNumber {
        number: format!("050{digits:0<7}"),
        operator_id: operator_id.into(),
        advertiser_id: advertiser_id.into(),
        kind: NumberKind::Static,
        destinations: vec![Destination {
            number: "0311112222".into(),
            ring_seconds: 20,
        }],
        validity: ValidityRule {
            min_talk_seconds: 10,
            duplicate_window_seconds: 86400,
            ..ValidityRule::default()
        },
        caller_id: CallerIdMode::Caller,
        tracking_params: BTreeMap::from([("medium".to_string(), "flyer".to_string())]),
        pool_id: None,
        notify: None,
        ga4: None,
        recording: None,
        schedule: None,
        absent: false,
        queue: None,
        ivr: None,
        judgement: None,
        created_at: 1,
        updated_at: 1,
    }
}

fn numbers_are_unique_and_scoped(s: &dyn Store) {
    let a = s.create_operator("a").unwrap();
    let b = s.create_operator("b").unwrap();
    let adv = s.create_advertiser(&a.id, "shop", None).unwrap();
    let mut n = sample_number(&a.id, &adv.id);
    assert_eq!(s.count_numbers(&a.id).unwrap(), 0);
    s.create_number(&n).unwrap();
    assert!(matches!(s.create_number(&n), Err(StoreError::Conflict(_))));
    assert_eq!(s.get_number(&n.number).unwrap().as_ref(), Some(&n));
    assert_eq!(s.count_numbers(&a.id).unwrap(), 1);
    assert_eq!(
        s.count_numbers(&b.id).unwrap(),
        0,
        "another operator's count"
    );
    assert_eq!(s.list_numbers(&a.id, None).unwrap(), vec![n.clone()]);
    assert_eq!(s.list_numbers(&a.id, Some(&adv.id)).unwrap().len(), 1);
    assert!(s.list_numbers(&a.id, Some("adv_other")).unwrap().is_empty());
    assert!(s.list_numbers(&b.id, None).unwrap().is_empty());
    assert!(s
        .all_numbers()
        .unwrap()
        .iter()
        .any(|(number, x)| *number == n.number && x.as_ref().is_ok_and(|x| *x == n)));

    let read = n.clone();
    n.destinations[0].ring_seconds = 5;
    assert_eq!(s.update_number(&n, &read).unwrap(), Update::Updated);
    assert_eq!(
        s.get_number(&n.number).unwrap().unwrap().destinations[0].ring_seconds,
        5
    );
    // A change made from the read before that one is refused, and writes nothing.
    let mut stale = read.clone();
    stale.absent = true;
    assert_eq!(s.update_number(&stale, &read).unwrap(), Update::Changed);
    assert_eq!(s.get_number(&n.number).unwrap().unwrap(), n);
    let mut foreign = n.clone();
    foreign.operator_id = b.id.clone();
    assert_eq!(
        s.update_number(&foreign, &n).unwrap(),
        Update::Missing,
        "another operator cannot update it"
    );
    assert!(
        !s.delete_number(&b.id, &n.number).unwrap(),
        "another operator cannot delete it"
    );
    assert!(matches!(
        s.delete_advertiser(&a.id, &adv.id),
        Err(StoreError::InUse(_))
    ));
    assert!(s.delete_number(&a.id, &n.number).unwrap());
    assert!(s.get_number(&n.number).unwrap().is_none());
    assert_eq!(s.count_numbers(&a.id).unwrap(), 0);
}

/// Pages walk an operator's numbers (of one advertiser) in number order, each once,
/// and end with no cursor; another operator's numbers are on none of them.
fn numbers_are_listed_in_pages(s: &dyn Store) {
    let a = s.create_operator("paged").unwrap();
    let b = s.create_operator("other").unwrap();
    let adv = s.create_advertiser(&a.id, "one", None).unwrap();
    let adv2 = s.create_advertiser(&a.id, "two", None).unwrap();
    let foreign = s.create_advertiser(&b.id, "b", None).unwrap();
    let mut mine = Vec::new();
    for i in 0..5 {
        let owner = if i % 2 == 0 { &adv } else { &adv2 };
        let n = sample_number(&a.id, &owner.id);
        s.create_number(&n).unwrap();
        mine.push(n);
        s.create_number(&sample_number(&b.id, &foreign.id)).unwrap();
    }
    mine.sort_by(|x, y| x.number.cmp(&y.number));
    let walk = |advertiser: Option<&str>, limit: usize| {
        let (mut seen, mut after, mut pages) = (Vec::new(), None::<String>, 0);
        loop {
            let page = s
                .list_numbers_page(&a.id, advertiser, after.as_deref(), limit)
                .unwrap();
            assert!(
                page.numbers.len() <= limit,
                "a page holds at most its limit"
            );
            pages += 1;
            seen.extend(page.numbers);
            match page.next {
                Some(next) => after = Some(next),
                None => return (seen, pages),
            }
        }
    };
    assert_eq!(walk(None, 2), (mine.clone(), 3), "2 + 2 + 1");
    assert_eq!(
        walk(None, 5),
        (mine.clone(), 1),
        "a full last page has no cursor"
    );
    assert_eq!(walk(None, 100), (mine.clone(), 1));
    let of_adv: Vec<_> = mine
        .iter()
        .filter(|n| n.advertiser_id == adv.id)
        .cloned()
        .collect();
    assert_eq!(walk(Some(&adv.id), 1), (of_adv, 3));
    let first = s.list_numbers_page(&a.id, None, None, 1).unwrap();
    assert_eq!(first.next.as_deref(), Some(mine[0].number.as_str()));
    let past_all = s.list_numbers_page(&a.id, None, Some("9"), 10).unwrap();
    assert_eq!(
        past_all,
        NumberPage {
            numbers: vec![],
            next: None
        }
    );
    let none = s.list_numbers_page(&b.id, Some(&adv.id), None, 10).unwrap();
    assert!(none.numbers.is_empty(), "another operator's advertiser");
}

/// A call in progress for tests: `call_id` carried by `node` in incarnation `epoch`,
/// with a checkpoint.
pub fn sample_active_call(operator_id: &str, call_id: &str, node: &str, epoch: u64) -> ActiveCall {
    let mut r = sample_call(operator_id, "adv_1", 7_000_000);
    r.call_id = call_id.into();
    r.node = node.into();
    r.owner_epoch = epoch;
    r.state = CallState::Active;
    ActiveCall {
        record: r,
        checkpoint: Some("cp".into()),
    }
}

/// A finished-call record for tests.
pub fn sample_call(operator_id: &str, advertiser_id: &str, started_at: i64) -> CallRecord {
    CallRecord {
        call_id: crate::new_time_id("call"),
        operator_id: operator_id.into(),
        advertiser_id: advertiser_id.into(),
        tracking_number: "0501234567".into(),
        caller_number: "09012345678".into(),
        caller_kind: CallerKind::Mobile,
        destination_number: Some("0311112222".into()),
        started_at,
        answered_at: Some(started_at + 2000),
        ended_at: started_at + 32000,
        ring_seconds: 2,
        talk_seconds: 30,
        result: CallResult::Answered,
        validity: Validity::Valid,
        ivr_digits: None,
        judgement_digit: None,
        recording: None,
        tracking_params: BTreeMap::from([("gclid".to_string(), "abc".to_string())]),
        node: "n1".into(),
        sip_code: 200,
        trunk: Some("carrier-a".into()),
        rtp_packets_in: 100,
        rtp_packets_out: 99,
        rtp_lost: 1,
        rtp_jitter_us: Some(2_500),
        callback_of: None,
        recording_status: None,
        state: CallState::Ended,
        stage: None,
        end_reason: None,
        nodes: Vec::new(),
        taken_over_at: None,
        recording_parts: Vec::new(),
        owner_epoch: 0,
        attempts: vec![
            Attempt {
                destination: "0311112222".into(),
                trunk: "carrier-a".into(),
                started_at: 1,
                sip_code: 486,
                outcome: "busy".into(),
            },
            Attempt {
                destination: "0322223333".into(),
                trunk: "carrier-a".into(),
                started_at: 2,
                sip_code: 200,
                outcome: "answered".into(),
            },
        ],
    }
}

fn collect(s: &dyn Store, q: &CallQuery) -> Vec<CallRecord> {
    let mut out = Vec::new();
    s.scan_calls(q, &mut |r| {
        out.push(r);
        true
    })
    .unwrap();
    out
}

fn calls_in_progress_end_in_one_final_record(s: &dyn Store) {
    let op = s.create_operator("active").unwrap();
    let other = s.create_operator("active-other").unwrap();
    let in_progress = |start: i64, node: &str| {
        let mut r = sample_call(&op.id, "adv_1", start);
        r.node = node.into();
        r.owner_epoch = 1;
        r.state = CallState::Active;
        r
    };
    let bare = |r: &CallRecord| ActiveCall {
        record: r.clone(),
        checkpoint: None,
    };
    let mut call = in_progress(5_000_000, "n-active");
    call.answered_at = None;
    let second = in_progress(5_000_100, "n-active");
    let elsewhere = in_progress(5_000_200, "n-elsewhere");
    s.upsert_active_calls(&[bare(&call), bare(&second), bare(&elsewhere)])
        .unwrap();
    // Answered: the row in progress is replaced, and its checkpoint kept.
    call.answered_at = Some(5_002_000);
    let answered = ActiveCall {
        record: call.clone(),
        checkpoint: Some("{\"legs\":1}".into()),
    };
    s.upsert_active_calls(std::slice::from_ref(&answered))
        .unwrap();
    s.upsert_active_calls(&[bare(&call)]).unwrap(); // no checkpoint: the last one stays
    let of_node = s.active_calls_of("n-active").unwrap();
    assert_eq!(
        of_node,
        vec![answered.clone(), bare(&second)],
        "oldest first"
    );
    let active = |op: &str| {
        collect(
            s,
            &CallQuery {
                operator_id: op.into(),
                state: CallState::Active,
                ..Default::default()
            },
        )
    };
    assert_eq!(active(&op.id).len(), 3);
    assert!(active(&other.id).is_empty(), "scoped by operator");
    let ended = |op: &str| {
        collect(
            s,
            &CallQuery {
                operator_id: op.into(),
                ..Default::default()
            },
        )
    };
    assert!(ended(&op.id).is_empty(), "nothing has ended yet");

    // The call ends: one final record, no longer in progress; its follow-up is queued once.
    let mut done = call.clone();
    done.state = CallState::Ended;
    done.end_reason = Some("drain".into());
    let hook = NewFollowUp {
        kind: FollowUpKind::Webhook,
        operator_id: op.id.clone(),
        target: "wh_active".into(),
        payload: "{}".into(),
    };
    let (pending_before, _) = s.follow_up_counts().unwrap();
    s.insert_calls(&[done.clone()], &[(0, hook.clone())])
        .unwrap();
    s.insert_calls(&[done.clone()], &[(0, hook)]).unwrap();
    let (pending_after, _) = s.follow_up_counts().unwrap();
    assert_eq!(pending_after, pending_before + 1);
    assert_eq!(s.active_calls_of("n-active").unwrap(), vec![bare(&second)]);
    let mut stored = done.clone();
    stored.owner_epoch = 0; // not part of the log
    assert_eq!(ended(&op.id), vec![stored]);
    assert_eq!(
        s.get_call(&op.id, &call.call_id)
            .unwrap()
            .unwrap()
            .end_reason
            .as_deref(),
        Some("drain")
    );
    // A late update of a call that has ended does not bring it back.
    s.upsert_active_calls(&[bare(&call)]).unwrap();
    assert_eq!(s.active_calls_of("n-active").unwrap(), vec![bare(&second)]);
    // Clean up for the other cases of the suite.
    let mut finals = Vec::new();
    for a in s
        .active_calls_of("n-active")
        .unwrap()
        .into_iter()
        .chain(s.active_calls_of("n-elsewhere").unwrap())
    {
        let mut r = a.record;
        r.state = CallState::Ended;
        finals.push(r);
    }
    s.insert_calls(&finals, &[]).unwrap();
    assert!(active(&op.id).is_empty());
}

/// A takeover: one claim wins (compare-and-set on the owner and its epoch), and from
/// then on the old owner's writes of the call — in progress or final — are fenced off.
fn a_claimed_call_belongs_to_its_new_owner_alone(s: &dyn Store) {
    let op = s.create_operator("claims").unwrap();
    let mut r = sample_call(&op.id, "adv_1", 6_000_000);
    r.node = "n-old".into();
    r.owner_epoch = 4;
    r.state = CallState::Active;
    s.upsert_active_calls(&[ActiveCall {
        record: r.clone(),
        checkpoint: Some("cp".into()),
    }])
    .unwrap();
    assert_eq!(
        s.claim_call(&r.call_id, ("n-old", 3), ("n-a", 1)).unwrap(),
        None,
        "wrong epoch"
    );
    let won = s
        .claim_call(&r.call_id, ("n-old", 4), ("n-a", 2))
        .unwrap()
        .expect("the first claim wins");
    assert_eq!(
        (won.record.node.as_str(), won.record.owner_epoch),
        ("n-a", 2)
    );
    assert_eq!(won.checkpoint.as_deref(), Some("cp"));
    assert_eq!(
        s.claim_call(&r.call_id, ("n-old", 4), ("n-b", 1)).unwrap(),
        None,
        "only one"
    );
    assert!(s.active_calls_of("n-old").unwrap().is_empty());
    // An incarnation the cluster declared down claims nothing (it would own the call
    // with nobody alive to run it).
    let (epoch, _) = s
        .register_node(
            &NodeInfo {
                node_id: "n-down".into(),
                cluster_addr: None,
                api_addr: None,
            },
            6_000_000,
        )
        .unwrap();
    assert!(s.mark_node_down("n-down", epoch).unwrap());
    assert_eq!(
        s.claim_call(&r.call_id, ("n-a", 2), ("n-down", epoch))
            .unwrap(),
        None,
        "claimed by a node declared down"
    );
    let held = s.active_calls_of("n-a").unwrap();
    assert_eq!(held.len(), 1, "still n-a's");
    assert_eq!(
        (held[0].record.node.as_str(), held[0].record.owner_epoch),
        ("n-a", 2),
        "the owner as claimed, not the record's older copy"
    );
    // The old owner wakes up: its update and its final record change nothing.
    let mut stale = r.clone();
    stale.talk_seconds = 1;
    s.upsert_active_calls(&[ActiveCall {
        record: stale.clone(),
        checkpoint: None,
    }])
    .unwrap();
    stale.state = CallState::Ended;
    s.insert_calls(&[stale], &[]).unwrap();
    assert!(s.get_call(&op.id, &r.call_id).unwrap().is_none(), "fenced");
    let now_owned = s.active_calls_of("n-a").unwrap();
    assert_eq!(now_owned.len(), 1);
    assert_eq!(now_owned[0].record.talk_seconds, r.talk_seconds);
    // The new owner ends it: one record, with the nodes that carried it.
    let mut done = won.record.clone();
    done.state = CallState::Ended;
    done.nodes = vec!["n-old".into(), "n-a".into()];
    done.taken_over_at = Some(6_010_000);
    done.recording_parts = vec![
        RecordingPart {
            node: "n-old".into(),
            path: "d/call.wav".into(),
            offset_ms: 0,
        },
        RecordingPart {
            node: "n-a".into(),
            path: "d/call.part2.wav".into(),
            offset_ms: 9_000,
        },
    ];
    s.insert_calls(&[done], &[]).unwrap();
    let logged = s.get_call(&op.id, &r.call_id).unwrap().unwrap();
    assert_eq!(logged.node, "n-a");
    assert_eq!(logged.nodes, vec!["n-old", "n-a"]);
    assert_eq!(logged.taken_over_at, Some(6_010_000));
    assert_eq!(logged.recording_parts.len(), 2);
    assert!(s.active_calls_of("n-a").unwrap().is_empty());
}

/// A node that wakes after it was declared down (or after its id started again as a
/// newer incarnation) flushes what it had queued: none of its calls in progress is
/// written, not even one the store has never seen (else that row would stay active for
/// good: no survivor looks at that incarnation again).
fn a_stale_incarnation_writes_no_call_in_progress(s: &dyn Store) {
    let op = s.create_operator("stale").unwrap();
    let info = NodeInfo {
        node_id: "n-stale".into(),
        cluster_addr: None,
        api_addr: None,
    };
    let (epoch, _) = s.register_node(&info, 1_000).unwrap();
    let active = |call: &str, epoch: u64| sample_active_call(&op.id, call, "n-stale", epoch);
    s.upsert_active_calls(&[active("call_stale_1", epoch)])
        .unwrap();
    assert!(s.mark_node_down("n-stale", epoch).unwrap());
    s.upsert_active_calls(&[active("call_stale_2", epoch)])
        .unwrap();
    let (newer, _) = s.register_node(&info, 2_000).unwrap();
    s.upsert_active_calls(&[active("call_stale_3", epoch), active("call_stale_4", newer)])
        .unwrap();
    let ids: Vec<String> = s
        .active_calls_of("n-stale")
        .unwrap()
        .into_iter()
        .map(|a| a.record.call_id)
        .collect();
    assert_eq!(ids, vec!["call_stale_1", "call_stale_4"]);
}

/// A node that rejoins registers only while the registry lists the incarnation it
/// read: a replacement registered in between keeps the id (the rejoining process
/// reads again and stops), and a node never registered is not registered by it.
fn a_rejoin_registers_only_after_the_incarnation_it_read(s: &dyn Store) {
    let info = NodeInfo {
        node_id: "n-rejoin".into(),
        cluster_addr: Some("127.0.0.1:7001".into()),
        api_addr: None,
    };
    assert_eq!(s.register_node_after(&info, 1_000, 1).unwrap(), None);
    assert_eq!(s.register_node(&info, 1_000).unwrap(), (1, None));
    assert!(s.node_alive("n-rejoin", 1, 1_500).unwrap());
    assert!(s.mark_node_down("n-rejoin", 1).unwrap());
    assert_eq!(
        s.register_node_after(&info, 2_000, 1).unwrap(),
        Some((2, Some(1_500)))
    );
    // A replacement registers (3); the process that read 2 and rejoins is refused.
    assert_eq!(s.register_node(&info, 3_000).unwrap().0, 3);
    assert_eq!(s.register_node_after(&info, 3_100, 2).unwrap(), None);
    let row = row_of(s, "n-rejoin");
    assert_eq!((row.epoch, row.down, row.started_at), (3, false, 3_000));
}

fn node_incarnations(s: &dyn Store) {
    let info = NodeInfo {
        node_id: "n-epoch".into(),
        cluster_addr: Some("127.0.0.1:7000".into()),
        api_addr: Some("127.0.0.1:8080".into()),
    };
    assert_eq!(s.register_node(&info, 1_000).unwrap(), (1, None));
    assert!(s.node_alive("n-epoch", 1, 2_000).unwrap());
    assert!(
        s.node_alive("n-epoch", 1, 1_500).unwrap(),
        "a clock gone back still beats"
    );
    // The sign never goes back, and still moves (one past the last): readers judge
    // a member alive by its sign moving.
    assert_eq!(s.register_node(&info, 3_000).unwrap(), (2, Some(2_001)));
    assert!(
        !s.node_alive("n-epoch", 1, 4_000).unwrap(),
        "the old incarnation is stale"
    );
    assert!(s.node_alive("n-epoch", 2, 4_000).unwrap());
    assert!(!s.node_alive("n-unknown", 1, 4_000).unwrap());
    // Declared down: once (compare-and-set), not an older incarnation, and the
    // incarnation's own heartbeat then fails (it must rejoin).
    assert!(!s.mark_node_down("n-epoch", 1).unwrap());
    // Only by a member in good standing: not an unknown one, not an earlier
    // incarnation, not one declared down.
    let marker = NodeInfo {
        node_id: "n-marker".into(),
        ..info.clone()
    };
    assert_eq!(s.register_node(&marker, 1_000).unwrap().0, 1);
    assert_eq!(s.register_node(&marker, 1_100).unwrap().0, 2);
    assert!(!s.mark_node_down_by("n-epoch", 2, ("n-nobody", 1)).unwrap());
    assert!(!s.mark_node_down_by("n-epoch", 2, ("n-marker", 1)).unwrap());
    assert!(
        s.mark_node_down_by("n-marker", 2, ("n-marker", 2)).unwrap(),
        "itself, leaving"
    );
    assert!(
        !s.mark_node_down_by("n-epoch", 2, ("n-marker", 2)).unwrap(),
        "declared down"
    );
    let good = NodeInfo {
        node_id: "n-good".into(),
        ..info.clone()
    };
    assert_eq!(s.register_node(&good, 1_000).unwrap().0, 1);
    assert!(
        s.mark_node_down_by("n-epoch", 2, ("n-good", 1)).unwrap(),
        "by a member in good standing"
    );
    assert!(!s.mark_node_down("n-epoch", 2).unwrap(), "already down");
    assert!(!s.node_alive("n-epoch", 2, 5_000).unwrap());
    let row = s
        .nodes()
        .unwrap()
        .into_iter()
        .find(|n| n.node_id == "n-epoch")
        .unwrap();
    assert_eq!(
        (
            row.epoch,
            row.down,
            row.last_seen,
            row.cluster_addr.as_deref()
        ),
        (2, true, 4_000, Some("127.0.0.1:7000"))
    );
    assert_eq!(s.register_node(&info, 6_000).unwrap(), (3, Some(4_000)));
    assert!(
        s.node_alive("n-epoch", 3, 7_000).unwrap(),
        "a new incarnation is up"
    );
    assert!(!row_of(s, "n-epoch").retired);

    // Retired by an operator: only the incarnation named (an older one is no longer
    // the node), fenced like one declared down; a new start is not retired.
    assert!(
        !s.retire_node("n-epoch", 2).unwrap(),
        "an older incarnation"
    );
    assert!(!s.retire_node("n-nobody", 1).unwrap(), "no such node");
    assert!(s.retire_node("n-epoch", 3).unwrap());
    let row = row_of(s, "n-epoch");
    assert_eq!((row.epoch, row.down, row.retired), (3, true, true));
    assert!(
        !s.node_alive("n-epoch", 3, 8_000).unwrap(),
        "a retired incarnation that still runs must rejoin"
    );
    assert_eq!(s.register_node(&info, 9_000).unwrap(), (4, Some(7_000)));
    let row = row_of(s, "n-epoch");
    assert_eq!((row.epoch, row.down, row.retired), (4, false, false));
}

fn row_of(s: &dyn Store, node: &str) -> NodeRow {
    s.nodes()
        .unwrap()
        .into_iter()
        .find(|n| n.node_id == node)
        .unwrap()
}

fn the_change_feed_is_ordered_and_resumable(s: &dyn Store) {
    let start = s.changes_since(0, 1).unwrap().latest;
    let a = s.record_change("number", "0501").unwrap();
    let b = s.record_change("advertiser", "op/adv").unwrap();
    assert!(b > a && a > start);
    let got = s.changes_since(start, 10).unwrap();
    assert!(got.complete);
    assert_eq!(got.latest, b);
    let keys: Vec<(&str, &str)> = got
        .items
        .iter()
        .map(|c| (c.kind.as_str(), c.key.as_str()))
        .collect();
    assert_eq!(keys, vec![("number", "0501"), ("advertiser", "op/adv")]);
    let rest = s.changes_since(a, 10).unwrap();
    assert_eq!(rest.items.len(), 1);
    assert!(s.changes_since(b, 10).unwrap().items.is_empty());
}

/// Room for anything the suite uploads.
const ROOMY: PromptQuota = PromptQuota {
    prompts: 10,
    bytes: 1 << 20,
};

fn prompts_are_shared_through_the_store(s: &dyn Store) {
    assert_eq!(s.prompt("op-p", "hello").unwrap(), None);
    let put = |op, name, wav: &[u8]| s.put_prompt(op, name, wav, ROOMY).unwrap();
    assert_eq!(put("op-p", "hello", b"RIFF1"), PromptPut::Saved);
    assert_eq!(put("op-p", "hello", b"RIFF2"), PromptPut::Saved);
    assert_eq!(put("op-q", "hello", b"RIFF3"), PromptPut::Saved);
    assert_eq!(
        s.prompt("op-p", "hello").unwrap().as_deref(),
        Some(&b"RIFF2"[..])
    );
    let all = s.all_prompts().unwrap();
    assert!(all.contains(&("op-q".into(), "hello".into(), b"RIFF3".to_vec())));
    assert!(s.delete_prompt("op-p", "hello").unwrap());
    assert!(!s.delete_prompt("op-p", "hello").unwrap());
    assert_eq!(s.prompt("op-p", "hello").unwrap(), None);
}

/// The cap counts the operator's other prompts (a replacement is not one more) and
/// no other operator's; a refused upload changes nothing.
fn prompts_are_capped_per_operator(s: &dyn Store) {
    let (op, other) = (crate::new_id("opq"), crate::new_id("opq"));
    let quota = PromptQuota {
        prompts: 2,
        bytes: 10,
    };
    let put = |op: &str, name, wav: &[u8]| s.put_prompt(op, name, wav, quota).unwrap();
    assert_eq!(put(&op, "a", b"12345"), PromptPut::Saved);
    assert_eq!(put(&op, "b", b"123"), PromptPut::Saved);
    assert_eq!(put(&op, "c", b"1"), PromptPut::TooMany);
    assert_eq!(put(&op, "b", b"123456"), PromptPut::TooLarge { others: 5 });
    assert_eq!(
        s.prompt(&op, "b").unwrap().as_deref(),
        Some(&b"123"[..]),
        "a refused replacement leaves the prompt it would have replaced"
    );
    assert_eq!(s.prompt(&op, "c").unwrap(), None);
    assert_eq!(put(&op, "b", b"12345"), PromptPut::Saved, "a replacement");
    assert_eq!(put(&other, "a", b"1234567890"), PromptPut::Saved);
    assert!(s.delete_prompt(&op, "a").unwrap());
    assert_eq!(put(&op, "c", b"1"), PromptPut::Saved, "a delete frees room");
}

/// Uploads of one operator through several handles (nodes) at once never pass the
/// cap together: eight threads uploading distinct prompts leave exactly the cap.
pub fn parallel_uploads_never_pass_the_prompt_cap(stores: &[&dyn Store]) {
    let op = crate::new_id("opq");
    let quota = PromptQuota {
        prompts: 5,
        bytes: 1 << 20,
    };
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    let (saved, contended) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|scope| {
        for worker in 0..8 {
            let (op, saved, contended) = (&op, &saved, &contended);
            let store = stores[worker % stores.len()];
            scope.spawn(move || {
                for i in 0..4 {
                    let name = format!("w{worker}_{i}");
                    match store.put_prompt(op, &name, b"RIFF", quota) {
                        Ok(PromptPut::Saved) => saved.fetch_add(1, Relaxed),
                        Ok(_) => 0,
                        // A compare-and-set backend gives up after some rounds of
                        // contention (the API answers 503: try again).
                        Err(StoreError::Unavailable(_)) => contended.fetch_add(1, Relaxed),
                        Err(e) => panic!("{e}"),
                    };
                }
            });
        }
    });
    let saved = saved.into_inner();
    if contended.into_inner() == 0 {
        assert_eq!(saved, 5);
    }
    assert!(saved <= 5, "{saved} saved past a cap of 5");
    let stored = stores[0]
        .all_prompts()
        .unwrap()
        .into_iter()
        .filter(|(o, _, _)| *o == op)
        .count();
    assert_eq!(stored, saved);
}

fn call_inserts_are_idempotent(s: &dyn Store) {
    let op = s.create_operator("a").unwrap();
    let other = s.create_operator("b").unwrap();
    let call = sample_call(&op.id, "adv_1", 1_000_000);
    s.insert_calls(std::slice::from_ref(&call), &[]).unwrap();
    s.insert_calls(&[call.clone(), call.clone()], &[]).unwrap();
    let q = CallQuery {
        operator_id: op.id.clone(),
        ..Default::default()
    };
    assert_eq!(collect(s, &q), vec![call.clone()]);
    assert_eq!(
        s.get_call(&op.id, &call.call_id).unwrap().as_ref(),
        Some(&call)
    );
    assert!(s.get_call(&other.id, &call.call_id).unwrap().is_none());
    assert!(collect(
        s,
        &CallQuery {
            operator_id: other.id.clone(),
            ..Default::default()
        }
    )
    .is_empty());
}

fn call_queries_filter_sort_and_page(s: &dyn Store) {
    let op = s.create_operator("a").unwrap();
    let mut calls = Vec::new();
    for i in 0..10i64 {
        let mut c = sample_call(
            &op.id,
            if i % 2 == 0 { "adv_even" } else { "adv_odd" },
            2_000_000 + i * 1000,
        );
        if i == 3 {
            c.result = CallResult::Busy;
            c.validity = Validity::InvalidShort;
            c.tracking_number = "0509999999".into();
        }
        calls.push(c);
    }
    // Two calls at the same instant: paging must order them by call_id and lose neither.
    calls[5].started_at = calls[4].started_at;
    s.insert_calls(&calls, &[]).unwrap();
    let base = CallQuery {
        operator_id: op.id.clone(),
        ..Default::default()
    };

    let all = collect(s, &base);
    assert_eq!(all.len(), 10);
    // A limit from a request may be any usize: past i64::MAX it means everything.
    let unbounded = CallQuery {
        limit: Some(usize::MAX),
        ..base.clone()
    };
    assert_eq!(collect(s, &unbounded).len(), 10);
    assert!(all
        .windows(2)
        .all(|w| (w[0].started_at, &w[0].call_id) < (w[1].started_at, &w[1].call_id)));
    let desc = collect(
        s,
        &CallQuery {
            order: SortOrder::Desc,
            ..base.clone()
        },
    );
    assert_eq!(desc.iter().rev().cloned().collect::<Vec<_>>(), all);

    let cases: Vec<(CallQuery, usize)> = vec![
        (
            CallQuery {
                from_ms: Some(2_005_000),
                ..base.clone()
            },
            4,
        ), // calls 6..=9 (call 5 moved back)
        (
            CallQuery {
                to_ms: Some(2_002_000),
                ..base.clone()
            },
            2,
        ),
        (
            CallQuery {
                advertiser_id: Some("adv_even".into()),
                ..base.clone()
            },
            5,
        ),
        (
            CallQuery {
                tracking_number: Some("0509999999".into()),
                ..base.clone()
            },
            1,
        ),
        (
            CallQuery {
                result: Some(CallResult::Busy),
                ..base.clone()
            },
            1,
        ),
        (
            CallQuery {
                validity: Some(Validity::Valid),
                ..base.clone()
            },
            9,
        ),
        (
            CallQuery {
                limit: Some(3),
                ..base.clone()
            },
            3,
        ),
    ];
    for (q, want) in cases {
        assert_eq!(collect(s, &q).len(), want, "{q:?}");
    }

    for order in [SortOrder::Asc, SortOrder::Desc] {
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = collect(
                s,
                &CallQuery {
                    order,
                    after: after.clone(),
                    limit: Some(3),
                    ..base.clone()
                },
            );
            if page.is_empty() {
                break;
            }
            let last = page.last().unwrap();
            after = Some((last.started_at, last.call_id.clone()));
            paged.extend(page);
        }
        let expected = if order == SortOrder::Asc {
            all.clone()
        } else {
            desc.clone()
        };
        assert_eq!(paged, expected, "paging {order:?}");
    }

    let mut seen = 0;
    s.scan_calls(&base, &mut |_| {
        seen += 1;
        seen < 4
    })
    .unwrap();
    assert_eq!(seen, 4, "scan stops when the visitor says so");
}

/// A query's deadline stops its scan part way (an API search's time budget) and says
/// so; a query without one, or within it, sees every row.
fn a_search_stops_at_its_deadline(s: &dyn Store) {
    use std::time::{Duration, Instant};
    let op = s.create_operator("deadline").unwrap();
    let calls: Vec<CallRecord> = (0..400i64)
        .map(|i| sample_call(&op.id, "adv_d", 3_000_000 + i * 1000))
        .collect();
    s.insert_calls(&calls, &[]).unwrap();
    let query = |deadline| CallQuery {
        operator_id: op.id.clone(),
        deadline,
        ..Default::default()
    };
    let mut seen = 0;
    let past = s.scan_calls(&query(Some(Instant::now())), &mut |_| {
        seen += 1;
        true
    });
    assert!(matches!(past, Err(StoreError::TimedOut(_))), "{past:?}");
    assert_eq!(seen, 0);
    // The first row takes longer than the whole budget (a slow client of the
    // scan); the scan must stop soon after instead of reading on to the end.
    let budget = Duration::from_millis(20);
    let mut seen = 0;
    let late = s.scan_calls(&query(Some(Instant::now() + budget)), &mut |_| {
        if seen == 0 {
            std::thread::sleep(budget * 2);
        }
        seen += 1;
        true
    });
    assert!(matches!(late, Err(StoreError::TimedOut(_))), "{late:?}");
    assert!(seen < calls.len(), "the scan read on past its deadline");
    // The next reads without a deadline (on the connection that scan gave back) see
    // every row: its deadline, long past, stays with it.
    for _ in 0..4 {
        assert_eq!(collect(s, &query(None)).len(), calls.len());
    }
    let far = Instant::now() + Duration::from_secs(3600);
    assert_eq!(collect(s, &query(Some(far))).len(), calls.len());
    assert_eq!(collect(s, &query(None)).len(), calls.len());
}

fn duplicate_lookup_window(s: &dyn Store) {
    let op = s.create_operator("a").unwrap();
    let adv = crate::new_id("adv");
    let caller = "0312345678";
    let mut first = sample_call(&op.id, &adv, 5_000_000);
    first.caller_number = caller.into();
    first.call_id = "call_m".into();
    s.insert_calls(std::slice::from_ref(&first), &[]).unwrap();
    // A call still in progress counts as well as an ended one.
    let mut running = sample_call(&op.id, &adv, 7_000_000);
    running.caller_number = caller.into();
    running.call_id = "call_r".into();
    running.node = "n-dup".into();
    running.owner_epoch = 1;
    running.state = CallState::Active;
    s.upsert_active_calls(&[ActiveCall {
        record: running,
        checkpoint: None,
    }])
    .unwrap();
    // (caller, since, before) -> an earlier call exists
    let cases = [
        (caller, 4_000_000, (6_000_000, "call_z"), true),
        (caller, 5_000_001, (6_000_000, "call_z"), false),
        (caller, 4_000_000, (5_000_000, "call_z"), true), // same ms, smaller id
        (caller, 4_000_000, (5_000_000, "call_m"), false), // itself
        (caller, 4_000_000, (5_000_000, "call_a"), false), // same ms, larger id
        (caller, 5_000_000, (5_000_000, "call_z"), true), // the window's first ms
        (caller, 6_000_000, (7_000_001, "call_a"), true), // in progress
        (caller, 6_000_000, (7_000_000, "call_r"), false),
        ("0399999999", 4_000_000, (8_000_000, "call_z"), false),
    ];
    for (caller, since, before, want) in cases {
        assert_eq!(
            s.earlier_call(&adv, caller, since, before).unwrap(),
            want,
            "{caller} {since} {before:?}"
        );
    }
}

/// A pool of `size` fresh numbers and their `pool` tracking-number records.
pub fn sample_pool(
    operator_id: &str,
    advertiser_id: &str,
    mode: PoolMode,
    size: usize,
    hold_seconds: u32,
    recycle_seconds: u32,
) -> (Pool, Vec<TrackingNumber>) {
    use rand::RngExt;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let id = crate::new_id("pool");
    // A process-wide sequence from a random start: pools never share numbers, also
    // on a store that outlives one run.
    let start = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        + rand::rng().random_range(0..90_000) / 10 * 10;
    let stem = start % 100_000;
    let numbers: Vec<String> = (0..size).map(|i| format!("05{stem:05}{i:04}")).collect();
    let pool = Pool {
        id: id.clone(),
        operator_id: operator_id.into(),
        advertiser_id: advertiser_id.into(),
        mode,
        numbers: numbers.clone(),
        hold_seconds,
        recycle_seconds,
        overflow_number: None,
        allowed_origins: Vec::new(),
        created_at: 1,
    };
    let records = numbers
        .iter()
        .map(|n| TrackingNumber {
            number: n.clone(),
            kind: NumberKind::Pool,
            pool_id: Some(id.clone()),
            notify: None,
            ga4: None,
            recording: None,
            schedule: None,
            absent: false,
            queue: None,
            ivr: None,
            judgement: None,
            ..sample_number(operator_id, advertiser_id)
        })
        .collect();
    (pool, records)
}

fn pools_are_created_atomically_and_scoped(s: &dyn Store) {
    let a = s.create_operator("a").unwrap();
    let b = s.create_operator("b").unwrap();
    let adv = s.create_advertiser(&a.id, "shop", None).unwrap();
    let (pool, numbers) = sample_pool(&a.id, &adv.id, PoolMode::Dynamic, 3, 60, 0);
    s.create_pool(&pool, &numbers).unwrap();
    assert_eq!(s.count_numbers(&a.id).unwrap(), 3, "a pool's numbers count");
    assert_eq!(s.get_pool(&a.id, &pool.id).unwrap().as_ref(), Some(&pool));
    assert!(s.get_pool(&b.id, &pool.id).unwrap().is_none());
    assert_eq!(s.pool_by_id(&pool.id).unwrap().as_ref(), Some(&pool));
    assert!(s.pool_by_id("pool_missing").unwrap().is_none());
    assert_eq!(s.list_pools(&a.id).unwrap(), vec![pool.clone()]);
    assert!(s.list_pools(&b.id).unwrap().is_empty());
    assert_eq!(
        s.get_number(&pool.numbers[0])
            .unwrap()
            .unwrap()
            .pool_id
            .as_deref(),
        Some(pool.id.as_str())
    );

    // A second pool reusing one number is refused whole.
    let (mut other, mut other_numbers) = sample_pool(&a.id, &adv.id, PoolMode::Dynamic, 2, 60, 0);
    other.numbers[1] = pool.numbers[2].clone();
    other_numbers[1].number = pool.numbers[2].clone();
    assert!(matches!(
        s.create_pool(&other, &other_numbers),
        Err(StoreError::Conflict(_))
    ));
    assert!(s.get_pool(&a.id, &other.id).unwrap().is_none());
    assert!(s.get_number(&other.numbers[0]).unwrap().is_none());

    let mut changed = pool.clone();
    changed.hold_seconds = 5;
    assert_eq!(s.update_pool(&changed, &pool).unwrap(), Update::Updated);
    assert_eq!(
        s.get_pool(&a.id, &pool.id).unwrap().unwrap().hold_seconds,
        5
    );
    // A change made from the read before that one is refused, and writes nothing.
    let mut stale = pool.clone();
    stale.recycle_seconds = 7;
    assert_eq!(s.update_pool(&stale, &pool).unwrap(), Update::Changed);
    assert_eq!(s.get_pool(&a.id, &pool.id).unwrap(), Some(changed.clone()));
    let foreign = Pool {
        operator_id: b.id.clone(),
        ..changed.clone()
    };
    assert_eq!(s.update_pool(&foreign, &changed).unwrap(), Update::Missing);
}

fn dynamic_leases(s: &dyn Store) {
    let op = s.create_operator("a").unwrap();
    let adv = s.create_advertiser(&op.id, "shop", None).unwrap();
    let (pool, numbers) = sample_pool(&op.id, &adv.id, PoolMode::Dynamic, 3, 60, 10);
    s.create_pool(&pool, &numbers).unwrap();
    let t = 10_000_000;
    let params = |v: &str| BTreeMap::from([("gclid".to_string(), v.to_string())]);
    let first = s
        .issue_lease(&pool, Some("s1"), &params("g1"), t)
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.number.as_str(), first.expires_at),
        (pool.numbers[0].as_str(), t + 60_000)
    );
    let again = s
        .issue_lease(&pool, Some("s1"), &params("ignored"), t + 1000)
        .unwrap()
        .unwrap();
    assert_eq!(again.number, first.number, "same session, same number");
    assert_eq!(again.expires_at, t + 61_000, "re-issuing extends the lease");
    assert_eq!(
        again.params,
        params("g1"),
        "the lease keeps the parameters it was issued with"
    );
    let b = s
        .issue_lease(&pool, Some("s2"), &params("g2"), t)
        .unwrap()
        .unwrap();
    let c = s
        .issue_lease(&pool, None, &params("g3"), t)
        .unwrap()
        .unwrap();
    assert_eq!(
        [b.number.as_str(), c.number.as_str()],
        [pool.numbers[1].as_str(), pool.numbers[2].as_str()]
    );
    assert_eq!(
        s.issue_lease(&pool, Some("s4"), &params("g4"), t).unwrap(),
        None,
        "exhausted"
    );
    assert_eq!(s.leased_count(&pool.id, t).unwrap(), 3);

    assert_eq!(
        s.lease_at(&first.number, t + 500).unwrap().unwrap().params,
        params("g1")
    );
    assert_eq!(
        s.lease_at(&first.number, t + 61_000).unwrap(),
        None,
        "after the lease"
    );
    assert_eq!(
        s.lease_at(&first.number, t - 1).unwrap(),
        None,
        "before the lease"
    );

    // b and c ended at t+60 s, first at t+61 s; with 10 s of cool-down, b is free at t+70 s.
    assert_eq!(
        s.issue_lease(&pool, Some("s5"), &params("g5"), t + 69_999)
            .unwrap(),
        None,
        "still cooling down"
    );
    assert_eq!(
        s.issue_lease(&pool, Some("s5"), &params("g5"), t + 70_000)
            .unwrap()
            .unwrap()
            .number,
        b.number
    );
    assert_eq!(s.leased_count(&pool.id, t + 70_000).unwrap(), 1);
}

fn one_time_leases_round_robin(s: &dyn Store) {
    let op = s.create_operator("a").unwrap();
    let adv = s.create_advertiser(&op.id, "shop", None).unwrap();
    let (pool, numbers) = sample_pool(&op.id, &adv.id, PoolMode::OneTime, 2, 1, 0);
    s.create_pool(&pool, &numbers).unwrap();
    let t = 20_000_000;
    let issue = |at: i64| {
        s.issue_lease(&pool, Some("same-session"), &BTreeMap::new(), at)
            .unwrap()
            .map(|l| l.number)
    };
    assert_eq!(issue(t).as_deref(), Some(pool.numbers[0].as_str()));
    assert_eq!(
        issue(t).as_deref(),
        Some(pool.numbers[1].as_str()),
        "one-time: no reuse by session"
    );
    assert_eq!(issue(t), None);
    assert_eq!(
        issue(t + 1000).as_deref(),
        Some(pool.numbers[0].as_str()),
        "recycled after the hold, oldest first"
    );
    assert_eq!(issue(t + 1001).as_deref(), Some(pool.numbers[1].as_str()));
}

/// Keys are listed by prefix and id (oldest first), scoped to their operator, and a
/// revoked key finds no operator at once.
fn api_keys_are_listed_and_revoked(s: &dyn Store) {
    let a = s.create_operator("a").unwrap();
    let b = s.create_operator("b").unwrap();
    let (h1, h2) = (crate::hash_api_key("tsk_k1"), crate::hash_api_key("tsk_k2"));
    let k1 = s.add_api_key(&a.id, &h1, "tsk_k1").unwrap();
    let k2 = s.add_api_key(&a.id, &h2, "tsk_k2").unwrap();
    assert_ne!(k1.id, k2.id);
    assert_eq!(k1.prefix.as_deref(), Some("tsk_k1"));
    let listed = s.list_api_keys(&a.id).unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&k1) && listed.contains(&k2));
    assert!(s.list_api_keys(&b.id).unwrap().is_empty());
    assert!(
        !s.revoke_api_key(&b.id, &k1.id, None).unwrap(),
        "another operator's key"
    );
    assert_eq!(op_of_key(s, &h1), Some(a.id.clone()));
    assert!(s.revoke_api_key(&a.id, &k1.id, None).unwrap());
    assert_eq!(op_of_key(s, &h1), None, "revoked");
    assert_eq!(op_of_key(s, &h2), Some(a.id.clone()));
    assert!(
        !s.revoke_api_key(&a.id, &k1.id, None).unwrap(),
        "already revoked"
    );
    assert_eq!(s.list_api_keys(&a.id).unwrap(), vec![k2]);
}

/// An advertiser's key speaks for its operator and that advertiser; it is made only
/// for an advertiser of the operator's, at most `cap` per advertiser, is listed and
/// revoked with the operator's keys, and goes when its advertiser is deleted (the
/// operator's own keys, and another advertiser's, stay).
fn advertiser_keys_are_limited_and_go_with_their_advertiser(s: &dyn Store) {
    let a = s.create_operator("a").unwrap();
    let b = s.create_operator("b").unwrap();
    let shop = s.create_advertiser(&a.id, "shop", None).unwrap();
    let cafe = s.create_advertiser(&a.id, "cafe", None).unwrap();
    let theirs = s.create_advertiser(&b.id, "theirs", None).unwrap();
    let hash = |k: &str| crate::hash_api_key(&format!("{k}{}", shop.id));
    let own = s.add_api_key(&a.id, &hash("op"), "tsk_op").unwrap();
    let k1 = s
        .add_advertiser_key(&a.id, &shop.id, &hash("k1"), "tsk_k1", 2)
        .unwrap()
        .expect("the operator's advertiser");
    assert_eq!(k1.advertiser_id.as_deref(), Some(shop.id.as_str()));
    assert_eq!(
        s.key_owner(&hash("k1")).unwrap(),
        Some(KeyOwner {
            operator_id: a.id.clone(),
            advertiser_id: Some(shop.id.clone()),
        })
    );
    for (op, adv) in [
        (&a.id, "adv_missing"),
        (&a.id, theirs.id.as_str()),
        (&b.id, shop.id.as_str()),
    ] {
        assert_eq!(
            s.add_advertiser_key(op, adv, &hash("x"), "tsk_x", 2)
                .unwrap(),
            None,
            "{op} {adv}"
        );
    }
    assert_eq!(
        s.key_owner(&hash("x")).unwrap(),
        None,
        "nothing was written"
    );
    s.add_advertiser_key(&a.id, &shop.id, &hash("k2"), "tsk_k2", 2)
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            s.add_advertiser_key(&a.id, &shop.id, &hash("k3"), "tsk_k3", 2),
            Err(StoreError::InUse(_))
        ),
        "past the cap"
    );
    let other = s
        .add_advertiser_key(&a.id, &cafe.id, &hash("k4"), "tsk_k4", 2)
        .unwrap()
        .expect("another advertiser has its own cap");
    let listed = s.list_api_keys(&a.id).unwrap();
    assert_eq!(listed.len(), 4, "{listed:?}");
    assert!(listed.contains(&k1) && listed.contains(&own) && listed.contains(&other));
    // Through an advertiser: its own keys only, not another's nor the operator's.
    for (key, of) in [
        (&k1.id, &cafe.id),
        (&own.id, &shop.id),
        (&other.id, &shop.id),
    ] {
        assert!(
            !s.revoke_api_key(&a.id, key, Some(of)).unwrap(),
            "{key} as {of}'s"
        );
    }
    assert_eq!(s.list_api_keys(&a.id).unwrap().len(), 4, "nothing revoked");
    assert!(s.revoke_api_key(&a.id, &k1.id, Some(&shop.id)).unwrap());
    assert_eq!(s.key_owner(&hash("k1")).unwrap(), None, "revoked");
    assert!(s.delete_advertiser(&a.id, &shop.id).unwrap());
    assert_eq!(
        s.key_owner(&hash("k2")).unwrap(),
        None,
        "gone with its advertiser"
    );
    assert_eq!(op_of_key(s, &hash("op")), Some(a.id.clone()));
    assert_eq!(
        s.key_owner(&hash("k4"))
            .unwrap()
            .and_then(|o| o.advertiser_id),
        Some(cafe.id.clone())
    );
    assert_eq!(s.list_api_keys(&a.id).unwrap(), vec![own, other]);
}

/// A session holds at most its cap of live leases of a pool; an extension of its live
/// lease (dynamic) is not a new lease; the cap frees up as its leases end.
fn sessions_hold_at_most_their_cap(s: &dyn Store) {
    let op = s.create_operator("a").unwrap();
    let adv = s.create_advertiser(&op.id, "shop", None).unwrap();
    let (pool, numbers) = sample_pool(&op.id, &adv.id, PoolMode::OneTime, 5, 10, 0);
    s.create_pool(&pool, &numbers).unwrap();
    let t = 40_000_000;
    let issue = |session: Option<&str>, at: i64| {
        s.issue_lease_capped(&pool, session, &BTreeMap::new(), at, per_session(2))
            .unwrap()
    };
    assert!(matches!(issue(Some("v"), t), IssueOutcome::Leased(_)));
    assert!(matches!(issue(Some("v"), t + 1), IssueOutcome::Leased(_)));
    assert_eq!(
        issue(Some("v"), t + 2),
        IssueOutcome::SessionFull {
            retry_at_ms: t + 10_000
        }
    );
    assert!(
        matches!(issue(Some("w"), t + 2), IssueOutcome::Leased(_)),
        "other sessions are not affected"
    );
    assert!(matches!(issue(None, t + 2), IssueOutcome::Leased(_)));
    assert!(matches!(issue(None, t + 2), IssueOutcome::Leased(_)));
    assert_eq!(issue(None, t + 2), IssueOutcome::Exhausted);
    assert!(
        matches!(issue(Some("v"), t + 10_000), IssueOutcome::Leased(_)),
        "the first lease ended"
    );

    let (dynamic, numbers) = sample_pool(&op.id, &adv.id, PoolMode::Dynamic, 3, 10, 0);
    s.create_pool(&dynamic, &numbers).unwrap();
    let issue = |at: i64| {
        s.issue_lease_capped(&dynamic, Some("d"), &BTreeMap::new(), at, per_session(1))
            .unwrap()
    };
    let IssueOutcome::Leased(first) = issue(t) else {
        panic!("first lease")
    };
    let IssueOutcome::Leased(again) = issue(t + 5_000) else {
        panic!("an extension is not a new lease")
    };
    assert_eq!(
        (again.number.as_str(), again.expires_at),
        (first.number.as_str(), t + 15_000)
    );
}

fn per_session(cap: u32) -> LeaseCaps<'static> {
    LeaseCaps {
        per_session: Some(cap),
        client: None,
    }
}

/// A client holds at most its cap of live leases of a pool whether it names no
/// session, a new one each time or the same one; an extension of a session's live
/// lease is not a new lease and keeps counting; the cap frees up as leases end; other
/// clients and other pools are not affected.
fn clients_hold_at_most_their_cap(s: &dyn Store) {
    let op = s.create_operator("a").unwrap();
    let adv = s.create_advertiser(&op.id, "shop", None).unwrap();
    let (pool, numbers) = sample_pool(&op.id, &adv.id, PoolMode::Dynamic, 6, 10, 0);
    s.create_pool(&pool, &numbers).unwrap();
    let (other_pool, numbers) = sample_pool(&op.id, &adv.id, PoolMode::Dynamic, 2, 10, 0);
    s.create_pool(&other_pool, &numbers).unwrap();
    let t = 50_000_000;
    let issue = |pool: &Pool, client: &str, session: Option<&str>, at: i64| {
        let caps = LeaseCaps {
            per_session: Some(5),
            client: Some((client, 2)),
        };
        s.issue_lease_capped(pool, session, &BTreeMap::new(), at, caps)
            .unwrap()
    };
    let IssueOutcome::Leased(first) = issue(&pool, "192.0.2.7", Some("s1"), t) else {
        panic!("first lease")
    };
    assert!(matches!(
        issue(&pool, "192.0.2.7", None, t + 1),
        IssueOutcome::Leased(_)
    ));
    for session in [None, Some("s2"), Some("s3")] {
        assert_eq!(
            issue(&pool, "192.0.2.7", session, t + 2),
            IssueOutcome::ClientFull {
                retry_at_ms: t + 10_000
            },
            "{session:?}"
        );
    }
    // The session's live lease is extended, not refused, and still counts.
    let IssueOutcome::Leased(extended) = issue(&pool, "192.0.2.7", Some("s1"), t + 3) else {
        panic!("an extension is not a new lease")
    };
    assert_eq!(extended.number, first.number);
    assert!(matches!(
        issue(&pool, "192.0.2.8", None, t + 3),
        IssueOutcome::Leased(_)
    ));
    assert!(matches!(
        issue(&other_pool, "192.0.2.7", None, t + 3),
        IssueOutcome::Leased(_)
    ));
    // The unextended lease ends at t + 10 001: one place again, not two.
    assert!(matches!(
        issue(&pool, "192.0.2.7", None, t + 10_001),
        IssueOutcome::Leased(_)
    ));
    assert!(matches!(
        issue(&pool, "192.0.2.7", None, t + 10_002),
        IssueOutcome::ClientFull { .. }
    ));
    // Leases issued without a client (an API key's) count toward no client.
    assert!(s
        .issue_lease(&pool, None, &BTreeMap::new(), t + 10_002)
        .unwrap()
        .is_some());
    // Both caps reached at once: the session's is the one reported, on every backend.
    let (one_time, numbers) = sample_pool(&op.id, &adv.id, PoolMode::OneTime, 4, 10, 0);
    s.create_pool(&one_time, &numbers).unwrap();
    let both = |session: &str| {
        let caps = LeaseCaps {
            per_session: Some(1),
            client: Some(("198.51.100.1", 2)),
        };
        s.issue_lease_capped(&one_time, Some(session), &BTreeMap::new(), t, caps)
            .unwrap()
    };
    assert!(matches!(both("a"), IssueOutcome::Leased(_)));
    assert!(matches!(both("b"), IssueOutcome::Leased(_)));
    assert!(matches!(both("a"), IssueOutcome::SessionFull { .. }));
    assert!(matches!(both("c"), IssueOutcome::ClientFull { .. }));
}

/// The client cap holds against parallel issuers on several connections: eight
/// threads of one client, each naming new sessions, leave it exactly its cap. Not
/// part of [`run_all`]: the ScyllaDB backend counts a client's leases by a read
/// before it takes a number (README, "Known limits of the ScyllaDB backend").
pub fn the_client_cap_holds_against_parallel_issuers(stores: &[&dyn Store]) {
    let s = stores[0];
    let op = s.create_operator("a").unwrap();
    let adv = s.create_advertiser(&op.id, "shop", None).unwrap();
    let (pool, numbers) = sample_pool(&op.id, &adv.id, PoolMode::Dynamic, 100, 600, 0);
    s.create_pool(&pool, &numbers).unwrap();
    let issued = std::sync::Mutex::new(0);
    std::thread::scope(|scope| {
        for worker in 0..8 {
            let (pool, issued) = (&pool, &issued);
            let store = stores[worker % stores.len()];
            scope.spawn(move || {
                for i in 0..5 {
                    let session = format!("w{worker}-{i}");
                    let caps = LeaseCaps {
                        per_session: Some(2),
                        client: Some(("2001:db8:1:2::", 7)),
                    };
                    let outcome = store
                        .issue_lease_capped(
                            pool,
                            Some(&session),
                            &BTreeMap::new(),
                            60_000_000,
                            caps,
                        )
                        .unwrap();
                    if matches!(outcome, IssueOutcome::Leased(_)) {
                        *issued.lock().unwrap() += 1;
                    }
                }
            });
        }
    });
    assert_eq!(issued.into_inner().unwrap(), 7);
}

/// Issuers on several threads (and, given several handles on one database, several
/// connections) never lease one number twice.
pub fn concurrent_issuers_never_share_a_number(stores: &[&dyn Store]) {
    let s = stores[0];
    let op = s.create_operator("a").unwrap();
    let adv = s.create_advertiser(&op.id, "shop", None).unwrap();
    let (pool, numbers) = sample_pool(&op.id, &adv.id, PoolMode::Dynamic, 250, 600, 0);
    s.create_pool(&pool, &numbers).unwrap();
    let issued = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for worker in 0..8 {
            let (pool, issued) = (&pool, &issued);
            let store = stores[worker % stores.len()];
            scope.spawn(move || {
                for i in 0..25 {
                    let session = format!("w{worker}-{i}");
                    if let Some(l) = store
                        .issue_lease(pool, Some(&session), &BTreeMap::new(), 30_000_000)
                        .unwrap()
                    {
                        issued.lock().unwrap().push(l.number);
                    }
                }
            });
        }
    });
    let mut issued = issued.into_inner().unwrap();
    assert_eq!(issued.len(), 200, "every session got a number");
    issued.sort();
    issued.dedup();
    assert_eq!(issued.len(), 200, "no number was leased twice");
}

/// The per-operator limit holds against creations in parallel: eight threads adding
/// five each leave exactly the limit, and another operator is not counted. Not part
/// of [`run_all`]: the ScyllaDB backend reads the count before it adds (no
/// transaction), so parallel creations can pass it together there (README, "Known
/// limits of the ScyllaDB backend").
pub fn the_webhook_limit_holds_against_parallel_creations(s: &dyn Store) {
    let a = s.create_operator("limit-a").unwrap();
    let b = s.create_operator("limit-b").unwrap();
    let hook = |op: &str| Webhook {
        id: crate::new_id("wh"),
        operator_id: op.to_string(),
        url: "http://127.0.0.1:9/hook".into(),
        secret: "s3cret".into(),
        events: vec!["call.ended".into()],
        created_at: 1,
    };
    s.create_webhook(&hook(&b.id), 20).unwrap();
    let refused = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..5 {
                    match s.create_webhook(&hook(&a.id), 20) {
                        Ok(()) => {}
                        Err(StoreError::InUse(_)) => {
                            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            });
        }
    });
    assert_eq!(s.list_webhooks(&a.id).unwrap().len(), 20);
    assert_eq!(refused.into_inner(), 20);
}

fn webhooks_are_scoped(s: &dyn Store) {
    let a = s.create_operator("a").unwrap();
    let b = s.create_operator("b").unwrap();
    let hook = Webhook {
        id: crate::new_id("wh"),
        operator_id: a.id.clone(),
        url: "http://127.0.0.1:9/hook".into(),
        secret: "s3cret".into(),
        events: vec!["call.ended".into()],
        created_at: 1,
    };
    s.create_webhook(&hook, 20).unwrap();
    assert!(matches!(
        s.create_webhook(&hook, 20),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.list_webhooks(&a.id).unwrap(), vec![hook.clone()]);
    assert!(s.list_webhooks(&b.id).unwrap().is_empty());
    assert_eq!(s.get_webhook(&hook.id).unwrap(), Some(hook.clone()));
    assert!(s.all_webhooks().unwrap().contains(&hook));
    assert!(
        !s.delete_webhook(&b.id, &hook.id).unwrap(),
        "other operator"
    );
    assert!(s.delete_webhook(&a.id, &hook.id).unwrap());
    assert!(s.get_webhook(&hook.id).unwrap().is_none());
}

fn follow_up(op: &str, target: &str) -> NewFollowUp {
    NewFollowUp {
        kind: FollowUpKind::Webhook,
        operator_id: op.into(),
        target: target.into(),
        payload: format!("{{\"to\":\"{target}\"}}"),
    }
}

/// Claims everything due far in the future (so rows of earlier checks are included)
/// and keeps those of `op`.
fn claim_of(s: &dyn Store, op: &str, now: i64) -> Vec<FollowUp> {
    s.claim_follow_ups(now, 10_000, 60_000)
        .unwrap()
        .into_iter()
        .filter(|f| f.item.operator_id == op)
        .collect()
}

fn follow_ups_are_queued_with_their_call_once(s: &dyn Store) {
    let op = s.create_operator("a").unwrap();
    let mut call = sample_call(&op.id, "adv_1", 5_000_000);
    call.callback_of = Some("call_earlier".into());
    call.recording = Some("2026-11-28/x.wav".into());
    call.recording_status = Some(RecordingStatus::Truncated);
    let other = sample_call(&op.id, "adv_1", 5_000_001);
    let items = vec![(0, follow_up(&op.id, "one")), (1, follow_up(&op.id, "two"))];
    s.insert_calls(&[call.clone(), other.clone()], &items)
        .unwrap();
    // The same records again (a retried batch): no second set of follow-ups.
    s.insert_calls(&[call.clone()], &[(0, follow_up(&op.id, "again"))])
        .unwrap();
    let stored = s.get_call(&op.id, &call.call_id).unwrap().unwrap();
    assert_eq!(stored, call, "every field round-trips");
    let claimed = claim_of(s, &op.id, i64::MAX / 4);
    let targets: Vec<&str> = claimed.iter().map(|f| f.item.target.as_str()).collect();
    assert_eq!(targets, vec!["one", "two"]);
    for f in claimed {
        s.follow_up_delivered(f.id).unwrap();
    }
}

fn outbox_claims_retries_and_dead_letters(s: &dyn Store) {
    let op = s.create_operator("a").unwrap();
    s.enqueue_follow_ups(&[follow_up(&op.id, "x"), follow_up(&op.id, "y")])
        .unwrap();
    let far = i64::MAX / 4;
    let first = claim_of(s, &op.id, far);
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|f| f.attempts == 1));
    assert_eq!(first[0].item, follow_up(&op.id, "x"));
    // Claimed rows are hidden from a second claimer until the claim runs out.
    assert!(claim_of(s, &op.id, far).is_empty());
    let again = claim_of(s, &op.id, far + 60_000);
    assert_eq!(again.len(), 2, "a claim that ran out is released");
    assert!(again.iter().all(|f| f.attempts == 2));
    // x fails and is retried later; y fails for good.
    assert!(s
        .follow_up_failed(again[0].claim(), Some(far + 200_000), "503")
        .unwrap());
    assert!(s
        .follow_up_failed(again[1].claim(), None, "gave up")
        .unwrap());
    assert!(claim_of(s, &op.id, far + 199_999).is_empty());
    let retried = claim_of(s, &op.id, far + 200_000);
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].item.target, "x");
    assert_eq!(retried[0].attempts, 3);
    let (_, dead) = s.follow_up_counts().unwrap();
    assert!(dead >= 1);
    s.follow_up_delivered(retried[0].id).unwrap();
    assert!(claim_of(s, &op.id, far + 10_000_000).is_empty());
}

fn released_follow_ups_keep_their_attempts(s: &dyn Store) {
    let op = s.create_operator("a").unwrap();
    s.enqueue_follow_ups(&[follow_up(&op.id, "busy")]).unwrap();
    let far = i64::MAX / 4;
    let first = claim_of(s, &op.id, far);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempts, 1);
    s.release_follow_ups(&[(first[0].claim(), far + 5_000)])
        .unwrap();
    assert!(
        claim_of(s, &op.id, far + 4_999).is_empty(),
        "released until next_at"
    );
    let again = claim_of(s, &op.id, far + 5_000);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1, "a released claim is not an attempt");
    s.follow_up_delivered(again[0].id).unwrap();
}

/// A worker whose claim ran out (a store stalled for longer than the claim) while
/// another claimed the row: its late outcome or hand-back changes nothing, so it
/// cannot make the row due again while the other delivers it (a double delivery).
fn a_lost_claim_writes_no_outcome(s: &dyn Store) {
    let op = s.create_operator("a").unwrap();
    s.enqueue_follow_ups(&[follow_up(&op.id, "slow")]).unwrap();
    let far = i64::MAX / 4;
    let stale = claim_of(s, &op.id, far);
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].claimed_until, far + 60_000);
    let current = claim_of(s, &op.id, far + 60_000);
    assert_eq!(current.len(), 1, "the first claim ran out");
    assert_eq!(current[0].attempts, 2);
    let stale = stale[0].claim();
    assert!(!s
        .follow_up_failed(stale, Some(far + 61_000), "timeout")
        .unwrap());
    assert!(!s.follow_up_failed(stale, None, "gave up").unwrap());
    s.release_follow_ups(&[(stale, far + 61_000)]).unwrap();
    assert!(
        claim_of(s, &op.id, far + 119_999).is_empty(),
        "still the second claimer's, neither due again nor dead"
    );
    assert!(s
        .follow_up_failed(current[0].claim(), Some(far + 130_000), "503")
        .unwrap());
    let retried = claim_of(s, &op.id, far + 130_000);
    assert_eq!(retried.len(), 1, "the current claimer's outcome stands");
    assert_eq!(
        retried[0].attempts, 3,
        "no attempt given back by the stale hand-back"
    );
    s.follow_up_delivered(retried[0].id).unwrap();
}

/// A follow-up given up stays in the outbox thirty days (dated by its last claim's
/// end), then later claims prune it. Run after the other outbox checks: it is dated
/// after their rows, and prunes their dead ones too.
fn dead_follow_ups_are_pruned_after_thirty_days(s: &dyn Store) {
    let op = s.create_operator("a").unwrap();
    s.enqueue_follow_ups(&[follow_up(&op.id, "gone")]).unwrap();
    let day: i64 = 86_400_000;
    let at = i64::MAX / 4 + 1_000 * day;
    let claimed = claim_of(s, &op.id, at);
    assert_eq!(claimed.len(), 1);
    assert!(s
        .follow_up_failed(claimed[0].claim(), None, "gone")
        .unwrap());
    let given_up = claimed[0].claimed_until;
    let dead = |s: &dyn Store| s.follow_up_counts().unwrap().1;
    assert!(dead(s) >= 1);
    let before = dead(s);
    assert!(claim_of(s, &op.id, given_up + 29 * day).is_empty());
    assert!(dead(s) >= 1, "kept 29 days");
    // Each claim prunes a bounded number: a few rounds clear what earlier checks left.
    for _ in 0..16 {
        if dead(s) == 0 {
            break;
        }
        assert!(claim_of(s, &op.id, given_up + 31 * day).is_empty());
    }
    assert_eq!(dead(s), 0, "pruned after 30 days ({before} dead before)");
}

fn caller_sms_are_capped_per_number_and_day(s: &dyn Store) {
    let (caller, other) = (crate::new_id("caller"), crate::new_id("caller"));
    let day = 20_000;
    let take =
        |number: &str, day: i64, call: &str| s.take_caller_sms(number, day, call, 2).unwrap();
    let (a, b, c) = (
        crate::new_id("call"),
        crate::new_id("call"),
        crate::new_id("call"),
    );
    assert!(take(&caller, day, &a));
    assert!(
        take(&caller, day, &a),
        "the same call again is not counted twice"
    );
    assert!(take(&caller, day, &b));
    assert!(
        !take(&caller, day, &c),
        "third SMS of the day is over the cap"
    );
    assert!(take(&other, day, &c), "another number has its own count");
    assert!(take(&caller, day + 1, &crate::new_id("call")), "a new day");
}

fn notices_are_capped_per_number_and_hour(s: &dyn Store) {
    let ids = (crate::new_id("number"), crate::new_id("number"));
    let (number, other) = (ids.0.as_str(), ids.1.as_str());
    // The hour before this one (counts of hours past are forgotten).
    let hour = NoticeClaim::hour_of(crate::now_ms()) - 1;
    let calls: Vec<String> = (0..6).map(|_| crate::new_id("call")).collect();
    // Claims as (number, hour, index of the call).
    let take = |claims: &[(&str, i64, usize)]| {
        let claims: Vec<NoticeClaim<'_>> = claims
            .iter()
            .map(|&(number, hour, call)| NoticeClaim {
                number,
                hour,
                call_id: &calls[call],
            })
            .collect();
        s.take_notices(&claims, 2).unwrap()
    };
    assert_eq!(take(&[]), Vec::<bool>::new());
    assert_eq!(
        take(&[(number, hour, 0), (number, hour, 0), (number, hour, 1)]),
        [true, true, true],
        "the same call twice in a batch is counted once"
    );
    assert_eq!(
        take(&[(number, hour, 2), (other, hour, 2), (number, hour, 1)]),
        [false, true, true],
        "past the cap; another number has its own count; a call counted before still goes"
    );
    assert_eq!(
        take(&[(number, hour + 1, 3), (number, hour + 1, 4)]),
        [true, true],
        "a new hour"
    );
    assert_eq!(
        take(&[(number, hour + 1, 5), (number, hour, 0)]),
        [false, true],
        "the hour before is still counted"
    );
}
