//! Settings of the node's process made once at start, before any call: each removes a
//! stall that a fresh node otherwise hit while its first calls came in (found on the
//! wire, `loadtest/wire_tail.py`; README "A fresh node's stalls").
//!
//! - **The descriptor table is sized for the load at start.** Each call's RTP ports
//!   hold bound sockets, and a freed port is reused last, so a fresh node opens new
//!   descriptors with every call until its RTP range has been cycled through. The
//!   kernel's table of descriptors doubles as it fills (at 256, 512, 1,024...), and a
//!   multi-threaded process's doubling waits for an RCU grace period
//!   (`expand_fdtable` → `synchronize_rcu`): the runtime thread opening the socket
//!   sat 6–15 ms in `socket(2)` at each doubling, with the SIP core's next task queued
//!   behind it, so every call arriving then was late together (at call 117, 245, 502,
//!   1,013, 2,037, 4,085 of a 1,000 cps run). The kernel never shrinks the table, so
//!   one descriptor placed at the top of what the node can use, before the runtime's
//!   threads exist, sizes it once, without the wait.
//! - **No transparent huge pages** (`node.transparent_huge_pages`, default off): the
//!   allocator asks for them (`MADV_HUGEPAGE`), and the first touch of each 2 MiB page
//!   zeroes all of it in the faulting thread: 6 ms a page on the 2-core VM measured,
//!   a few times a second while the node's memory grows. Off, the same memory is
//!   faulted 4 KiB at a time, spread over the calls that touch it.
//! - **One runtime thread fewer than CPUs** (`node.worker_threads = 0`, at least one).
//!   Tokio hands a task woken by another task to an idle worker whenever the waking
//!   worker has more than one task ready, so below capacity the workers mostly wake
//!   each other (1.3 cross-thread wake-ups per call at 1,000 cps on two CPUs, each a
//!   futex write, a cross-CPU interrupt and a scheduler pass on both threads), while
//!   the node's other threads (the call-log writer, the UDP standby) and the kernel's
//!   packet work need a CPU of their own anyway. On the 2-core host measured, one
//!   worker instead of two cost 14–17 % less CPU per call from 1,000 to 6,000 cps,
//!   for about 10 % less ceiling (README "Runtime threads").

use std::io;
use tsunagu_config::Config;

/// Descriptors besides the RTP sockets, SIP connections and API connections: the
/// store's files, listeners, the cluster's links, recordings being written.
const OTHER_DESCRIPTORS: usize = 1024;

/// Slots of the descriptor table every process starts with (one word of bits).
const INITIAL_SLOTS: usize = 64;

/// The descriptors the node may hold at once under full load: one socket per RTP
/// port pair (a lease binds the even port), the SIP connection limits (inbound, and
/// as many outbound: a budget of their own), the API's, and [`OTHER_DESCRIPTORS`].
pub fn descriptors_needed(config: &Config) -> usize {
    config
        .media
        .ports
        .pairs()
        .saturating_add(config.sip.tcp_max_connections.saturating_mul(2))
        .saturating_add(usize::try_from(config.api.max_connections).unwrap_or(usize::MAX))
        .saturating_add(OTHER_DESCRIPTORS)
}

/// The descriptor number to place so that the table holds `needed` descriptors:
/// within the soft limit (a higher one cannot be opened), `None` when the table need
/// not grow past the slots every process starts with.
pub fn presize_target(needed: usize, soft_limit: u64) -> Option<usize> {
    let soft = usize::try_from(soft_limit).unwrap_or(usize::MAX);
    let top = needed.min(soft).checked_sub(1)?;
    (top >= INITIAL_SLOTS).then_some(top)
}

/// The limit on open descriptors before and after raising the soft limit to the hard
/// one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorLimit {
    pub was: u64,
    pub now: u64,
}

/// Raises the soft limit on open descriptors to the hard one: a call holds two RTP
/// sockets, so a node started from a shell's 1,024 would refuse calls long before its
/// RTP range is used (the systemd unit sets `LimitNOFILE` itself). If it cannot be
/// raised, `now` is the limit as it was.
pub fn raise_descriptor_limit() -> io::Result<DescriptorLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct given, which
    // outlives both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        let was = limit.rlim_cur;
        if was < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                limit.rlim_cur = was;
            }
        }
        Ok(DescriptorLimit {
            was,
            now: limit.rlim_cur,
        })
    }
}

