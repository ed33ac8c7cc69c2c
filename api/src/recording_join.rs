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
//!
//! An HTTP `Range` (RFC 9110 section 14) asks for a window of that file: [`window`]
//! reads the header's value against the file's size, and [`JoinPlan::slices`] maps the
//! window onto the header and the pieces, so the I/O reads only what the window holds.

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

    /// The whole file as a window (never empty: there is always the header).
    pub fn whole(&self) -> Window {
        Window {
            first: 0,
            last: self.content_length() - 1,
        }
    }

    /// What `w` holds of the file, in order: a stretch of the header, silence, and
    /// stretches of parts' audio (`skip` bytes into the part's audio). Nothing empty
    /// is listed; their sizes add up to what of `w` lies within the file.
    pub fn slices(&self, w: Window) -> Vec<Slice> {
        let end = w.last.saturating_add(1);
        // The stretch [start, start + len) of the file cut to the window: (bytes into
        // the stretch, bytes), None if they do not meet.
        let cut = |start: u64, len: u64| {
            let lo = start.max(w.first);
            let hi = start.saturating_add(len).min(end);
            (lo < hi).then(|| (lo - start, hi - lo))
        };
        let mut out = Vec::new();
        if let Some((skip, bytes)) = cut(0, HEADER_BYTES as u64) {
            // Both within the 44-byte header.
            let from = usize::try_from(skip).unwrap_or(HEADER_BYTES);
            let to = usize::try_from(skip + bytes).unwrap_or(HEADER_BYTES);
            out.push(Slice::Header { from, to });
        }
        let mut at = HEADER_BYTES as u64;
        for piece in &self.pieces {
            let len = match *piece {
                Piece::Silence(n) => n,
                Piece::Part { bytes, .. } => bytes,
            };
            if let Some((skip, bytes)) = cut(at, len) {
                out.push(match *piece {
                    Piece::Silence(_) => Slice::Silence(bytes),
                    Piece::Part { index, .. } => Slice::Part { index, skip, bytes },
                });
            }
            at = at.saturating_add(len);
        }
        out
    }
}

/// One stretch of a window of the joined file (see [`JoinPlan::slices`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slice {
    /// The header's bytes `from..to`.
    Header { from: usize, to: usize },
    /// This many bytes of zeros.
    Silence(u64),
    /// `bytes` of part `index`'s audio, starting `skip` bytes into it.
    Part { index: usize, skip: u64, bytes: u64 },
}

/// Bytes `first..=last` of a file (RFC 9110's byte positions, last included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub first: u64,
    pub last: u64,
}

impl Window {
    /// How many bytes it holds.
    pub fn len(&self) -> u64 {
        self.last.saturating_sub(self.first).saturating_add(1)
    }
}

/// How to answer a `Range` header field's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// 200 with the whole file: no range, or one this server ignores (several ranges,
    /// a unit other than bytes, a value that does not parse).
    Whole,
    /// 206 with this window (within the file).
    Part(Window),
    /// 416: one byte range, but it does not meet the file.
    Unsatisfiable,
}

/// Reads a `Range` value (`bytes=a-b`, `bytes=a-`, `bytes=-n`) against a file of
/// `total` bytes (RFC 9110 section 14.1.2). Only a single range is answered: a server
/// may ignore a Range (section 14.2), and several ranges would need a multipart
/// answer, which players do not ask for; a value that does not parse is ignored too.
/// Numbers past u64 count as u64::MAX, which is what they mean here: a first byte
/// past any file, a last byte or a suffix longer than the file.
pub fn window(range: &str, total: u64) -> RangeAnswer {
    let Some((unit, set)) = range.trim_matches(OWS).split_once('=') else {
        return RangeAnswer::Whole;
    };
    if !unit.eq_ignore_ascii_case("bytes") {
        return RangeAnswer::Whole;
    }
    // A list may hold empty elements (RFC 9110 section 5.6.1): they count for nothing.
    let mut specs = set
        .split(',')
        .map(|s| s.trim_matches(OWS))
        .filter(|s| !s.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        return RangeAnswer::Whole;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return RangeAnswer::Whole;
    };
    let w = if first.is_empty() {
        // A suffix: the last `n` bytes, the whole file if it is shorter.
        let Some(n) = number(last) else {
            return RangeAnswer::Whole;
        };
        if n == 0 || total == 0 {
            return RangeAnswer::Unsatisfiable;
        }
        Window {
            first: total.saturating_sub(n),
            last: total - 1,
        }
    } else {
        let Some(first) = number(first) else {
            return RangeAnswer::Whole;
        };
        // `a-` runs to the end of the file.
        let last = match (last.is_empty(), number(last)) {
            (true, _) => None,
            (false, Some(l)) if l >= first => Some(l),
            // Not a number, or before the first byte: invalid, ignored.
            (false, _) => return RangeAnswer::Whole,
        };
        if first >= total {
            return RangeAnswer::Unsatisfiable;
        }
        Window {
            first,
            last: last.map_or(total - 1, |l| l.min(total - 1)),
        }
    };
    RangeAnswer::Part(w)
}

/// Optional whitespace around list elements (RFC 9110 section 5.6.3).
const OWS: &[char] = &[' ', '\t'];

