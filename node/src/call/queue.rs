//! Call queuing in the call actor: before a call is forwarded it takes a line of its
//! number (numbers with `queue`) and then one of its advertiser (advertisers with
//! `lines`). Always in that order, so two calls never each hold the line the other
//! waits for. While it waits the caller hears the queue prompt, looped (ringback if
//! the node has none); after the longest wait it hears the final prompt and is
//! released with `queue_timeout`. The counting is [`crate::lines`].

use super::flow::After;
use super::{Call, CallMsg, CallRef, Phase};
use crate::lines::Waiter;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tsunagu_store::CallResult;

/// Wakes a queued call when a line of `key` is its own.
struct QueueWaiter {
    actor: CallRef,
    key: String,
}

impl Waiter for QueueWaiter {
    fn take_line(&self) -> bool {
        self.actor
            .send_message(CallMsg::LineFree(self.key.clone()))
            .is_ok()
    }
}

/// The queue a call waits in.
pub(super) struct Queued {
    key: String,
    ticket: u64,
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
    fn max_wait(&self) -> u32 {
        self.number
            .queue
            .as_ref()
            .map(|q| q.max_wait_seconds)
            .or(self.advertiser_lines.map(|l| l.max_wait_seconds))
            .unwrap_or(DEFAULT_WAIT_SECONDS)
    }

    /// Takes the lines the call still needs and forwards it, or queues it for the
    /// first line that is taken.
    pub(super) fn take_line(&mut self) {
        let needed = self.needed_lines();
        while let Some((key, max)) = needed.get(self.held_lines.len()) {
            let waiter = Arc::new(QueueWaiter {
                actor: self.me.clone(),
                key: key.clone(),
            });
            match self.ctx.lines.ask(key, *max, waiter) {
                Ok(line) => self.held_lines.push(line),
                Err((ticket, position)) => {
                    return self.wait_for_line(key.clone(), ticket, position);
                }
            }
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

    fn wait_for_line(&mut self, key: String, ticket: u64, position: usize) {
        tracing::info!(%key, position, "queued");
        self.queued = Some(Queued { key, ticket });
        if self.queue_since.is_some() {
            return; // still waiting (now for the next line): the prompt goes on
        }
        self.queue_since = Some(Instant::now());
        self.ctx.metrics.calls.queued.inc();
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
        self.me.send_after(wait, || CallMsg::QueueTimeout);
    }

    /// A line of `key` was passed to this call.
    pub(super) fn line_free(&mut self, key: String) {
        let line = self.ctx.lines.guard(&key);
        let waiting_here = self.queued.as_ref().is_some_and(|q| q.key == key);
        if !waiting_here || self.phase != Phase::Trying {
            return; // not waiting (any more): dropping the guard passes the line on
        }
        self.queued = None;
        self.held_lines.push(line);
        self.take_line();
    }

    pub(super) fn queue_timeout(&mut self) {
        let Some(q) = &self.queued else { return };
        if !self.ctx.lines.leave(&q.key, q.ticket) {
            return; // a line was passed to us just now: LineFree is on its way
        }
        self.queued = None;
        self.held_lines.clear(); // lines held while waiting for the next go to others
        tracing::info!("queue wait ran out");
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

    /// Leaves the queue if waiting (the caller hung up).
    pub(super) fn leave_queue(&mut self) {
        if let Some(q) = &self.queued {
            if self.ctx.lines.leave(&q.key, q.ticket) {
                self.queued = None;
            }
            // Otherwise LineFree is on its way; it finds the call over and passes the line on.
        }
    }
}