/// Grows the process's descriptor table to hold `needed` descriptors (within
/// `soft_limit`) by duplicating one descriptor to the top number and closing it again.
/// Returns the number placed, or `None` if nothing needed doing. Call it before the
/// runtime starts its threads: a single-threaded process grows its table without
/// waiting for RCU.
pub fn presize_descriptor_table(needed: usize, soft_limit: u64) -> io::Result<Option<usize>> {
    let Some(top) = presize_target(needed, soft_limit) else {
        return Ok(None);
    };
    let top = libc::c_int::try_from(top).unwrap_or(libc::c_int::MAX);
    let null = std::fs::File::open("/dev/null")?;
    use std::os::fd::AsRawFd;
    // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we own into the lowest free
    // number at or above `top`; the duplicate is closed at once and touches no memory
    // of ours.
    let placed = unsafe { libc::fcntl(null.as_raw_fd(), libc::F_DUPFD_CLOEXEC, top) };
    if placed < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `placed` was just returned by fcntl and nothing else holds it.
    unsafe { libc::close(placed) };
    Ok(usize::try_from(placed).ok())
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`, kept by
/// what it executes): memory is then faulted in 4 KiB pages whatever the allocator
/// advises.
pub fn disable_transparent_huge_pages() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_THP_DISABLE only sets a flag of this process's memory
    // map; it reads no memory of ours. The arguments are passed as the unsigned longs
    // the kernel reads (a variadic call would leave an int's upper half undefined).
    if unsafe {
        libc::prctl(
            libc::PR_SET_THP_DISABLE,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The runtime's worker threads: `configured` when set, otherwise one fewer than the
/// `cpus` the node may run on, at least one (see the module's notes). `None` leaves the
/// choice to Tokio's `TOKIO_WORKER_THREADS` override when that is set and nothing is
/// configured (measurements compare thread counts with it).
pub fn runtime_workers(configured: usize, cpus: usize, env_override: bool) -> Option<usize> {
    match (configured, env_override) {
        (0, true) => None,
        (0, false) => Some(cpus.saturating_sub(1).max(1)),
        (n, _) => Some(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_keeps_a_cpu_for_the_rest_unless_told() {
        // (configured, cpus, TOKIO_WORKER_THREADS set) -> workers
        let rows = [
            ((0, 1, false), Some(1)),
            ((0, 2, false), Some(1)),
            ((0, 4, false), Some(3)),
            ((0, 16, false), Some(15)),
            ((0, 0, false), Some(1)),
            ((0, 2, true), None),
            ((3, 2, false), Some(3)),
            ((3, 2, true), Some(3)),
        ];
        for ((configured, cpus, env), want) in rows {
            assert_eq!(
                runtime_workers(configured, cpus, env),
                want,
                "{configured} {cpus} {env}"
            );
        }
    }

    #[test]
    fn the_table_is_sized_for_the_load_within_the_limit() {
        // (needed, soft limit) -> descriptor number placed
        let rows = [
            ((22_501 + 4_096 + 1_024 + 1_024, 65_536), Some(28_644)),
            ((28_645, 20_000), Some(19_999)),
            ((28_645, 1_024), Some(1_023)),
            ((40, 65_536), None), // the table every process starts with holds it
            ((10, 0), None),
            ((usize::MAX, u64::MAX), Some(usize::MAX - 1)),
        ];
        for ((needed, soft), want) in rows {
            assert_eq!(presize_target(needed, soft), want, "{needed} {soft}");
        }
        let mut config = Config::embedded_default().expect("defaults");
        config.media.ports = "20000-65000".parse().unwrap();
        config.sip.tcp_max_connections = 4_096;
        config.api.max_connections = 1_024;
        assert_eq!(descriptors_needed(&config), 22_500 + 2 * 4_096 + 2_048);
        config.sip.tcp_max_connections = usize::MAX;
        assert_eq!(descriptors_needed(&config), usize::MAX);
    }
}