/// A run of ASCII digits as a number (u64::MAX past it); None if it is not one (empty,
/// a sign, a space inside).
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        s.bytes()
            .try_fold(0u64, |n, b| {
                n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
            })
            .unwrap_or(u64::MAX),
    )
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

    /// Each row: a Range value against a file of 1000 bytes → the answer.
    #[test]
    fn range_windows() {
        use RangeAnswer::{Part as P, Unsatisfiable as No, Whole};
        let w = |first, last| P(Window { first, last });
        let table: &[(&str, RangeAnswer)] = &[
            ("bytes=0-99", w(0, 99)),
            ("bytes=100-199", w(100, 199)),
            ("bytes=999-999", w(999, 999)),
            ("bytes=0-", w(0, 999)),
            ("bytes=500-", w(500, 999)),
            ("bytes=900-5000", w(900, 999)),
            ("bytes=-1", w(999, 999)),
            ("bytes=-100", w(900, 999)),
            ("bytes=-1000", w(0, 999)),
            ("bytes=-5000", w(0, 999)),
            ("BYTES=1-2", w(1, 2)),
            ("bytes=1-2,", w(1, 2)),
            ("bytes= 1-2 ,", w(1, 2)),
            ("bytes=0-18446744073709551615", w(0, 999)),
            ("bytes=0-99999999999999999999999", w(0, 999)),
            ("bytes=-18446744073709551615", w(0, 999)),
            ("bytes=-99999999999999999999999", w(0, 999)),
            ("bytes=00010-0020", w(10, 20)),
            // Past the file.
            ("bytes=1000-", No),
            ("bytes=1000-1001", No),
            ("bytes=18446744073709551615-", No),
            ("bytes=99999999999999999999999-", No),
            ("bytes=-0", No),
            // Ignored: several ranges, another unit, what does not parse.
            ("bytes=0-1,5-6", Whole),
            ("bytes=0-1, 2000-3000", Whole),
            ("bytes=2000-3000,0-1", Whole),
            ("items=0-1", Whole),
            ("bytes 0-1", Whole),
            ("bytes=", Whole),
            ("bytes=,", Whole),
            ("bytes=-", Whole),
            ("bytes=5", Whole),
            ("bytes=5-4", Whole),
            ("bytes=+1-2", Whole),
            ("bytes=1-+2", Whole),
            ("bytes=--1", Whole),
            ("bytes=1-2-3", Whole),
            ("bytes=a-b", Whole),
            ("bytes=1 -2", Whole),
            ("bytes=0x10-", Whole),
            ("bytes=१-२", Whole),
            ("", Whole),
        ];
        for (range, want) in table {
            assert_eq!(window(range, 1000), *want, "{range}");
        }
        // A file of no bytes (never served: there is always a header) meets no range.
        assert_eq!(window("bytes=0-", 0), No);
        assert_eq!(window("bytes=-5", 0), No);
        assert_eq!(
            Window {
                first: 0,
                last: u64::MAX
            }
            .len(),
            u64::MAX,
            "saturates"
        );
    }

    /// A window of a joined file of part 0 (100 bytes), 50 bytes of silence, part 1
    /// (80 bytes): header 0..44, part 0 44..144, silence 144..194, part 1 194..274.
    #[test]
    fn windows_over_the_pieces() {
        use Slice::{Header as H, Part as P, Silence as Z};
        let plan = JoinPlan {
            channels: 1,
            data_bytes: 230,
            pieces: vec![
                Part {
                    index: 0,
                    bytes: 100,
                },
                Silence(50),
                Part {
                    index: 1,
                    bytes: 80,
                },
            ],
            gaps_capped: 0,
        };
        let part = |index, skip, bytes| P { index, skip, bytes };
        let table: &[(&str, u64, u64, Vec<Slice>)] = &[
            (
                "whole",
                0,
                273,
                vec![
                    H { from: 0, to: 44 },
                    part(0, 0, 100),
                    Z(50),
                    part(1, 0, 80),
                ],
            ),
            ("the header alone", 0, 43, vec![H { from: 0, to: 44 }]),
            ("inside the header", 10, 19, vec![H { from: 10, to: 20 }]),
            (
                "header into part 0",
                40,
                47,
                vec![H { from: 40, to: 44 }, part(0, 0, 4)],
            ),
            ("inside part 0", 50, 59, vec![part(0, 6, 10)]),
            ("last byte of part 0", 143, 143, vec![part(0, 99, 1)]),
            ("first byte of the silence", 144, 144, vec![Z(1)]),
            (
                "part 0 into the silence",
                140,
                150,
                vec![part(0, 96, 4), Z(7)],
            ),
            (
                "across the silence",
                100,
                200,
                vec![part(0, 56, 44), Z(50), part(1, 0, 7)],
            ),
            ("the end", 270, 273, vec![part(1, 76, 4)]),
            ("past the end is cut", 270, 9999, vec![part(1, 76, 4)]),
            ("wholly past the end", 274, 300, vec![]),
        ];
        for (name, first, last, want) in table {
            let w = Window {
                first: *first,
                last: *last,
            };
            let got = plan.slices(w);
            assert_eq!(&got, want, "{name}");
            let sum: u64 = got
                .iter()
                .map(|s| match *s {
                    H { from, to } => (to - from) as u64,
                    Z(n) => n,
                    P { bytes, .. } => bytes,
                })
                .sum();
            let within = (*last).min(plan.content_length() - 1) + 1;
            assert_eq!(sum, within.saturating_sub(*first), "{name}: sizes add up");
        }
        assert_eq!(plan.slices(plan.whole()), table[0].3);
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
