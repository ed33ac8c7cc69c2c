//! The per-node call supervisor: spawns call actors linked to itself, and cleans up
//! after one that panics or is stuck — the caller gets a 500 if still unanswered, the
//! call's routes and media are released (its state drops), and a `failed` log record
//! is written, so no call is ever lost from the logs. A sweep ends calls older than
//! `node.max_call_seconds`.

use crate::call::{failed_record, CallActor, CallArgs, CallSeed};
use crate::context::NodeContext;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub enum SupervisorMsg {
    Spawn(Box<CallArgs>),
    Sweep,
}

pub struct CallSupervisor {
    pub ctx: Arc<NodeContext>,
    pub max_call: Duration,
}

pub struct SupervisorState {
    calls: HashMap<ActorId, (CallSeed, ractor::ActorCell)>,
}

const SWEEP_EVERY: Duration = Duration::from_secs(30);

impl Actor for CallSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        _: (),
    ) -> Result<SupervisorState, ActorProcessingErr> {
        myself.send_interval(SWEEP_EVERY, || SupervisorMsg::Sweep);
        Ok(SupervisorState {
            calls: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Spawn(args) => {
                let seed = CallSeed {
                    id: args.id.clone(),
                    a_call_id: args.invite.info.call_id.clone(),
                    invite: args.invite.clone(),
                    number: args.number.clone(),
                    started_at_ms: crate::call::now_ms(),
                    started: Instant::now(),
                    logged: args.logged.clone(),
                };
                match Actor::spawn_linked(None, CallActor, *args, myself.get_cell()).await {
                    Ok((actor, _)) => {
                        state.calls.insert(actor.get_id(), (seed, actor.get_cell()));
                    }
                    Err(e) => {
                        tracing::error!(%e, call_id = %seed.id, "call actor failed to start");
                        self.clean_up(&seed);
                    }
                }
            }
            SupervisorMsg::Sweep => {
                for (seed, cell) in state.calls.values() {
                    if seed.started.elapsed() > self.max_call {
                        tracing::warn!(call_id = %seed.id, "call exceeded node.max_call_seconds; stopping its actor");
                        cell.kill();
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<SupervisorMsg>,
        evt: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some((seed, _)) = state.calls.remove(&cell.get_id()) {
                    tracing::error!(call_id = %seed.id, %err, "call actor failed");
                    self.clean_up(&seed);
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some((seed, _)) = state.calls.remove(&cell.get_id()) {
                    if !seed.logged.load(Ordering::Acquire) {
                        self.clean_up(&seed);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl CallSupervisor {
    fn clean_up(&self, seed: &CallSeed) {
        self.ctx.metrics.calls.actor_failures.inc();
        let inv = &seed.invite;
        // Only sent if the INVITE is still unanswered; the transaction layer drops it otherwise.
        self.ctx.endpoint.respond(
            &inv.request,
            &inv.info,
            &inv.key,
            500,
            Some(&tsunagu_sip::build::new_tag()),
            &[],
            None,
        );
        self.ctx.endpoint.unregister(&seed.a_call_id);
        self.ctx.log.write(failed_record(&self.ctx, seed));
        self.ctx
            .metrics
            .calls
            .ended
            .get_or_create(&crate::metrics::ResultLabel { result: "failed" })
            .inc();
    }
}
