//! Call queuing in the call actor: before a call is forwarded it takes a line of its
//! number (numbers with `queue`) and then one of its advertiser (advertisers with
//! `lines`). Always in that order, so two calls never each hold the line the other
//! waits for. While it waits the caller hears the queue prompt, looped (ringback if
//! the node has none); after the longest wait it hears the final prompt and is
//! released with `queue_timeout`. The counting is [`crate::lines`]: cluster-wide, the
//! owner of a key may be another node, whose answer arrives as a message.

use super::flow::After;
use super::{Call, CallMsg, CallRef, Phase};
use crate::lines::{Ask, LineRequest, Waiter};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tsunagu_cluster::lines::Answer;
use tsunagu_store::CallResult;

/// Tells a call the owner's answer for one of its lines.
struct QueueWaiter(CallRef);

impl Waiter for QueueWaiter {
    fn answer(&self, key: &str, answer: Answer) -> bool {
        self.0
            .send_message(CallMsg::Line(key.to_string(), answer))
            .is_ok()
    }
}

/// The line a call asked for and does not hold yet.
pub(super) struct Queued {
    request: LineRequest,
    /// The owner said the call waits in its queue (the caller hears the queue prompt);
    /// until then the owner's answer is on its way.
    waiting: bool,
}

impl Queued {
    /// Whether the call waits in the queue (rather than for the owner's answer).
    pub(super) fn waiting(&self) -> bool {
        self.waiting
    }
}

/// How long a caller waits for lines when neither the number nor the advertiser says.
const DEFAULT_WAIT_SECONDS: u32 = 60;

impl Call {
    /// The lines the call needs, in the order it takes them: (key, limit).
    fn needed_lines(&self) -> Vec<(String, u32)> {
        let mut needed = Vec::new();
        if let Some(q) = &self.number.queue {
            needed.push((format!("number:{}", self.number.number), q.max_lines));
        }
        if let Some(l) = &self.advertiser_lines {
            needed.push((
                format!("advertiser:{}", self.number.advertiser_id),
                l.max_lines,
            ));
        }
        needed
    }

    /// The longest a caller waits: the number's setting, else the advertiser's.
    pub(super) fn max_wait(&self) -> u32 {
        self.number
            .queue
            .as_ref()
            .map(|q| q.max_wait_seconds)
            .or(self.advertiser_lines.map(|l| l.max_wait_seconds))
            .unwrap_or(DEFAULT_WAIT_SECONDS)
    }

    /// Takes the lines the call still needs and forwards it, or waits for the first
    /// line it does not get at once.
    pub(super) fn take_line(&mut self) {
        let needed = self.needed_lines();
        while let Some((key, max)) = needed.get(self.held_lines.len()) {
            let waiter = Arc::new(QueueWaiter(self.me.clone()));
            let (request, ask) = self.ctx.lines.ask(key, &self.id, *max, waiter);
            match ask {
                Ask::Granted => self.held_lines.push(request),
                Ask::Queued(position) => return self.wait_for_line(request, position),
                Ask::Pending => {
                    // The owner is another node: its answer comes as a message. The
                    // caller waits for it no longer than for a line in the queue: an
                    // owner this node cannot reach (a link cut between the two while
                    // others still hear it) may not answer until the link heals.
                    self.queued = Some(Queued {
                        request,
                        waiting: false,
                    });
                    self.line_wait.get_or_insert((Instant::now(), None));
                    if self.queue_since.is_none() {
                        let wait = Duration::from_secs(u64::from(self.max_wait()));
                        self.after(wait, CallMsg::QueueTimeout);
                    }
                    return;
                }
            }
        }
        if let Some((_, left)) = self.line_wait.as_mut() {
            left.get_or_insert_with(Instant::now);
        }
        if let Some(since) = self.queue_since {
            self.ctx
                .metrics
                .calls
                .queue_wait_seconds
                .observe(since.elapsed().as_secs_f64());
            tracing::info!(
                waited_ms = since.elapsed().as_millis() as u64,
                "lines free; forwarding"
            );
        }
        self.forward();
    }

    fn wait_for_line(&mut self, request: LineRequest, position: u32) {
        tracing::info!(key = %request.key, position, "queued");
        self.queued = Some(Queued {
            request,
            waiting: true,
        });
        if self.queue_since.is_some() {
            return; // still waiting (now for the next line): the prompt goes on
        }
        self.queue_since = Some(Instant::now());
        self.line_wait.get_or_insert((Instant::now(), None));
        self.ctx.metrics.calls.queued.inc();
        self.note_progress(); // the live call stream tells it queued
        let name = self
            .number
            .queue
            .as_ref()
            .and_then(|q| q.prompt.clone())
            .unwrap_or_else(|| "queue".into());
        if !self.loop_to_caller(&name, "queue") {
            if self.phase != Phase::Trying {
                return; // no RTP port: refused
            }
            let ep = self.ctx.endpoint.clone();
            self.a.respond(&ep, 180, None);
        }
        let wait = Duration::from_secs(u64::from(self.max_wait()));
        self.after(wait, CallMsg::QueueTimeout);
    }

    /// The owner answered the request for a line of `key`.
    pub(super) fn line_answer(&mut self, key: String, answer: Answer) {
        let asked = self.queued.as_ref().is_some_and(|q| q.request.key == key);
        if !asked || self.phase != Phase::Trying {
            return; // not asking (any more): the request was dropped, the line passed on
        }
        match answer {
            Answer::Granted { .. } => {
                if let Some(q) = self.queued.take() {
                    self.held_lines.push(q.request);
                }
                self.take_line();
            }
            Answer::Queued { position } => {
                if let Some(q) = self.queued.take() {
                    if q.waiting {
                        self.queued = Some(q); // already waiting: nothing new
                    } else {
                        self.wait_for_line(q.request, position);
                    }
                }
            }
        }
    }

    pub(super) fn queue_timeout(&mut self) {
        let Some(queued) = self.queued.take() else {
            return; // not waiting any more
        };
        self.held_lines.clear(); // lines held while waiting for the next go to others
        if queued.waiting {
            tracing::info!("queue wait ran out");
        } else {
            tracing::warn!(key = %queued.request.key, "the owner of the line never answered within the queue's wait: giving up as a queue timeout");
        }
        let name = self
            .number
            .queue
            .as_ref()
            .and_then(|q| q.timeout_prompt.clone())
            .unwrap_or_else(|| "queue_timeout".into());
        let release = After::GiveUp(CallResult::QueueTimeout, 480);
        if !self.play_to_caller(&name, "queue_timeout", release) && self.phase == Phase::Trying {
            self.give_up(CallResult::QueueTimeout, 480);
        }
    }

    /// Leaves the queue if waiting (the caller hung up): the request is dropped, and
    /// a line granted meanwhile goes straight back.
    pub(super) fn leave_queue(&mut self) {
        self.queued = None;
    }
}
