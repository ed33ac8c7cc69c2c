//! Joining a recording made in parts into one WAV, as pure code. A call taken over by
//! another node goes on recording there as a new part; each part is a WAV the node
//! wrote (media/src/wav.rs) and starts `offset_ms` after the answer. [`read_header`]
//! reads what a part's 44-byte header says; [`plan`] lays out the joined file before
//! any audio is read: part 1's audio, silence for any gap until the next part's start,
//! part 2's audio, and so on, with the output's size known up front (the response
//! carries a Content-Length and streams the pieces; recordings.rs does the I/O).
//!
//! Rules (and why):
//! - Parts are joined in the record's order. A part that starts before the previous
//!   one's audio ends is put right after it: no audio is dropped.
//! - A gap is silence of at most [`MAX_SILENCE_MS`]: a takeover gap is a few seconds;
//!   a longer one means an earlier part lost audio (its node's disk, a kill), and the
//!   join does not pad it with minutes of zeros nor trust an offset that says hours.
//! - Parts of different channel counts (a number switched between `both` and one side
//!   while a call moved) are refused rather than converted: a mono part holds one side
//!   and its header does not say which, so no conversion would put it on the right
//!   channel. Each part stays available on its own (`?part=N`).
//! - All sizes are checked: the output fits the WAV size fields or is refused.

use tsunagu_media::wav::{MAX_DATA_BYTES, SAMPLE_RATE};

/// Bytes of the header every part starts with (and the joined file too).
pub const HEADER_BYTES: usize = 44;
/// The most parts a recording is joined from (a call moves at most once per takeover;
/// a rolling restart of three nodes makes four).
pub const MAX_PARTS: usize = 32;
/// The longest silence put between two parts.
pub const MAX_SILENCE_MS: u64 = 60_000;

/// What a part's header says: its channels (1 or 2) and its bytes of audio (a whole
/// number of frames, no more than its file holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartHeader {
    pub channels: u16,
    pub data_bytes: u64,
}

/// Why a part's file is not a recording this project wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not a WAV recording (8 kHz 16-bit PCM with a 44-byte header)")]
    NotARecording,
    #[error("a recording has 1 or 2 channels, this one {0}")]
    Channels(u16),
}

/// Reads a part's header; `available` is how many bytes follow it in the file. A node
/// killed between writing audio and updating the header leaves more bytes than the
/// header counts (the extra are not counted); a file cut short holds fewer (the count
/// is cut to what is there).
pub fn read_header(h: &[u8; HEADER_BYTES], available: u64) -> Result<PartHeader, HeaderError> {
    let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let ours = &h[0..4] == b"RIFF"
        && &h[8..16] == b"WAVEfmt "
        && u32_at(16) == 16
        && u16_at(20) == 1
        && u32_at(24) == SAMPLE_RATE
        && u16_at(34) == 16
        && &h[36..40] == b"data";
    if !ours {
        return Err(HeaderError::NotARecording);
    }
    let channels = u16_at(22);
    if !(1..=2).contains(&channels) {
        return Err(HeaderError::Channels(channels));
    }
    if u16_at(32) != channels * 2 {
        return Err(HeaderError::NotARecording);
    }
    let block = u64::from(channels) * 2;
    let data = u64::from(u32_at(40)).min(available);
    Ok(PartHeader {
        channels,
        data_bytes: data - data % block,
    })
}

/// One part as the join sees it: when it starts after the answer, and its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartAudio {
    pub offset_ms: i64,
    pub header: PartHeader,
}

/// One stretch of the joined audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// This many bytes of zeros (a whole number of frames).
    Silence(u64),
    /// The first `bytes` of audio of part `index` (0-based, in the record's order).
    Part { index: usize, bytes: u64 },
}

/// The joined file, laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinPlan {
    pub channels: u16,
    /// Bytes of audio after the header (the sum of the pieces).
    pub data_bytes: u32,
    pub pieces: Vec<Piece>,
    /// Gaps cut to [`MAX_SILENCE_MS`].
    pub gaps_capped: usize,
}

