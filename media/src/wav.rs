//! A WAV file written as it grows: 8 kHz 16-bit PCM, mono or stereo. Every
//! [`WavFile::append`] writes the samples and then corrects the two size fields of the
//! header, so the file on disk is always a complete, playable WAV of everything
//! appended so far (a crash loses only what was not appended yet).

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

pub const SAMPLE_RATE: u32 = 8000;

/// The 44-byte RIFF/WAVE header for `data_bytes` of 16-bit PCM.
pub fn header(channels: u16, data_bytes: u32) -> [u8; 44] {
    let block = channels * 2;
    let mut h = [0u8; 44];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&(36 + data_bytes).to_le_bytes());
    h[8..16].copy_from_slice(b"WAVEfmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    h[22..24].copy_from_slice(&channels.to_le_bytes());
    h[24..28].copy_from_slice(&SAMPLE_RATE.to_le_bytes());
    h[28..32].copy_from_slice(&(SAMPLE_RATE * u32::from(block)).to_le_bytes());
    h[32..34].copy_from_slice(&block.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_bytes.to_le_bytes());
    h
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
        let mut bytes = Vec::with_capacity(samples.len() * 2);
        for s in samples {
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        self.file
            .seek(SeekFrom::Start(44 + u64::from(self.data_bytes)))?;
        self.file.write_all(&bytes)?;
        self.data_bytes = self.data_bytes.saturating_add(bytes.len() as u32);
        let h = header(self.channels, self.data_bytes);
        self.file.seek(SeekFrom::Start(4))?;
        self.file.write_all(&h[4..8])?;
        self.file.seek(SeekFrom::Start(40))?;
        self.file.write_all(&h[40..44])?;
        Ok(())
    }

    /// Seconds of audio written.
    pub fn seconds(&self) -> f64 {
        f64::from(self.data_bytes) / f64::from(SAMPLE_RATE * u32::from(self.channels) * 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
