//! Rate limits of number issuance by web pages: token buckets per client address and
//! per pool, in a table whose size is bounded whatever the number of addresses.
//!
//! Pure state with the time as an argument (`now_ms`); [`IssueLimiter`] wraps the two
//! tables in mutexes (held for a hash lookup, never across an await).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;

/// A rate: `per_minute` tokens a minute into a bucket of `burst`; 0 per minute = no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

impl Rate {
    fn is_off(self) -> bool {
        self.per_minute == 0
    }
}

/// One token bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

impl Bucket {
    fn full(rate: Rate, now_ms: i64) -> Bucket {
        Bucket {
            tokens: f64::from(rate.burst),
            at_ms: now_ms,
        }
    }

    /// The tokens at `now_ms` (a clock that went back refills nothing).
    fn level(&self, rate: Rate, now_ms: i64) -> f64 {
        let elapsed = now_ms.saturating_sub(self.at_ms).max(0) as f64;
        let refill = elapsed * f64::from(rate.per_minute) / 60_000.0;
        (self.tokens + refill).min(f64::from(rate.burst))
    }

    /// Puts back a token taken for what turned out to cost nothing (never above the
    /// burst).
    fn give_back(&mut self, rate: Rate, now_ms: i64) {
        self.tokens = (self.level(rate, now_ms) + 1.0).min(f64::from(rate.burst));
        self.at_ms = now_ms;
    }

    /// Takes one token, or says in how many whole seconds one will be there.
    fn take(&mut self, rate: Rate, now_ms: i64) -> Result<(), u64> {
        let level = self.level(rate, now_ms);
        // Refills count from now on, also after the clock went back: kept at the
        // later time, a bucket refilled nothing until the clock caught up again (an
        // hour's step back was an hour of 429 for a busy pool: a review).
        self.at_ms = now_ms;
        if level >= 1.0 {
            self.tokens = level - 1.0;
            return Ok(());
        }
        self.tokens = level;
        // Whole milliseconds first (float noise must not add a second), then seconds up.
        let missing_ms = ((1.0 - level) * 60_000.0 / f64::from(rate.per_minute)).round() as u64;
        Err(missing_ms.div_ceil(1000).max(1))
    }
}

/// Buckets by key, at most `capacity` of them. A full bucket is the same as no bucket,
/// so a sweep (at most once a second, when the table is full) forgets those; if the
/// table is still full, keys not in it share one overflow bucket: an attacker with
/// many addresses gains one address's allowance, and memory stays bounded.
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    rate: Rate,
    capacity: usize,
    buckets: HashMap<K, Bucket>,
    overflow: Bucket,
    last_sweep_ms: i64,
}

impl<K: Hash + Eq> KeyedBuckets<K> {
    pub fn new(rate: Rate, capacity: usize, now_ms: i64) -> Self {
        KeyedBuckets {
            rate,
            capacity: capacity.max(1),
            buckets: HashMap::new(),
            overflow: Bucket::full(rate, now_ms),
            last_sweep_ms: i64::MIN,
        }
    }

    /// Takes a token of `key`'s bucket; `Err(seconds)` to wait when it is empty. The key
    /// is copied only when it gets a bucket of its own.
    pub fn take<Q>(&mut self, key: &Q, now_ms: i64) -> Result<(), u64>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let rate = self.rate;
        if rate.is_off() {
            return Ok(());
        }
        if let Some(b) = self.buckets.get_mut(key) {
            return b.take(rate, now_ms);
        }
        if self.buckets.len() >= self.capacity {
            self.sweep(now_ms);
        }
        if self.buckets.len() >= self.capacity {
            return self.overflow.take(rate, now_ms);
        }
        let mut b = Bucket::full(rate, now_ms);
        let taken = b.take(rate, now_ms);
        self.buckets.insert(key.to_owned(), b);
        taken
    }

    /// Gives back a token of `key`'s bucket. A key without a bucket of its own (swept
    /// as full, or in the overflow bucket) gets nothing back: a full bucket needs none,
    /// and the shared one is not given tokens by whoever shares it.
    pub fn give_back<Q>(&mut self, key: &Q, now_ms: i64)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let rate = self.rate;
        if let Some(b) = self.buckets.get_mut(key) {
            b.give_back(rate, now_ms);
        }
    }

    fn sweep(&mut self, now_ms: i64) {
        // Once a second; at once after the clock went back (else not until it caught up).
        if (0..1000).contains(&now_ms.saturating_sub(self.last_sweep_ms)) {
            return;
        }
        self.last_sweep_ms = now_ms;
        let (rate, burst) = (self.rate, f64::from(self.rate.burst));
        self.buckets.retain(|_, b| b.level(rate, now_ms) < burst);
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// The key an address is limited by: IPv4 addresses (IPv4-mapped too) one by one,
/// IPv6 by /64 (one subscriber usually holds a whole /64).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Which limit refused an issue request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Address,
    Pool,
    Session,
    /// The client address holds as many live leases of the pool as it may.
    AddressLeases,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Address => "address",
            Limit::Pool => "pool",
            Limit::Session => "session",
            Limit::AddressLeases => "address_leases",
        }
    }
}