impl JoinPlan {
    pub fn header(&self) -> [u8; HEADER_BYTES] {
        tsunagu_media::wav::header(self.channels, self.data_bytes)
    }

    /// The joined file's size: header and audio.
    pub fn content_length(&self) -> u64 {
        HEADER_BYTES as u64 + u64::from(self.data_bytes)
    }
}

/// Why the parts are not joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("the recording has no parts")]
    NoParts,
    #[error("the recording has {0} parts; at most {MAX_PARTS} are joined")]
    TooManyParts(usize),
    #[error("part {part} has {channels} channels; a recording has 1 or 2")]
    Channels { part: usize, channels: u16 },
    #[error("part 1 has {first} channel(s) and part {part} has {other}: parts of different channel counts are not joined (each is served with ?part=N)")]
    ChannelsDiffer { part: usize, first: u16, other: u16 },
    #[error("the parts together pass the WAV size limit (4 GiB); each is served with ?part=N")]
    TooLong,
}

/// Lays out the joined file of `parts` (in the record's order).
pub fn plan(parts: &[PartAudio]) -> Result<JoinPlan, JoinError> {
    let first = parts.first().ok_or(JoinError::NoParts)?;
    if parts.len() > MAX_PARTS {
        return Err(JoinError::TooManyParts(parts.len()));
    }
    let channels = first.header.channels;
    for (i, p) in parts.iter().enumerate() {
        let c = p.header.channels;
        if !(1..=2).contains(&c) {
            return Err(JoinError::Channels {
                part: i + 1,
                channels: c,
            });
        }
        if c != channels {
            return Err(JoinError::ChannelsDiffer {
                part: i + 1,
                first: channels,
                other: c,
            });
        }
    }
    let block = u64::from(channels) * 2;
    // Bytes per millisecond: 8 frames of `block` bytes at 8 kHz (a whole number of frames).
    let per_ms = u64::from(SAMPLE_RATE / 1000) * block;
    let max_silence = MAX_SILENCE_MS * per_ms;
    let mut at: u64 = 0;
    let mut pieces = Vec::with_capacity(parts.len() * 2);
    let mut gaps_capped = 0;
    for (index, p) in parts.iter().enumerate() {
        // Where the part belongs: its offset from the answer (a negative one is 0; a
        // huge one saturates and is capped below).
        let start = u64::try_from(p.offset_ms)
            .unwrap_or(0)
            .saturating_mul(per_ms);
        let gap = start.saturating_sub(at);
        if gap > max_silence {
            gaps_capped += 1;
        }
        let silence = gap.min(max_silence);
        if silence > 0 {
            pieces.push(Piece::Silence(silence));
        }
        let bytes = p.header.data_bytes - p.header.data_bytes % block;
        if bytes > 0 {
            pieces.push(Piece::Part { index, bytes });
        }
        at = at
            .checked_add(silence)
            .and_then(|a| a.checked_add(bytes))
            .ok_or(JoinError::TooLong)?;
    }
    let data_bytes = u32::try_from(at)
        .ok()
        .filter(|b| *b <= MAX_DATA_BYTES)
        .ok_or(JoinError::TooLong)?;
    Ok(JoinPlan {
        channels,
        data_bytes,
        pieces,
        gaps_capped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Piece::{Part, Silence};

    fn part(offset_ms: i64, channels: u16, data_bytes: u64) -> PartAudio {
        PartAudio {
            offset_ms,
            header: PartHeader {
                channels,
                data_bytes,
            },
        }
    }

    /// Stereo: 32 bytes a millisecond; mono: 16.
    #[test]
    fn plans() {
        const S: u64 = 32;
        type Row = (
            &'static str,
            Vec<PartAudio>,
            Result<(Vec<Piece>, usize), JoinError>,
        );
        let table: Vec<Row> = vec![
            (
                "one part",
                vec![part(0, 2, 1000 * S)],
                Ok((
                    vec![Part {
                        index: 0,
                        bytes: 1000 * S,
                    }],
                    0,
                )),
            ),
            (
                "a takeover gap of 1.5 s",
                vec![part(0, 2, 10_000 * S), part(11_500, 2, 5000 * S)],
                Ok((
                    vec![
                        Part {
                            index: 0,
                            bytes: 10_000 * S,
                        },
                        Silence(1500 * S),
                        Part {
                            index: 1,
                            bytes: 5000 * S,
                        },
                    ],
                    0,
                )),
            ),
            (
                "mono gap",
                vec![part(0, 1, 16_000), part(2000, 1, 1600)],
                Ok((
                    vec![
                        Part {
                            index: 0,
                            bytes: 16_000,
                        },
                        Silence(16_000),
                        Part {
                            index: 1,
                            bytes: 1600,
                        },
                    ],
                    0,
                )),
            ),
            (
                "three parts",
                vec![
                    part(0, 2, 1000 * S),
                    part(1200, 2, 1000 * S),
                    part(2200, 2, 1000 * S),
                ],
                Ok((
                    vec![
                        Part {
                            index: 0,
                            bytes: 1000 * S,
                        },
                        Silence(200 * S),
                        Part {
                            index: 1,
                            bytes: 1000 * S,
                        },
                        Part {
                            index: 2,
                            bytes: 1000 * S,
                        },
                    ],
                    0,
                )),
            ),
            (
                "overlap: the next part follows, nothing dropped",
                vec![part(0, 2, 3000 * S), part(2000, 2, 1000 * S)],
                Ok((
                    vec![
                        Part {
                            index: 0,
                            bytes: 3000 * S,
                        },
                        Part {
                            index: 1,
                            bytes: 1000 * S,
                        },
                    ],
                    0,
                )),
            ),
            (
                "a first part that starts late",
                vec![part(500, 2, 1000 * S)],
                Ok((
                    vec![
                        Silence(500 * S),
                        Part {
                            index: 0,
                            bytes: 1000 * S,
                        },
                    ],
                    0,
                )),
            ),
            (
                "negative offset counts as the answer",
                vec![part(-5000, 2, 1000 * S)],
                Ok((
                    vec![Part {
                        index: 0,
                        bytes: 1000 * S,
                    }],
                    0,
                )),
            ),
            (
                "a gap over a minute is cut to a minute",
                vec![part(0, 2, 1000 * S), part(3_600_000, 2, 1000 * S)],
                Ok((
                    vec![
                        Part {
                            index: 0,
                            bytes: 1000 * S,
                        },
                        Silence(MAX_SILENCE_MS * S),
                        Part {
                            index: 1,
                            bytes: 1000 * S,
                        },
                    ],
                    1,
                )),
            ),
            (
                "offset i64::MAX saturates and is capped",
                vec![part(0, 1, 16), part(i64::MAX, 1, 16)],
                Ok((
                    vec![
                        Part {
                            index: 0,
                            bytes: 16,
                        },
                        Silence(MAX_SILENCE_MS * 16),
                        Part {
                            index: 1,
                            bytes: 16,
                        },
                    ],
                    1,
                )),
            ),
            (
                "empty parts add nothing but their place",
                vec![part(0, 2, 0), part(1000, 2, 0)],
                Ok((vec![Silence(1000 * S)], 0)),
            ),
            (
                "a partial frame is left out",
                vec![part(0, 2, 7)],
                Ok((vec![Part { index: 0, bytes: 4 }], 0)),
            ),
            ("no parts", vec![], Err(JoinError::NoParts)),
            (
                "too many parts",
                vec![part(0, 1, 2); MAX_PARTS + 1],
                Err(JoinError::TooManyParts(MAX_PARTS + 1)),
            ),
            (
                "mono then stereo",
                vec![part(0, 1, 16), part(10, 2, 32)],
                Err(JoinError::ChannelsDiffer {
                    part: 2,
                    first: 1,
                    other: 2,
                }),
            ),
            (
                "no channels",
                vec![part(0, 0, 16)],
                Err(JoinError::Channels {
                    part: 1,
                    channels: 0,
                }),
            ),
            (
                "over 4 GiB together",
                vec![part(0, 2, u64::from(MAX_DATA_BYTES) - 4), part(0, 2, 8)],
                Err(JoinError::TooLong),
            ),
            (
                "u64 sizes do not wrap",
                vec![part(0, 2, u64::MAX - 3), part(0, 2, 8)],
                Err(JoinError::TooLong),
            ),
        ];
        for (name, parts, want) in table {
            let got = plan(&parts).map(|p| {
                let sum: u64 = p
                    .pieces
                    .iter()
                    .map(|x| match x {
                        Silence(n) => *n,
                        Part { bytes, .. } => *bytes,
                    })
                    .sum();
                assert_eq!(sum, u64::from(p.data_bytes), "{name}: sizes add up");
                assert_eq!(p.content_length(), 44 + sum, "{name}");
                (p.pieces, p.gaps_capped)
            });
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn reads_the_headers_nodes_write() {
        let h = |channels: u16, data: u32| tsunagu_media::wav::header(channels, data);
        let bad = |f: &dyn Fn(&mut [u8; 44])| {
            let mut x = h(2, 64);
            f(&mut x);
            x
        };
        type Row = (&'static str, [u8; 44], u64, Result<PartHeader, HeaderError>);
        let ok = |channels, data_bytes| {
            Ok(PartHeader {
                channels,
                data_bytes,
            })
        };
        let table: Vec<Row> = vec![
            ("stereo", h(2, 64), 64, ok(2, 64)),
            ("mono", h(1, 6), 6, ok(1, 6)),
            (
                "killed after writing audio, before the header",
                h(2, 64),
                96,
                ok(2, 64),
            ),
            ("file shorter than its header says", h(2, 64), 40, ok(2, 40)),
            ("cut mid-frame", h(2, 64), 42, ok(2, 40)),
            ("empty", h(1, 0), 0, ok(1, 0)),
            (
                "size u32::MAX",
                bad(&|x| x[40..44].copy_from_slice(&u32::MAX.to_le_bytes())),
                1 << 40,
                ok(2, u64::from(u32::MAX) - 3),
            ),
            (
                "three channels",
                h(3, 60),
                60,
                Err(HeaderError::Channels(3)),
            ),
            ("no channels", h(0, 0), 0, Err(HeaderError::Channels(0))),
            (
                "not RIFF",
                bad(&|x| x[0] = b'X'),
                64,
                Err(HeaderError::NotARecording),
            ),
            (
                "16 kHz",
                bad(&|x| x[24..28].copy_from_slice(&16000u32.to_le_bytes())),
                64,
                Err(HeaderError::NotARecording),
            ),
            (
                "8-bit",
                bad(&|x| x[34] = 8),
                64,
                Err(HeaderError::NotARecording),
            ),
            (
                "not PCM",
                bad(&|x| x[20] = 3),
                64,
                Err(HeaderError::NotARecording),
            ),
            (
                "a LIST chunk before data",
                bad(&|x| x[36..40].copy_from_slice(b"LIST")),
                64,
                Err(HeaderError::NotARecording),
            ),
            (
                "wrong block size",
                bad(&|x| x[32] = 2),
                64,
                Err(HeaderError::NotARecording),
            ),
            (
                "text",
                *b"the admin token is not a WAV file, not even ",
                1000,
                Err(HeaderError::NotARecording),
            ),
        ];
        for (name, header, available, want) in table {
            assert_eq!(read_header(&header, available), want, "{name}");
        }
    }
}
