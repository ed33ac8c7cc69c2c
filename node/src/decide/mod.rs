//! Pure decision logic of a call: who is calling, where the leg goes, what a failure
//! means, whether the call counts. No I/O and no clock reads: table-driven tests.

pub mod caller;
pub mod glare;
pub mod ivr;
pub mod outcome;
pub mod rate;
pub mod redirect;
pub mod routing;
pub mod schedule;
pub mod session_timer;
pub mod validity;