/// The issue limits of a node: one bucket per client address, one per pool, and one
/// per client address for CORS preflights (of the same rate: a browser sends one
/// before its first issue, and sharing the issue bucket halved what visitors behind
/// one address got).
#[derive(Debug)]
pub struct IssueLimiter {
    addresses: Mutex<KeyedBuckets<IpAddr>>,
    preflights: Mutex<KeyedBuckets<IpAddr>>,
    pools: Mutex<KeyedBuckets<String>>,
    pub max_leases_per_session: u32,
    pub max_leases_per_address: u32,
}

impl IssueLimiter {
    pub fn new(c: &tsunagu_config::IssueLimitsConfig, now_ms: i64) -> IssueLimiter {
        let capacity = c.tracked_addresses as usize;
        let per_address = Rate {
            per_minute: c.per_address_per_minute,
            burst: c.per_address_burst,
        };
        IssueLimiter {
            addresses: Mutex::new(KeyedBuckets::new(per_address, capacity, now_ms)),
            preflights: Mutex::new(KeyedBuckets::new(per_address, capacity, now_ms)),
            pools: Mutex::new(KeyedBuckets::new(
                Rate {
                    per_minute: c.per_pool_per_minute,
                    burst: c.per_pool_burst,
                },
                capacity,
                now_ms,
            )),
            max_leases_per_session: c.max_leases_per_session,
            max_leases_per_address: c.max_leases_per_address,
        }
    }

    pub fn take_address(&self, ip: IpAddr, now_ms: i64) -> Result<(), u64> {
        let mut t = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        t.take(&address_key(ip), now_ms)
    }

    pub fn take_preflight(&self, ip: IpAddr, now_ms: i64) -> Result<(), u64> {
        let mut t = self.preflights.lock().unwrap_or_else(|p| p.into_inner());
        t.take(&address_key(ip), now_ms)
    }

    pub fn take_pool(&self, pool_id: &str, now_ms: i64) -> Result<(), u64> {
        let mut t = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        t.take(pool_id, now_ms)
    }

    /// Gives back the pool's token of a request that took no new number: a session's
    /// lease extended (the page tag's heartbeat) or a request a lease cap refused. The
    /// pool's bucket bounds how fast its numbers are taken; spent on those, some
    /// twenty addresses (or a big page's heartbeats) kept every visitor from a number
    /// (a review).
    pub fn give_back_pool(&self, pool_id: &str, now_ms: i64) {
        let mut t = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        t.give_back(pool_id, now_ms);
    }

