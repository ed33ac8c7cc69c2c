//! How much an operator's own prompts may take together, and the rule both backends
//! apply inside the write that stores one (a SQLite IMMEDIATE transaction, a ScyllaDB
//! compare-and-set on the operator's partition). The API of every node asks the
//! store, so uploads through several nodes at once cannot pass it together: every
//! node keeps every operator's prompts in memory.

/// An operator's own prompts: at most `prompts` of them, `bytes` of WAV together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptQuota {
    pub prompts: usize,
    pub bytes: u64,
}

/// What storing a prompt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptPut {
    Saved,
    /// The operator has `quota.prompts` others already; nothing was changed.
    TooMany,
    /// With it the operator's prompts would pass `quota.bytes`; `others` is what the
    /// rest take. Nothing was changed.
    TooLarge {
        others: u64,
    },
}

/// Whether a prompt of `new_bytes` may be stored beside `others` (the sizes of the
/// operator's other prompts: the one it replaces is not among them).
pub fn judge_prompt_put(
    others: impl IntoIterator<Item = u64>,
    new_bytes: u64,
    quota: PromptQuota,
) -> PromptPut {
    let (count, total) = others
        .into_iter()
        .fold((0usize, 0u64), |(c, t), b| (c + 1, t.saturating_add(b)));
    if count >= quota.prompts {
        PromptPut::TooMany
    } else if total.saturating_add(new_bytes) > quota.bytes {
        PromptPut::TooLarge { others: total }
    } else {
        PromptPut::Saved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let q = PromptQuota {
            prompts: 2,
            bytes: 100,
        };
        let cases: [(&[u64], u64, PromptPut); 7] = [
            (&[], 100, PromptPut::Saved),
            (&[], 101, PromptPut::TooLarge { others: 0 }),
            (&[40], 60, PromptPut::Saved),
            (&[40], 61, PromptPut::TooLarge { others: 40 }),
            (&[10, 10], 1, PromptPut::TooMany),
            (&[u64::MAX], 1, PromptPut::TooLarge { others: u64::MAX }),
            (&[u64::MAX, 1], 0, PromptPut::TooMany),
        ];
        for (others, new, want) in cases {
            assert_eq!(
                judge_prompt_put(others.iter().copied(), new, q),
                want,
                "{others:?} + {new}"
            );
        }
    }
}
