//! Retiring a member for good (`tsunagu cluster forget`): whether an operator's request
//! may retire it, decided from the store's row of that node and this node's view. Pure:
//! the node reads the row and the view, asks [`decide`], and writes what it says.
//!
//! The store's row decides, not this node's view alone: a member that started after the
//! node died never listed it, and its view may hold an older incarnation than the
//! store. Only an incarnation declared down is retired — by the cluster (the row's
//! `down`, set by the survivor that finalised it) or by this node's own detector (the
//! row follows within moments) — never one merely unknown here.

use crate::membership::State;

/// The store's row of a node, as far as retiring it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub epoch: u64,
    /// That incarnation was declared down.
    pub down: bool,
    /// That incarnation was retired. Read as retired only together with `down`: a
    /// node restarted by a build that does not know the flag clears `down` alone.
    pub retired: bool,
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retirement {
    /// Retire incarnation `epoch` (compare-and-set on it in the store).
    Retire(u64),
    /// Retired already (a repeated request): nothing to write.
    Already(u64),
}

/// Why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RetireRefusal {
    #[error("no node of that name was ever registered")]
    Unknown,
    #[error("a node cannot retire itself")]
    Itself,
    #[error("the member is up: stop it first (a running node cannot be retired)")]
    Up,
    #[error("the member has not been declared down yet: stop it, wait until `tsunagu cluster status` shows it down, and ask again")]
    NotDown,
}

/// Whether `name` may be retired: `me` is this node's name, `row` the store's row of
/// `name`, `here` its incarnation and state in this node's view, if listed.
pub fn decide(
    name: &str,
    me: &str,
    row: Option<Row>,
    here: Option<(u64, State)>,
) -> Result<Retirement, RetireRefusal> {
    if name == me {
        return Err(RetireRefusal::Itself);
    }
    let row = row.ok_or(RetireRefusal::Unknown)?;
    if row.down && row.retired {
        return Ok(Retirement::Already(row.epoch));
    }
    match here {
        Some((epoch, State::Up)) if epoch >= row.epoch => Err(RetireRefusal::Up),
        Some((epoch, State::Down)) if epoch == row.epoch => Ok(Retirement::Retire(row.epoch)),
        _ if row.down => Ok(Retirement::Retire(row.epoch)),
        _ => Err(RetireRefusal::NotDown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Case = (
        &'static str,
        Option<Row>,
        Option<(u64, State)>,
        Result<Retirement, RetireRefusal>,
    );

    #[test]
    fn who_may_be_retired() {
        use RetireRefusal::*;
        use Retirement::*;
        let row = |epoch, down, retired| {
            Some(Row {
                epoch,
                down,
                retired,
            })
        };
        let up = |e| Some((e, State::Up));
        let down = |e| Some((e, State::Down));
        let rows: &[Case] = &[
            // Declared down by the cluster, down or unknown here: retired.
            ("n3", row(4, true, false), down(4), Ok(Retire(4))),
            ("n3", row(4, true, false), None, Ok(Retire(4))),
            // This node's view holds an older incarnation (it missed a restart and the
            // second death): the store's incarnation is the one retired.
            ("n3", row(4, true, false), up(3), Ok(Retire(4))),
            ("n3", row(4, true, false), down(3), Ok(Retire(4))),
            // Up here in that incarnation (another survivor declared it down, this
            // node still hears it): not retired.
            ("n3", row(4, true, false), up(4), Err(Up)),
            // Declared down by this node, the store's row not marked yet: retired.
            ("n3", row(4, false, false), down(4), Ok(Retire(4))),
            // Neither: silent here maybe, but nobody declared it down.
            ("n3", row(4, false, false), None, Err(NotDown)),
            ("n3", row(4, false, false), down(3), Err(NotDown)),
            ("n3", row(4, false, false), up(4), Err(Up)),
            // A repeated request: answered the same, nothing written.
            ("n3", row(4, true, true), None, Ok(Already(4))),
            // Restarted by a build that clears `down` but not `retired`: a live node.
            ("n3", row(5, false, true), up(5), Err(Up)),
            ("n3", row(5, false, true), None, Err(NotDown)),
            ("n9", None, None, Err(Unknown)),
            ("n1", row(1, false, false), None, Err(Itself)),
        ];
        for (name, stored, here, want) in rows {
            assert_eq!(
                decide(name, "n1", *stored, *here),
                *want,
                "{name} {stored:?} {here:?}"
            );
        }
    }
}
