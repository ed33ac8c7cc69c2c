//! Generates the default prompts (`prompts.txt`) with espeak-ng at build time: each
//! text is spoken to a WAV, resampled to 8 kHz 16-bit mono here, and listed in
//! `$OUT_DIR/default_prompts.rs` for `include_bytes!`. Without espeak-ng the list is
//! empty and the build says so (the node then logs that it has no default prompts);
//! nothing is ever downloaded.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=prompts.txt");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=TSUNAGU_ESPEAK");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let out = Path::new(&out);
    let espeak = std::env::var("TSUNAGU_ESPEAK").unwrap_or_else(|_| "espeak-ng".into());
    let texts = std::fs::read_to_string("prompts.txt").expect("media/prompts.txt");
    let mut list = String::from("&[\n");
    for line in texts.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, text) = line.split_once(':').expect("`name: text`");
        let spoken = out.join(format!("{name}.espeak.wav"));
        let status = Command::new(&espeak)
            .args(["-v", "en-us", "-s", "150", "-w"])
            .arg(&spoken)
            .arg(text.trim())
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => {
                println!(
                    "cargo:warning=default prompts not generated: `{espeak}` failed ({other:?}); install the Debian package espeak-ng and rebuild"
                );
                std::fs::write(out.join("default_prompts.rs"), "&[]").expect("write");
                return;
            }
        }
        let (rate, samples) = read_wav(&std::fs::read(&spoken).expect("espeak output"));
        let wav = out.join(format!("{name}.wav"));
        std::fs::write(&wav, write_wav(&resample(&samples, rate, 8000))).expect("write");
        list.push_str(&format!(
            "    ({name:?}, include_bytes!({:?}).as_slice()),\n",
            wav.display().to_string()
        ));
    }
    list.push(']');
    std::fs::write(out.join("default_prompts.rs"), list).expect("write");
}

/// (sample rate, samples) of a 16-bit mono PCM WAV.
fn read_wav(bytes: &[u8]) -> (u32, Vec<i16>) {
    let mut rate = 0;
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let body = &bytes[at + 8..(at + 8 + size).min(bytes.len())];
        match &bytes[at..at + 4] {
            b"fmt " => rate = u32::from_le_bytes(body[4..8].try_into().unwrap()),
            b"data" => {
                let samples = body
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]))
                    .collect();
                return (rate, samples);
            }
            _ => {}
        }
        at += 8 + size + (size & 1);
    }
    panic!("espeak-ng wrote no audio");
}

/// Band-limits to below the new Nyquist frequency (windowed sinc) and resamples by
/// linear interpolation; plenty for speech that will be G.711-encoded.
fn resample(samples: &[i16], from: u32, to: u32) -> Vec<i16> {
    let cutoff = 0.45 * f64::from(to) / f64::from(from);
    let half = 32i64;
    let taps: Vec<f64> = (-half..=half)
        .map(|n| {
            let x = n as f64;
            let sinc = if n == 0 {
                2.0 * cutoff
            } else {
                (2.0 * std::f64::consts::PI * cutoff * x).sin() / (std::f64::consts::PI * x)
            };
            let window = 0.54 + 0.46 * (std::f64::consts::PI * x / half as f64).cos();
            sinc * window
        })
        .collect();
    let filtered: Vec<f64> = (0..samples.len() as i64)
        .map(|i| {
            taps.iter()
                .enumerate()
                .map(|(k, t)| {
                    let j = i + k as i64 - half;
                    if j < 0 || j >= samples.len() as i64 {
                        0.0
                    } else {
                        t * f64::from(samples[j as usize])
                    }
                })
                .sum()
        })
        .collect();
    let n = (samples.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    (0..n)
        .map(|i| {
            let pos = i as f64 * f64::from(from) / f64::from(to);
            let j = pos as usize;
            let frac = pos - j as f64;
            let a = filtered[j];
            let b = filtered.get(j + 1).copied().unwrap_or(a);
            (a + (b - a) * frac).clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

fn write_wav(samples: &[i16]) -> Vec<u8> {
    let data = (samples.len() * 2) as u32;
    let mut w = Vec::with_capacity(44 + data as usize);
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&8000u32.to_le_bytes());
    w.extend_from_slice(&16000u32.to_le_bytes());
    w.extend_from_slice(&2u16.to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data.to_le_bytes());
    for s in samples {
        w.extend_from_slice(&s.to_le_bytes());
    }
    w
}
