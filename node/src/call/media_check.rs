//! The media timeout (`media.timeout_seconds`): an answered call from which neither
//! party sent RTP for that long, and that no party holds, is ended (`media_timeout`)
//! instead of holding its ports and its line for hours.

use super::*;

impl Call {
    /// Starts watching the answered call's media (`media.timeout_seconds`).
    pub(super) fn arm_media_check(&mut self) {
        if let (Some(every), Some(relay)) = (self.ctx.media_timeout, self.relay.as_ref()) {
            self.media_seen = relay.stats.received();
            self.after(every, CallMsg::MediaCheck);
        }
    }

    /// Ends an answered call from which neither party sent RTP since the last check
    /// (one `media.timeout_seconds` ago), unless a party holds it; else checks again.
    pub(super) fn media_check(&mut self) {
        let (Some(every), Some(relay)) = (self.ctx.media_timeout, self.relay.as_ref()) else {
            return;
        };
        if self.phase != Phase::Answered {
            return;
        }
        let received = relay.stats.received();
        let held = self.held.get().contains(&true);
        match media_verdict(self.media_seen, received, held) {
            Media::Alive => {
                if held {
                    // A hold is talk time: a call silent after it stops talking no
                    // earlier than this.
                    self.held_seen = Some(Instant::now());
                }
                self.media_seen = received;
                self.after(every, CallMsg::MediaCheck);
            }
            Media::Silent => {
                tracing::info!(
                    seconds = every.as_secs(),
                    "no RTP from either party: ending the call"
                );
                self.ctx.metrics.calls.media_timeouts.inc();
                // The talk ended with the last packet, not now: one to two timeouts of
                // dead air (two to four minutes by default) counted as talk time and
                // could make a call valid (a review).
                if let Some((answered, _)) = self.answered {
                    let last = relay.stats.last_received();
                    let taken_over = self.taken_over_at.is_some();
                    if let Some(end) = talk_ended_at(last, answered, self.held_seen, taken_over) {
                        let silent_for = Instant::now().saturating_duration_since(end);
                        self.talk_end = Some(end);
                        let ms = i64::try_from(silent_for.as_millis()).unwrap_or(i64::MAX);
                        self.ended_ms = Some(now_ms().saturating_sub(ms));
                    }
                }
                self.end_now("media_timeout");
            }
        }
    }
}

/// When a call ended for silence stopped talking: its last packet, never before its
/// answer nor before the last check that found it held (a hold is talk time); with
/// no packet, its answer. None (the end stays now) for a call taken over with no
/// packet at this node's relay: this node cannot say when it stopped.
fn talk_ended_at(
    last_packet: Option<Instant>,
    answered: Instant,
    held_seen: Option<Instant>,
    taken_over: bool,
) -> Option<Instant> {
    let last = match last_packet {
        Some(t) => t,
        None if taken_over => return None,
        None => answered,
    };
    Some(last.max(answered).max(held_seen.unwrap_or(answered)))
}

/// What a media check finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    Alive,
    Silent,
}

/// The media check's decision: packets received since the last check, or a party
/// holding the call, keep it.
fn media_verdict(seen_before: u64, received: u64, held: bool) -> Media {
    if received != seen_before || held {
        Media::Alive
    } else {
        Media::Silent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_call_stops_talking_at_its_last_packet_or_hold() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Each row: last packet, answered, last check held, taken over → talk end.
        let rows = [
            (Some(at(30)), at(10), None, false, Some(at(30))),
            (None, at(10), None, false, Some(at(10))),
            (None, at(10), None, true, None),
            (Some(at(30)), at(10), None, true, Some(at(30))),
            (Some(at(5)), at(10), None, false, Some(at(10))),
            (Some(at(30)), at(10), Some(at(90)), false, Some(at(90))),
            (None, at(10), Some(at(90)), false, Some(at(90))),
        ];
        for (last, answered, held, taken_over, want) in rows {
            assert_eq!(
                talk_ended_at(last, answered, held, taken_over),
                want,
                "{last:?} {held:?} {taken_over}"
            );
        }
    }

    #[test]
    fn a_call_is_silent_only_without_packets_and_without_hold() {
        let rows = [
            (10, 25, false, Media::Alive),
            (10, 10, false, Media::Silent),
            (10, 10, true, Media::Alive),
            (0, 0, false, Media::Silent),
        ];
        for (before, now, held, want) in rows {
            assert_eq!(
                media_verdict(before, now, held),
                want,
                "{before} {now} {held}"
            );
        }
    }
}
