//! Members' signs of life in the store, judged by their progress on this node's own
//! monotonic clock. Each node writes its sign of life (a store time in milliseconds,
//! by its own wall clock, and strictly increasing: one past the last when its clock
//! went back) every [`crate::driver::STORE_SIGN_EVERY`]. Comparing that time with this
//! node's wall clock tied liveness to the hosts' clocks agreeing: a member whose clock
//! ran 1.5 s behind looked dead, one ahead looked alive after it died, and a clock
//! stepped on the one host of the embedded store aged every sign at once. So a sign's
//! age is how long this node has read the same value: a value that moves is a member
//! that writes. The wall clocks are compared only when a member's incarnation is first
//! read (there is nothing else to go on), and then with [`FIRST_READ_SLACK`] of
//! disagreement allowed: a sign written less than that ago by the writer's clock is
//! taken as fresh and judged by its moves from then on (one that does not move is old
//! a window later), an older one is old at once. Taking a sign for fresh that is not
//! only delays a verdict (the majority rule counts such a member); taking a live
//! member's sign for old could have a node cut off from its peers declare it down.
//!
//! Pure: reads in, ages out, time as arguments.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How far the writers' wall clocks may be from this node's for a first read (NTP
/// keeps them within milliseconds; a host that lost sync by more reads its peers'
/// fresh signs as old at first).
pub const FIRST_READ_SLACK: Duration = Duration::from_secs(30);

/// What was last read of one member's sign of life.
#[derive(Debug, Clone, Copy)]
struct Seen {
    epoch: u64,
    sign: i64,
    /// When (by this node's clock) the sign was read moving, or first read.
    moved: Instant,
    /// Its age then: zero once read moving, the wall clocks' age on a first read.
    age_then: Duration,
}

impl Seen {
    fn age(&self, now: Instant) -> Duration {
        self.age_then
            .saturating_add(now.saturating_duration_since(self.moved))
    }
}

/// The members' signs of life as this node has read them.
#[derive(Debug, Default)]
pub struct SignWatch {
    seen: HashMap<String, Seen>,
}

impl SignWatch {
    /// The age of member `name`'s sign of life, read at `now` with the value `sign`
    /// for incarnation `epoch`. `wall_age` is the age by the wall clocks (this node's
    /// time less the sign), used only on a first read of an incarnation, less
    /// [`FIRST_READ_SLACK`].
    pub fn age(
        &mut self,
        name: &str,
        epoch: u64,
        sign: i64,
        wall_age: Duration,
        now: Instant,
    ) -> Duration {
        match self.seen.get_mut(name) {
            Some(s) if s.epoch == epoch => {
                if s.sign != sign {
                    *s = Seen {
                        epoch,
                        sign,
                        moved: now,
                        age_then: Duration::ZERO,
                    };
                }
                s.age(now)
            }
            _ => {
                let seen = Seen {
                    epoch,
                    sign,
                    moved: now,
                    age_then: wall_age.saturating_sub(FIRST_READ_SLACK),
                };
                self.seen.insert(name.to_string(), seen);
                seen.age_then
            }
        }
    }

    /// Forgets members the store no longer lists (bounded by the registry).
    pub fn keep_only<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        let listed: std::collections::HashSet<&str> = names.into_iter().collect();
        self.seen.retain(|name, _| listed.contains(name.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// Reads of one member in order: (seconds after the start, epoch, sign, wall-clock
    /// age) → the age judged.
    #[test]
    fn a_sign_ages_by_this_node_s_clock_once_first_read() {
        let cases: &[(&str, &[(u64, u64, i64, u64)], &[u64])] = &[
            (
                "a writer whose clock runs 5 s behind: fresh, as its writes say",
                &[(0, 1, 1_000, 5), (1, 1, 2_000, 6), (2, 1, 3_000, 6)],
                &[0, 0, 0],
            ),
            (
                "a writer 5 s behind that died: fresh at first, then aging from the first read",
                &[(0, 1, 1_000, 5), (1, 1, 1_000, 6), (3, 1, 1_000, 8)],
                &[0, 1, 3],
            ),
            (
                "a writer 5 s ahead that died: young by the wall clocks at first, then aging from the first read",
                &[(0, 1, 9_000, 0), (1, 1, 9_000, 0), (3, 1, 9_000, 0)],
                &[0, 1, 3],
            ),
            (
                "a clock stepped forward 10 s here: the writes still move",
                &[(0, 1, 1_000, 0), (1, 1, 2_000, 10), (2, 1, 3_000, 10)],
                &[0, 0, 0],
            ),
            (
                "a writer that stopped ages from the read that last saw its sign move",
                &[(0, 1, 1_000, 0), (1, 1, 2_000, 0), (2, 1, 2_000, 1), (4, 1, 2_000, 3)],
                &[0, 0, 1, 3],
            ),
            (
                "a new incarnation is read afresh (its wall-clock age)",
                &[(0, 1, 1_000, 0), (5, 1, 1_000, 5), (6, 2, 7_000, 0), (7, 3, 2_000, 40)],
                &[0, 5, 0, 10],
            ),
            (
                "a writer dead for days: old from the first read",
                &[(0, 1, 1_000, 200_030), (1, 1, 1_000, 200_031)],
                &[200_000, 200_001],
            ),
            (
                "a sign that moves back (a stepped writer clock) is still a move",
                &[(0, 1, 5_000, 0), (3, 1, 4_000, 4)],
                &[0, 0],
            ),
        ];
        for (what, reads, ages) in cases {
            let start = Instant::now();
            let mut watch = SignWatch::default();
            let got: Vec<u64> = reads
                .iter()
                .map(|&(at, epoch, sign, wall)| {
                    let now = start + S * at as u32;
                    watch.age("n2", epoch, sign, S * wall as u32, now).as_secs()
                })
                .collect();
            assert_eq!(&got, ages, "{what}");
        }
    }

    #[test]
    fn members_no_longer_listed_are_forgotten() {
        let now = Instant::now();
        let mut watch = SignWatch::default();
        watch.age("n2", 1, 1_000, Duration::ZERO, now);
        watch.age("n3", 1, 1_000, Duration::ZERO, now);
        watch.keep_only(["n3"]);
        assert_eq!(watch.seen.len(), 1);
        // n2 listed again: a first read, by the wall clocks.
        assert_eq!(watch.age("n2", 1, 1_000, 32 * S, now + 4 * S), 2 * S);
    }
}
