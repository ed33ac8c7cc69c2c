//! Business hours and absence (スケジュール設定・不在設定): whether a number takes calls
//! at a moment, from its weekly hours, holidays, date exceptions, time zone and the
//! manual absence switch. Pure: the time is an argument.

use chrono::{Datelike, FixedOffset, TimeZone, Timelike, Weekday};
use tsunagu_store::schedule::{minutes, zone_offset};
use tsunagu_store::{Schedule, TimeSpan};

/// Whether calls are taken, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// Outside business hours (or a holiday).
    OutOfHours,
    /// The manual absence switch is on.
    Absent,
}

fn in_spans(spans: &[TimeSpan], minute: u32) -> bool {
    spans
        .iter()
        .any(|s| match (minutes(&s.start), minutes(&s.end)) {
            (Some(a), Some(b)) => a <= minute && minute < b,
            _ => false,
        })
}

fn weekday_key(d: Weekday) -> &'static str {
    match d {
        Weekday::Mon => "mon",
        Weekday::Tue => "tue",
        Weekday::Wed => "wed",
        Weekday::Thu => "thu",
        Weekday::Fri => "fri",
        Weekday::Sat => "sat",
        Weekday::Sun => "sun",
    }
}

/// Whether `schedule` is open at `at_ms` (UTC milliseconds).
pub fn open_at(schedule: &Schedule, at_ms: i64) -> bool {
    let offset = zone_offset(&schedule.time_zone).unwrap_or(540);
    let Some(zone) = FixedOffset::east_opt(offset * 60) else {
        return true;
    };
    let Some(local) = zone.timestamp_millis_opt(at_ms).single() else {
        return true;
    };
    let date = local.date_naive();
    let minute = local.time().hour() * 60 + local.time().minute();
    let iso = date.format("%Y-%m-%d").to_string();
    if let Some(e) = schedule.exceptions.iter().find(|e| e.date == iso) {
        return in_spans(&e.hours, minute);
    }
    if schedule.holidays.contains(&iso) {
        return false;
    }
    schedule
        .weekly
        .get(weekday_key(date.weekday()))
        .is_some_and(|spans| in_spans(spans, minute))
}

/// The gate of a number at `at_ms`: absence first, then the schedule (none = always open).
pub fn gate(schedule: Option<&Schedule>, absent: bool, at_ms: i64) -> Gate {
    if absent {
        Gate::Absent
    } else if schedule.is_some_and(|s| !open_at(s, at_ms)) {
        Gate::OutOfHours
    } else {
        Gate::Open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tsunagu_store::DateHours;

    fn span(a: &str, b: &str) -> TimeSpan {
        TimeSpan {
            start: a.into(),
            end: b.into(),
        }
    }

    /// UTC milliseconds of a Tokyo wall-clock time.
    fn tokyo(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
        FixedOffset::east_opt(9 * 3600)
            .unwrap()
            .with_ymd_and_hms(y, mo, d, h, mi, 0)
            .unwrap()
            .timestamp_millis()
    }

    fn office() -> Schedule {
        let weekday = vec![span("09:00", "12:00"), span("13:00", "18:00")];
        Schedule {
            time_zone: "Asia/Tokyo".into(),
            weekly: ["mon", "tue", "wed", "thu", "fri"]
                .iter()
                .map(|d| (d.to_string(), weekday.clone()))
                .chain([("sat".to_string(), vec![span("10:00", "15:00")])])
                .collect::<BTreeMap<_, _>>(),
            holidays: vec!["2026-12-31".into()],
            exceptions: vec![
                DateHours {
                    date: "2026-12-26".into(),
                    hours: vec![],
                },
                DateHours {
                    date: "2026-12-27".into(),
                    hours: vec![span("10:00", "12:00")],
                },
            ],
            closed: Default::default(),
            closed_prompt: None,
        }
    }

    /// 2026-11-30 is a Monday; 2026-12-26 a Saturday, 2026-12-27 a Sunday.
    #[test]
    fn business_hours() {
        let s = office();
        let rows = [
            (tokyo(2026, 11, 30, 8, 59), false, "before opening"),
            (tokyo(2026, 11, 30, 9, 0), true, "opening minute"),
            (tokyo(2026, 11, 30, 12, 30), false, "lunch"),
            (tokyo(2026, 11, 30, 17, 59), true, "last minute"),
            (tokyo(2026, 11, 30, 18, 0), false, "closing minute"),
            (tokyo(2026, 11, 28, 14, 0), true, "saturday hours"),
            (tokyo(2026, 11, 29, 11, 0), false, "sunday: no hours"),
            (tokyo(2026, 12, 31, 10, 0), false, "holiday (a thursday)"),
            (
                tokyo(2026, 12, 26, 11, 0),
                false,
                "exception: closed saturday",
            ),
            (tokyo(2026, 12, 27, 11, 0), true, "exception: open sunday"),
            (tokyo(2026, 12, 27, 13, 0), false, "exception's hours only"),
        ];
        for (at, want, why) in rows {
            assert_eq!(open_at(&s, at), want, "{why}");
        }
    }

    #[test]
    fn time_zones_shift_the_day() {
        // Monday 09:30 in Tokyo is Monday 08:30 in Shanghai: closed there.
        let mut s = office();
        let at = tokyo(2026, 11, 30, 9, 30);
        assert!(open_at(&s, at));
        s.time_zone = "Asia/Shanghai".into();
        assert!(!open_at(&s, at));
        s.time_zone = "+09:00".into();
        assert!(open_at(&s, at));
    }

    #[test]
    fn gates() {
        let s = office();
        let open = tokyo(2026, 11, 30, 10, 0);
        let closed = tokyo(2026, 11, 30, 20, 0);
        assert_eq!(gate(Some(&s), false, open), Gate::Open);
        assert_eq!(gate(Some(&s), false, closed), Gate::OutOfHours);
        assert_eq!(gate(Some(&s), true, open), Gate::Absent);
        assert_eq!(gate(None, false, closed), Gate::Open);
        assert_eq!(gate(None, true, closed), Gate::Absent);
    }
}
