//! A WAV file written as it grows: 8 kHz 16-bit PCM, mono or stereo. Every
//! [`WavFile::append`] writes the samples and then corrects the two size fields of the
//! header, so the file on disk is always a complete, playable WAV of everything
//! appended so far (a crash loses only what was not appended yet). [`read_prompt`]
//! reads the one format prompts come in: 8 kHz 16-bit PCM mono.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

pub const SAMPLE_RATE: u32 = 8000;
/// The most audio a WAV file can hold: its RIFF size field (data + 36) is 32 bits.
/// About 37 hours of stereo; a recording stops growing there, with an error.
pub const MAX_DATA_BYTES: u32 = u32::MAX - 36;

/// The 44-byte RIFF/WAVE header for `data_bytes` of 16-bit PCM.
/// `data_bytes` is at most [`MAX_DATA_BYTES`] (the RIFF size field must hold it + 36).
pub fn header(channels: u16, data_bytes: u32) -> [u8; 44] {
    let block = channels.saturating_mul(2);
    let data_bytes = data_bytes.min(MAX_DATA_BYTES);
    let mut h = [0u8; 44];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&(36 + data_bytes).to_le_bytes());
    h[8..16].copy_from_slice(b"WAVEfmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    h[22..24].copy_from_slice(&channels.to_le_bytes());
    h[24..28].copy_from_slice(&SAMPLE_RATE.to_le_bytes());
    h[28..32].copy_from_slice(&SAMPLE_RATE.saturating_mul(u32::from(block)).to_le_bytes());
    h[32..34].copy_from_slice(&block.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_bytes.to_le_bytes());
    h
}

/// Why a WAV file is not a usable prompt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavError {
    #[error("not a RIFF/WAVE file")]
    NotWave,
    #[error("the file has no `{0}` chunk")]
    MissingChunk(&'static str),
    #[error("the audio must be 8000 Hz 16-bit PCM mono; this file is format {format}, {channels} channel(s), {rate} Hz, {bits}-bit")]
    Format {
        format: u16,
        channels: u16,
        rate: u32,
        bits: u16,
    },
    #[error("the file has no audio")]
    Empty,
}

/// The samples of an 8 kHz 16-bit PCM mono WAV file (chunks other than `fmt ` and
/// `data`, such as `LIST`, are skipped; a data chunk longer than the file is cut).
pub fn read_prompt(bytes: &[u8]) -> Result<Vec<i16>, WavError> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotWave);
    }
    let mut fmt = None;
    let mut data = None;
    // Chunk sizes come from the file: every offset is checked, and each chunk moves
    // `at` forward by at least its 8-byte header, so the walk ends.
    let mut at: usize = 12;
    while let Some(header) = at.checked_add(8).and_then(|end| bytes.get(at..end)) {
        let (id, size) = header.split_at(4);
        let size = usize::try_from(u32::from_le_bytes(size.try_into().expect("4 bytes")))
            .unwrap_or(usize::MAX);
        let start = at + 8; // checked just above
        let end = start.saturating_add(size).min(bytes.len());
        let body = &bytes[start..end];
        match id {
            b"fmt " if body.len() >= 16 => fmt = Some(body),
            b"data" => data = Some(body),
            _ => {}
        }
        // Chunks are padded to an even length.
        at = start.saturating_add(size).saturating_add(size & 1);
    }
    let fmt = fmt.ok_or(WavError::MissingChunk("fmt "))?;
    let u16_at = |i: usize| u16::from_le_bytes([fmt[i], fmt[i + 1]]);
    let (format, channels, bits) = (u16_at(0), u16_at(2), u16_at(14));
    let rate = u32::from_le_bytes(fmt[4..8].try_into().expect("4 bytes"));
    if (format, channels, rate, bits) != (1, 1, SAMPLE_RATE, 16) {
        return Err(WavError::Format {
            format,
            channels,
            rate,
            bits,
        });
    }
    let data = data.ok_or(WavError::MissingChunk("data"))?;
    if data.len() < 2 {
        return Err(WavError::Empty);
    }
    Ok(data
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect())
}

