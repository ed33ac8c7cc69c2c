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
                // A call taken over whose media never reached this node's relay keeps
                // its talk time to now (this node cannot say when it stopped).
                let last = relay.stats.last_received().or(match self.taken_over_at {
                    Some(_) => None,
                    None => self.answered.map(|(at, _)| at),
                });
                if let (Some((answered, _)), Some(last)) = (self.answered, last) {
                    let last = last.max(answered).max(self.held_seen.unwrap_or(answered));
                    let silent_for = Instant::now().saturating_duration_since(last);
                    self.talk_end = Some(last);
                    let ms = i64::try_from(silent_for.as_millis()).unwrap_or(i64::MAX);
                    self.ended_ms = Some(now_ms().saturating_sub(ms));
                }
                self.end_now("media_timeout");
            }
        }
    }
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