    /// Addresses with a bucket now (for the gauge).
    pub fn tracked_addresses(&self) -> usize {
        self.addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Rate = Rate {
        per_minute: 60,
        burst: 3,
    };

    /// A clock stepped back an hour: the bucket refills from the new time on, instead
    /// of waiting an hour for the clock to catch up.
    #[test]
    fn a_clock_stepped_back_does_not_freeze_a_bucket() {
        let mut b = Bucket::full(R, 10_000_000);
        for _ in 0..3 {
            assert_eq!(b.take(R, 10_000_000), Ok(()));
        }
        assert!(b.take(R, 10_000_000).is_err());
        let back = 10_000_000 - 3_600_000;
        assert!(b.take(R, back).is_err(), "a step back refills nothing");
        assert_eq!(b.take(R, back + 1_000), Ok(()), "a second later: one token");
    }

    /// A table at its capacity after the clock went back an hour: its full buckets
    /// are swept at once (sweeps are once a second by the clock, which would otherwise
    /// wait an hour), so a new key gets a bucket of its own, not the shared overflow.
    #[test]
    fn full_buckets_are_swept_at_once_after_the_clock_went_back() {
        let t0 = 10_000_000;
        let mut t = KeyedBuckets::new(R, 1, t0);
        assert_eq!(t.take("a", t0), Ok(()));
        // A sweep at t0 + 5 s (a refilled, swept; b takes its place), then b's
        // token given back: b is full.
        assert_eq!(t.take("b", t0 + 5_000), Ok(()));
        assert!(t.buckets.contains_key("b") && !t.buckets.contains_key("a"));
        t.give_back("b", t0 + 5_000);
        let back = t0 - 3_600_000;
        assert_eq!(t.take("c", back), Ok(()));
        assert!(
            t.buckets.contains_key("c") && !t.buckets.contains_key("b"),
            "{:?}",
            t.buckets.keys().collect::<Vec<_>>()
        );
    }

    /// (time, expected) for successive takes from one bucket of 60/min, burst 3.
    #[test]
    fn bucket_refills_at_its_rate() {
        let steps: &[(i64, Result<(), u64>)] = &[
            (0, Ok(())),
            (0, Ok(())),
            (0, Ok(())),
            (0, Err(1)),
            (500, Err(1)),
            (1000, Ok(())),
            (1000, Err(1)),
            (4000, Ok(())),
            (4000, Ok(())),
            (4000, Ok(())),
            (4000, Err(1)),
            (100_000, Ok(())),
            // A clock that steps back refills nothing and takes nothing extra.
            (50_000, Ok(())),
            (50_000, Ok(())),
            (50_000, Err(1)),
        ];
        let mut b = Bucket::full(R, 0);
        for (i, (t, want)) in steps.iter().enumerate() {
            assert_eq!(b.take(R, *t), *want, "step {i} at {t}");
        }
        let slow = Rate {
            per_minute: 2,
            burst: 1,
        };
        let mut b = Bucket::full(slow, 0);
        assert_eq!(b.take(slow, 0), Ok(()));
        assert_eq!(b.take(slow, 0), Err(30), "Retry-After: a token every 30 s");
        assert_eq!(b.take(slow, 20_000), Err(10));
    }

    /// (take or give back, key, expected take) at one instant: a token given back is
    /// there for the next take, never above the burst; a key without a bucket of its
    /// own gets nothing.
    #[test]
    fn tokens_given_back_are_taken_again_up_to_the_burst() {
        let mut t = KeyedBuckets::new(R, 10, 0);
        let rows: &[(bool, &str, Result<(), u64>)] = &[
            (true, "p", Ok(())),
            (true, "p", Ok(())),
            (true, "p", Ok(())),
            (true, "p", Err(1)),
            (false, "p", Ok(())),
            (true, "p", Ok(())),
            (true, "p", Err(1)),
            (false, "p", Ok(())),
            (false, "p", Ok(())),
            (false, "p", Ok(())),
            (false, "p", Ok(())),
            (true, "p", Ok(())),
            (true, "p", Ok(())),
            (true, "p", Ok(())),
            (true, "p", Err(1)),
            (false, "never-taken", Ok(())),
        ];
        for (i, (take, key, want)) in rows.iter().enumerate() {
            if *take {
                assert_eq!(t.take(*key, 0), *want, "row {i}");
            } else {
                t.give_back(*key, 0);
            }
        }
        assert_eq!(t.len(), 1, "giving back creates no bucket");
    }

    #[test]
    fn keys_have_their_own_buckets_and_off_is_off() {
        let mut t = KeyedBuckets::new(R, 10, 0);
        for _ in 0..3 {
            assert!(t.take(&"a", 0).is_ok());
        }
        assert!(t.take(&"a", 0).is_err());
        assert!(t.take(&"b", 0).is_ok(), "another key is unaffected");
        let mut off = KeyedBuckets::new(
            Rate {
                per_minute: 0,
                burst: 0,
            },
            1,
            0,
        );
        for _ in 0..1000 {
            assert!(off.take(&"a", 0).is_ok());
        }
        assert_eq!(off.len(), 0);
    }

    /// A spray of addresses never grows the table past its capacity; while it is full
    /// the new ones share one bucket; idle (refilled) buckets are swept.
    #[test]
    fn the_table_is_bounded_under_a_spray() {
        let mut t = KeyedBuckets::new(R, 100, 0);
        let mut refused = 0;
        for k in 0..10_000u32 {
            if t.take(&k, 0).is_err() {
                refused += 1;
            }
        }
        assert_eq!(t.len(), 100);
        // 100 own buckets, then 3 tokens of the shared one.
        assert_eq!(refused, 10_000 - 100 - 3);
        // Later every bucket has refilled: a sweep makes room for new keys.
        assert!(t.take(&20_000, 10_000).is_ok());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn ipv6_is_limited_by_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
