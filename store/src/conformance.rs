//! The store conformance suite: behaviour every [`Store`] backend must show, written
//! against the trait alone. Backends call [`run_all`] from their own tests (the
//! ScyllaDB backend only where `TSUNAGU_SCYLLA_NODES` names a real server).
//! Each check starts from fresh ids, so the suite tolerates a non-empty store.

use crate::model::*;
use crate::{Store, StoreError};
use std::collections::BTreeMap;

pub fn run_all(store: &dyn Store) {
    operators_and_keys(store);
    advertisers_are_scoped(store);
    numbers_are_unique_and_scoped(store);
    call_inserts_are_idempotent(store);
    call_queries_filter_sort_and_page(store);
    duplicate_lookup_window(store);
    store.ping().expect("ping");
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
    s.add_api_key(&op.id, &hash).unwrap();
    assert_eq!(s.operator_for_key(&hash).unwrap(), Some(op.id.clone()));
    assert_eq!(s.operator_for_key("nope").unwrap(), None);

    let adv = s.create_advertiser(&op.id, "shop").unwrap();
    assert!(
        matches!(s.delete_operator(&op.id), Err(StoreError::InUse(_))),
        "operator with advertisers"
    );
    assert!(s.delete_advertiser(&op.id, &adv.id).unwrap());
    assert!(s.delete_operator(&op.id).unwrap());
    assert!(s.get_operator(&op.id).unwrap().is_none());
    assert_eq!(
        s.operator_for_key(&hash).unwrap(),
        None,
        "keys go with their operator"
    );
    assert!(!s.delete_operator(&op.id).unwrap());
}

fn advertisers_are_scoped(s: &dyn Store) {
    let a = s.create_operator("a").unwrap();
    let b = s.create_operator("b").unwrap();
    let adv = s.create_advertiser(&a.id, "shop").unwrap();
    assert_eq!(
        s.get_advertiser(&a.id, &adv.id).unwrap().as_ref(),
        Some(&adv)
    );
    assert!(s.get_advertiser(&b.id, &adv.id).unwrap().is_none());
    assert!(s.list_advertisers(&b.id).unwrap().is_empty());
    assert_eq!(s.list_advertisers(&a.id).unwrap(), vec![adv.clone()]);
    assert!(s
        .rename_advertiser(&b.id, &adv.id, "stolen")
        .unwrap()
        .is_none());
    assert!(!s.delete_advertiser(&b.id, &adv.id).unwrap());
    assert_eq!(
        s.get_advertiser(&a.id, &adv.id).unwrap().unwrap().name,
        "shop"
    );
    assert_eq!(
        s.rename_advertiser(&a.id, &adv.id, "shop2")
            .unwrap()
            .unwrap()
            .name,
        "shop2"
    );
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
        },
        caller_id: CallerIdMode::Caller,
        tracking_params: BTreeMap::from([("medium".to_string(), "flyer".to_string())]),
        created_at: 1,
        updated_at: 1,
    }
}

fn numbers_are_unique_and_scoped(s: &dyn Store) {
    let a = s.create_operator("a").unwrap();
    let b = s.create_operator("b").unwrap();
    let adv = s.create_advertiser(&a.id, "shop").unwrap();
    let mut n = sample_number(&a.id, &adv.id);
    s.create_number(&n).unwrap();
    assert!(matches!(s.create_number(&n), Err(StoreError::Conflict(_))));
    assert_eq!(s.get_number(&n.number).unwrap().as_ref(), Some(&n));
    assert_eq!(s.list_numbers(&a.id, None).unwrap(), vec![n.clone()]);
    assert_eq!(s.list_numbers(&a.id, Some(&adv.id)).unwrap().len(), 1);
    assert!(s.list_numbers(&a.id, Some("adv_other")).unwrap().is_empty());
    assert!(s.list_numbers(&b.id, None).unwrap().is_empty());
    assert!(s
        .all_numbers()
        .unwrap()
        .iter()
        .any(|x| x.number == n.number));

    n.destinations[0].ring_seconds = 5;
    assert!(s.update_number(&n).unwrap());
    assert_eq!(
        s.get_number(&n.number).unwrap().unwrap().destinations[0].ring_seconds,
        5
    );
    let mut foreign = n.clone();
    foreign.operator_id = b.id.clone();
    assert!(
        !s.update_number(&foreign).unwrap(),
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
}

/// A finished-call record for tests.
pub fn sample_call(operator_id: &str, advertiser_id: &str, started_at: i64) -> CallRecord {
    CallRecord {
        call_id: crate::new_id("call"),
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

fn call_inserts_are_idempotent(s: &dyn Store) {
    let op = s.create_operator("a").unwrap();
    let other = s.create_operator("b").unwrap();
    let call = sample_call(&op.id, "adv_1", 1_000_000);
    s.insert_calls(&[call.clone()]).unwrap();
    s.insert_calls(&[call.clone(), call.clone()]).unwrap();
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
    s.insert_calls(&calls).unwrap();
    let base = CallQuery {
        operator_id: op.id.clone(),
        ..Default::default()
    };

    let all = collect(s, &base);
    assert_eq!(all.len(), 10);
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

fn duplicate_lookup_window(s: &dyn Store) {
    let op = s.create_operator("a").unwrap();
    let adv = crate::new_id("adv");
    let mut first = sample_call(&op.id, &adv, 5_000_000);
    first.caller_number = "0312345678".into();
    s.insert_calls(&[first]).unwrap();
    let cases = [
        ("0312345678", 4_000_000, 6_000_000, Some(5_000_000)),
        ("0312345678", 5_000_001, 6_000_000, None),
        ("0312345678", 4_000_000, 5_000_000, None),
        ("0399999999", 4_000_000, 6_000_000, None),
    ];
    for (caller, since, before, want) in cases {
        assert_eq!(
            s.last_call_started(&adv, caller, since, before).unwrap(),
            want,
            "{caller} {since} {before}"
        );
    }
}