/// Makes the names in `dir` (a file created or renamed there) durable: the directory
/// synced (a file's own sync does not cover its name).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

pub struct WavFile {
    file: File,
    channels: u16,
    data_bytes: u32,
}

impl WavFile {
    pub fn create(path: &Path, channels: u16) -> std::io::Result<WavFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = File::create(path)?;
        file.write_all(&header(channels, 0))?;
        Ok(WavFile {
            file,
            channels,
            data_bytes: 0,
        })
    }

    /// Appends interleaved samples (a whole number of frames) and updates the header.
    pub fn append(&mut self, samples: &[i16]) -> std::io::Result<()> {
        if samples.is_empty() {
            return Ok(());
        }
        let len = samples.len().saturating_mul(2);
        let total = u32::try_from(len)
            .ok()
            .and_then(|n| self.data_bytes.checked_add(n))
            .filter(|t| *t <= MAX_DATA_BYTES)
            .ok_or_else(|| {
                std::io::Error::other("the recording reached the WAV size limit (4 GiB)")
            })?;
        let mut bytes = Vec::with_capacity(len);
        for s in samples {
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        self.file
            .seek(SeekFrom::Start(44 + u64::from(self.data_bytes)))?;
        self.file.write_all(&bytes)?;
        self.data_bytes = total;
        let h = header(self.channels, self.data_bytes);
        self.file.seek(SeekFrom::Start(4))?;
        self.file.write_all(&h[4..8])?;
        self.file.seek(SeekFrom::Start(40))?;
        self.file.write_all(&h[40..44])?;
        Ok(())
    }

    /// Flushes what was written to the disk (data and the size that reads it).
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Seconds of audio written.
    pub fn seconds(&self) -> f64 {
        f64::from(self.data_bytes) / (f64::from(SAMPLE_RATE) * f64::from(self.channels) * 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_prompts_and_refuses_other_formats() {
        let mut good = header(1, 4).to_vec();
        good.extend_from_slice(&[1, 0, 0xff, 0xff]);
        assert_eq!(read_prompt(&good), Ok(vec![1, -1]));
        // A LIST chunk before the data (as sox and espeak-ng write) is skipped.
        let mut with_list = good[..36].to_vec();
        with_list.extend_from_slice(b"LIST\x03\0\0\0abc\0");
        with_list.extend_from_slice(&good[36..]);
        assert_eq!(read_prompt(&with_list), Ok(vec![1, -1]));
        let stereo = header(2, 4);
        assert!(matches!(
            read_prompt(&stereo),
            Err(WavError::Format { channels: 2, .. })
        ));
        let mut fast = good.clone();
        fast[24..28].copy_from_slice(&22050u32.to_le_bytes());
        assert!(matches!(
            read_prompt(&fast),
            Err(WavError::Format { rate: 22050, .. })
        ));
        assert_eq!(read_prompt(b"hello"), Err(WavError::NotWave));
        assert_eq!(read_prompt(&header(1, 0)), Err(WavError::Empty));
        assert_eq!(
            read_prompt(&good[..36]),
            Err(WavError::MissingChunk("data"))
        );
    }

    /// A file of `fmt ` (8 kHz mono 16-bit) then the given chunks (id, size field, body).
    fn riff(chunks: &[(&[u8; 4], u32, &[u8])]) -> Vec<u8> {
        let mut f = header(1, 0)[..36].to_vec();
        for (id, size, body) in chunks {
            f.extend_from_slice(*id);
            f.extend_from_slice(&size.to_le_bytes());
            f.extend_from_slice(body);
        }
        f
    }

    /// Chunk sizes taken from the file, hostile ones included: nothing panics, reads
    /// past the end, or loops; a data chunk longer than the file is cut.
    #[test]
    fn hostile_chunk_sizes() {
        let audio: &[u8] = &[1, 0, 0xff, 0xff];
        let two = Ok(vec![1, -1]);
        type Row<'a> = (&'a str, Vec<u8>, Result<Vec<i16>, WavError>);
        let table: &[Row] = &[
            (
                "data size u32::MAX",
                riff(&[(b"data", u32::MAX, audio)]),
                two.clone(),
            ),
            (
                "data size past the end",
                riff(&[(b"data", 1000, audio)]),
                two.clone(),
            ),
            (
                "skipped chunk of size u32::MAX",
                riff(&[(b"LIST", u32::MAX, b"abcd"), (b"data", 4, audio)]),
                Err(WavError::MissingChunk("data")),
            ),
            (
                "skipped chunk of size u32::MAX - 1 (padded)",
                riff(&[(b"JUNK", u32::MAX - 1, b"")]),
                Err(WavError::MissingChunk("data")),
            ),
            (
                "odd chunk padded to even",
                riff(&[(b"LIST", 3, b"abc\0"), (b"data", 4, audio)]),
                two.clone(),
            ),
            (
                "chunk header cut",
                riff(&[(b"data", 4, audio)])[..38].to_vec(),
                Err(WavError::MissingChunk("data")),
            ),
            (
                "odd data length",
                riff(&[(b"data", 5, &[1, 0, 0xff, 0xff, 7])]),
                two.clone(),
            ),
            (
                "one data byte",
                riff(&[(b"data", 1, &[1])]),
                Err(WavError::Empty),
            ),
            (
                "fmt chunk too short",
                {
                    let mut f = b"RIFF\0\0\0\0WAVEfmt \x04\0\0\0\x01\0\x01\0".to_vec();
                    f.extend_from_slice(b"data\x04\0\0\0");
                    f.extend_from_slice(audio);
                    f
                },
                Err(WavError::MissingChunk("fmt ")),
            ),
            (
                "many empty chunks",
                riff(&[(b"JUNK", 0, &[][..]); 1000]),
                Err(WavError::MissingChunk("data")),
            ),
        ];
        for (name, bytes, want) in table {
            assert_eq!(&read_prompt(bytes), want, "{name}");
        }
    }

    #[test]
    fn headers_never_overflow_their_size_fields() {
        let h = header(2, u32::MAX);
        assert_eq!(u32::from_le_bytes(h[4..8].try_into().unwrap()), u32::MAX);
        assert_eq!(
            u32::from_le_bytes(h[40..44].try_into().unwrap()),
            MAX_DATA_BYTES
        );
        let h = header(u16::MAX, 0);
        assert_eq!(
            u16::from_le_bytes([h[32], h[33]]),
            u16::MAX,
            "block size saturates"
        );
        // A recording at the size limit refuses more audio instead of wrapping the header.
        let dir = tempfile::tempdir().unwrap();
        let mut w = WavFile::create(&dir.path().join("full.wav"), 1).unwrap();
        w.data_bytes = MAX_DATA_BYTES - 2;
        assert!(w.append(&[1, 2]).is_err());
        assert_eq!(w.data_bytes, MAX_DATA_BYTES - 2);
    }

    #[test]
    fn file_is_complete_after_every_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r/x.wav");
        let mut w = WavFile::create(&path, 2).unwrap();
        w.append(&[1, -1, 2, -2]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 44 + 8);
        assert_eq!(&bytes[..44], &header(2, 8));
        w.append(&[3, -3]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 44 + 12);
        assert_eq!(u32::from_le_bytes(bytes[40..44].try_into().unwrap()), 12);
        assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 36 + 12);
        assert_eq!(i16::from_le_bytes([bytes[52], bytes[53]]), 3);
        assert_eq!(u16::from_le_bytes([bytes[22], bytes[23]]), 2, "channels");
        assert_eq!(
            u32::from_le_bytes(bytes[28..32].try_into().unwrap()),
            32000,
            "byte rate"
        );
        assert!((w.seconds() - 12.0 / 32000.0).abs() < 1e-9);
    }
}
