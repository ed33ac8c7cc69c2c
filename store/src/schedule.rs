//! Reading a [`Schedule`]'s values: time zones, `HH:MM` times, dates; and checking a
//! whole schedule (the API refuses one that fails, naming the field).

use crate::model::{ClosedAction, Schedule, TimeSpan};

/// Time zones accepted by name (no daylight saving time, so a fixed offset is exact);
/// others are given as `+HH:MM` / `-HH:MM`.
const ZONES: [(&str, i32); 8] = [
    ("Asia/Tokyo", 540),
    ("Asia/Seoul", 540),
    ("Asia/Shanghai", 480),
    ("Asia/Taipei", 480),
    ("Asia/Hong_Kong", 480),
    ("Asia/Singapore", 480),
    ("Asia/Bangkok", 420),
    ("UTC", 0),
];

/// The UTC offset of a time zone name or `±HH:MM`, in minutes.
pub fn zone_offset(zone: &str) -> Option<i32> {
    if let Some((_, m)) = ZONES.iter().find(|(z, _)| *z == zone) {
        return Some(*m);
    }
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = zone[1..].split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    ((0..=14).contains(&h) && (0..60).contains(&m)).then_some(sign * (h * 60 + m))
}

/// Minutes since midnight of `HH:MM` (`24:00` allowed, as an end).
pub fn minutes(hhmm: &str) -> Option<u32> {
    let (h, m) = hhmm.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
}

/// Whether `date` is a calendar date `YYYY-MM-DD`.
pub fn valid_date(date: &str) -> bool {
    let parts: Vec<&str> = date.split('-').collect();
    let [y, m, d] = parts[..] else { return false };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return false;
    }
    let (Ok(y), Ok(m), Ok(d)) = (y.parse::<u32>(), m.parse::<u32>(), d.parse::<u32>()) else {
        return false;
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&d)
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn check_spans(field: &str, spans: &[TimeSpan]) -> Result<(), (String, String)> {
    if spans.len() > 10 {
        return Err((field.into(), "at most 10 spans".into()));
    }
    for (i, s) in spans.iter().enumerate() {
        match (minutes(&s.start), minutes(&s.end)) {
            (Some(a), Some(b)) if a < b => {}
            _ => {
                return Err((
                    format!("{field}[{i}]"),
                    "start and end are HH:MM (00:00 to 24:00) with start before end".into(),
                ))
            }
        }
    }
    Ok(())
}

/// The first problem of a schedule, as (field path under `schedule`, message).
pub fn check_schedule(s: &Schedule) -> Result<(), (String, String)> {
    if zone_offset(&s.time_zone).is_none() {
        return Err((
            "schedule.time_zone".into(),
            format!(
                "`{}` is not one of {} nor +HH:MM/-HH:MM (zones with summer time are not accepted)",
                s.time_zone,
                ZONES.map(|z| z.0).join(", ")
            ),
        ));
    }
    for (day, spans) in &s.weekly {
        if !DAYS.contains(&day.as_str()) {
            return Err((
                format!("schedule.weekly.{day}"),
                "days are mon, tue, wed, thu, fri, sat, sun".into(),
            ));
        }
        check_spans(&format!("schedule.weekly.{day}"), spans)?;
    }
    if s.holidays.len() > 400 || s.exceptions.len() > 400 {
        return Err((
            "schedule".into(),
            "at most 400 holidays and 400 exceptions".into(),
        ));
    }
    for (i, h) in s.holidays.iter().enumerate() {
        if !valid_date(h) {
            return Err((
                format!("schedule.holidays[{i}]"),
                "must be a date YYYY-MM-DD".into(),
            ));
        }
    }
    for (i, e) in s.exceptions.iter().enumerate() {
        if !valid_date(&e.date) {
            return Err((
                format!("schedule.exceptions[{i}].date"),
                "must be a date YYYY-MM-DD".into(),
            ));
        }
        check_spans(&format!("schedule.exceptions[{i}].hours"), &e.hours)?;
    }
    if let ClosedAction::Forward { destination } = &s.closed {
        let ok = (4..=15).contains(&destination.len())
            && destination.chars().all(|c| c.is_ascii_digit());
        if !ok {
            return Err((
                "schedule.closed.destination".into(),
                "must be 4 to 15 digits".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        for (z, want) in [
            ("Asia/Tokyo", Some(540)),
            ("UTC", Some(0)),
            ("+05:30", Some(330)),
            ("-03:00", Some(-180)),
            ("Europe/Paris", None),
            ("+15:00", None),
            ("+9:00", None),
            ("9", None),
        ] {
            assert_eq!(zone_offset(z), want, "{z}");
        }
        for (t, want) in [
            ("00:00", Some(0)),
            ("09:30", Some(570)),
            ("24:00", Some(1440)),
            ("24:01", None),
            ("9:30", None),
            ("12:60", None),
        ] {
            assert_eq!(minutes(t), want, "{t}");
        }
        for (d, want) in [
            ("2026-02-28", true),
            ("2028-02-29", true),
            ("2026-02-29", false),
            ("2026-02-30", false),
            ("2026-2-3", false),
            ("2026-13-01", false),
        ] {
            assert_eq!(valid_date(d), want, "{d}");
        }
    }
}
