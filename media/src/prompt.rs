//! Prompts (ガイダンス): audio the node plays into a leg. A [`Prompt`] is encoded to
//! both PCMU and PCMA once, when it is loaded, and cut into 20 ms frames, so playing it
//! costs a copy per frame and no encoding. [`Prompts`] is the node's library by name:
//! the defaults generated with espeak-ng at build time (`media/prompts.txt`), the WAV
//! files of the prompts directory (shared by all operators), and each operator's own
//! (uploaded through the API, kept under `operators/<id>/` in that directory).

use crate::g711::{self, PCMA};
use crate::wav::{self, WavError, SAMPLE_RATE};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// Samples in one 20 ms RTP frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;

/// One prompt, ready to send.
#[derive(Debug)]
pub struct Prompt {
    pcmu: Box<[u8]>,
    pcma: Box<[u8]>,
}

impl Prompt {
    /// Encodes linear samples, padding the last frame with silence.
    pub fn from_samples(samples: &[i16]) -> Prompt {
        let mut padded = samples.to_vec();
        let frames = samples.len().div_ceil(FRAME_SAMPLES).max(1);
        padded.resize(frames * FRAME_SAMPLES, 0);
        Prompt {
            pcmu: g711::encode(g711::PCMU, &padded).into(),
            pcma: g711::encode(PCMA, &padded).into(),
        }
    }

    /// A prompt from an 8 kHz 16-bit PCM mono WAV file's bytes.
    pub fn from_wav(bytes: &[u8]) -> Result<Prompt, WavError> {
        wav::read_prompt(bytes).map(|s| Prompt::from_samples(&s))
    }

    /// The Japanese ringback tone (呼出音): 400 Hz modulated by 16 Hz, one second on,
    /// two off. Played, looped, to a caller who has been sent early media (a prompt)
    /// and so no longer hears the ringback of their own phone.
    pub fn ringback() -> Prompt {
        let rate = SAMPLE_RATE as usize;
        let samples: Vec<i16> = (0..3 * rate)
            .map(|i| {
                if i >= rate {
                    return 0;
                }
                let t = i as f64 / rate as f64;
                let tone = (2.0 * std::f64::consts::PI * 400.0 * t).sin();
                let envelope = 0.5 + 0.5 * (2.0 * std::f64::consts::PI * 16.0 * t).sin();
                (tone * envelope * 8000.0) as i16
            })
            .collect();
        Prompt::from_samples(&samples)
    }

    pub fn frames(&self) -> usize {
        self.pcmu.len() / FRAME_SAMPLES
    }

    pub fn seconds(&self) -> f64 {
        self.pcmu.len() as f64 / f64::from(SAMPLE_RATE)
    }

    /// Frame `index` encoded for `payload_type` (PCMA for 8, PCMU otherwise).
    pub fn frame(&self, payload_type: u8, index: usize) -> &[u8] {
        let all = if payload_type == PCMA {
            &self.pcma
        } else {
            &self.pcmu
        };
        &all[index * FRAME_SAMPLES..(index + 1) * FRAME_SAMPLES]
    }
}

/// The default prompts compiled in: (name, 8 kHz WAV bytes). Empty if espeak-ng was
/// not installed when the binary was built.
pub const DEFAULTS: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/default_prompts.rs"));

/// Why a prompt could not be loaded or stored.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Wav { path: String, source: WavError },
    #[error("a prompt name is 1 to 64 letters, digits, `_` or `-`")]
    Name,
}

/// Own prompts one operator may have, and their WAV bytes together: every node keeps
/// every operator's prompts in memory, so uploads in a loop must not be able to grow
/// it without bound. The store checks both, cluster-wide, as it stores a prompt.
pub const MAX_OWN_PROMPTS: usize = 50;
/// 600 s of 8 kHz 16-bit mono audio (16,000 bytes a second), WAV headers included.
pub const MAX_OWN_BYTES: u64 = 600 * 16_000;

/// An operator's upload as a prompt: its name and its WAV checked.
pub fn parse_own(name: &str, wav: &[u8]) -> Result<Prompt, PromptError> {
    if !valid_name(name) {
        return Err(PromptError::Name);
    }
    Prompt::from_wav(wav).map_err(|source| PromptError::Wav {
        path: format!("{name}.wav"),
        source,
    })
}

/// Whether `name` may name a prompt (and a file of the prompts directory).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// An operator's own prompts, by (operator, name).
type OwnPrompts = HashMap<(String, String), Arc<Prompt>>;

/// The node's prompt library. Names are shared by every operator (the files of the
/// prompts directory) or belong to one operator (uploaded through the API), which
/// wins over a shared prompt of the same name.
#[derive(Clone, Default)]
pub struct Prompts {
    shared: Arc<RwLock<HashMap<String, Arc<Prompt>>>>,
    own: Arc<RwLock<OwnPrompts>>,
    /// Where operators' own prompts are saved (`<dir>/operators/<id>/<name>.wav`).
    dir: Option<std::path::PathBuf>,
}

impl Prompts {
    /// The defaults, then the files of `dir` (which replace defaults of the same name),
    /// then each operator's own under `dir/operators/`.
    pub fn load(dir: &Path) -> Result<Prompts, PromptError> {
        let mut lib = Prompts::default();
        for (name, wav) in DEFAULTS {
            let prompt = Prompt::from_wav(wav).map_err(|source| PromptError::Wav {
                path: format!("default prompt {name}"),
                source,
            })?;
            lib.insert_shared(name, prompt);
        }
        lib.load_dir(dir)?;
        let operators = dir.join("operators");
        if let Ok(entries) = std::fs::read_dir(&operators) {
            for entry in entries.flatten() {
                let Some(op) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if !entry.path().is_dir() {
                    continue; // an operator is a directory; anything else is not ours
                }
                for (name, prompt) in read_own_dir(&entry.path()) {
                    lib.insert_own(&op, &name, prompt);
                }
            }
        }
        lib.dir = Some(dir.to_path_buf());
        Ok(lib)
    }

    fn insert_shared(&self, name: &str, prompt: Prompt) {
        self.shared
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), Arc::new(prompt));
    }

    /// Saves an operator's own prompt (`prompt`, read by [`parse_own`] from the `wav`
    /// bytes written to disk), replacing one of the same name, and makes it playable at
    /// once. The cap on an operator's prompts ([`MAX_OWN_PROMPTS`],
    /// [`MAX_OWN_BYTES`]) is the store's to check, before this.
    pub fn save_own(
        &self,
        operator: &str,
        name: &str,
        prompt: Prompt,
        wav: &[u8],
    ) -> Result<(), PromptError> {
        if !valid_name(name) {
            return Err(PromptError::Name); // it names a file
        }
        let shown = format!("{name}.wav");
        let replaced = self
            .own
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((operator.to_string(), name.to_string()), Arc::new(prompt));
        if let Some(dir) = &self.dir {
            let dir = dir.join("operators").join(operator);
            let io = |source| PromptError::File {
                path: shown.clone(),
                source,
            };
            let written =
                std::fs::create_dir_all(&dir).and_then(|()| write_durably(&dir, &shown, wav));
            if let Err(e) = written {
                // Not saved: what played before plays on.
                let mut own = self.own.write().unwrap_or_else(|p| p.into_inner());
                let key = (operator.to_string(), name.to_string());
                match replaced {
                    Some(old) => own.insert(key, old),
                    None => own.remove(&key),
                };
                return Err(io(e));
            }
        }
        Ok(())
    }

    /// Whether the operator has an own prompt of that name on this node.
    pub fn has_own(&self, operator: &str, name: &str) -> bool {
        self.own
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&(operator.to_string(), name.to_string()))
    }

    /// Deletes an operator's own prompt; false if it had none of that name.
    pub fn delete_own(&self, operator: &str, name: &str) -> Result<bool, PromptError> {
        let removed = self
            .own
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(operator.to_string(), name.to_string()))
            .is_some();
        if let (true, Some(path)) = (removed, self.own_path(operator, name)) {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(PromptError::File {
                        path: path.display().to_string(),
                        source,
                    })
                }
            }
        }
        Ok(removed)
    }

    /// Loads every `*.wav` of `dir` as a shared prompt.
    pub fn load_dir(&self, dir: &Path) -> Result<usize, PromptError> {
        let prompts = read_dir(dir)?;
        let n = prompts.len();
        for (name, prompt) in prompts {
            self.insert_shared(&name, prompt);
        }
        Ok(n)
    }

    /// Adds or replaces an operator's own prompt.
    pub fn insert_own(&self, operator: &str, name: &str, prompt: Prompt) {
        self.own
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((operator.to_string(), name.to_string()), Arc::new(prompt));
    }

    /// The file of an operator's own prompt on this node's disk, if the library has a
    /// directory and the names can be file names.
    fn own_path(&self, operator: &str, name: &str) -> Option<std::path::PathBuf> {
        let dir = self.dir.as_ref()?;
        (valid_name(name) && valid_name(operator)).then(|| {
            dir.join("operators")
                .join(operator)
                .join(format!("{name}.wav"))
        })
    }

    /// The operators' own prompts held now that `wanted` asks for, as (operator, name,
    /// the bytes of its file on this node's disk); those whose file cannot be read are
    /// left out.
    pub fn own_files(&self, wanted: impl Fn(&str, &str) -> bool) -> Vec<(String, String, Vec<u8>)> {
        let names: Vec<(String, String)> = self
            .own
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .filter(|(op, name)| wanted(op, name))
            .cloned()
            .collect();
        names
            .into_iter()
            .filter_map(|(op, name)| {
                let wav = std::fs::read(self.own_path(&op, &name)?).ok()?;
                Some((op, name, wav))
            })
            .collect()
    }

    /// Where a mark of this prompts directory's own prompts being in the store is kept
    /// (see `provisioning`), if the library has a directory.
    pub fn migrated_mark(&self) -> Option<std::path::PathBuf> {
        self.dir.as_ref().map(|d| d.join(".operators-in-store"))
    }

    /// Replaces every operator's own prompts with `all` (the store's: what is not in
    /// it was deleted).
    pub fn replace_own(&self, all: Vec<(String, String, Prompt)>) {
        let fresh = all
            .into_iter()
            .map(|(op, name, p)| ((op, name), Arc::new(p)))
            .collect();
        *self.own.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    }

    /// Whether `name` is one of the prompts every operator has (what an operator's own
    /// prompt of that name falls back to when it is deleted).
    pub fn is_shared(&self, name: &str) -> bool {
        self.shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(name)
    }

    /// The prompt `name` as `operator` sees it.
    pub fn get(&self, operator: &str, name: &str) -> Option<Arc<Prompt>> {
        let own = self
            .own
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(operator.to_string(), name.to_string()))
            .cloned();
        own.or_else(|| {
            self.shared
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(name)
                .cloned()
        })
    }

    /// The names `operator` can use, sorted, each with whether it is the operator's own.
    pub fn names(&self, operator: &str) -> Vec<(String, bool, f64)> {
        let mut out: HashMap<String, (bool, f64)> = self
            .shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, p)| (n.clone(), (false, p.seconds())))
            .collect();
        for ((op, n), p) in self.own.read().unwrap_or_else(|p| p.into_inner()).iter() {
            if op == operator {
                out.insert(n.clone(), (true, p.seconds()));
            }
        }
        let mut names: Vec<_> = out.into_iter().map(|(n, (o, s))| (n, o, s)).collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        names
    }
}

/// Writes `bytes` as `dir/name` whole or not at all, and on disk before it returns: a
/// temporary file synced, renamed over the name, and the directory synced (a rename to
/// a new name is not ordered after the data by the file system: a power cut could
/// leave an empty `<name>.wav`, which stopped the node's next start; a review).
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(name))?;
    crate::wav::sync_dir(dir)
}

/// An operator's own prompts in `dir`, leaving out (with a warning) any file that
/// cannot be read or is not a usable WAV: the store holds every operator's prompts and
/// replaces these once provisioning loads (see `provisioning`), so a damaged copy on
/// this disk (a power cut, a bad sector) must not stop the node from starting, as it
/// did (a review). The carrier's shared prompts ([`Prompts::load_dir`]) are still
/// refused whole: those are the operator of the node's own files, read nowhere else.
fn read_own_dir(dir: &Path) -> Vec<(String, Prompt)> {
    let mut loaded = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), %e, "an operator's prompts on disk cannot be listed; the store's copies are loaded later");
            return loaded;
        }
    };
    for path in entries.flatten().map(|e| e.path()) {
        let Some(name) = wav_name(&path) else {
            continue;
        };
        let read = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| Prompt::from_wav(&b).map_err(|e| e.to_string()));
        match read {
            Ok(prompt) => loaded.push((name.to_string(), prompt)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "an operator's prompt on disk is unreadable: left out (the store's copy is loaded later)")
            }
        }
    }
    loaded
}

/// The prompt name of a `<name>.wav` file.
fn wav_name(path: &Path) -> Option<&str> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .filter(|_| path.extension().is_some_and(|e| e == "wav"))
}

/// The prompts of every `*.wav` of `dir` (the file stem is the name; other files are
/// skipped). A missing directory has none; a file that is not a valid prompt is an error.
fn read_dir(dir: &Path) -> Result<Vec<(String, Prompt)>, PromptError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(PromptError::File {
                path: dir.display().to_string(),
                source,
            })
        }
    };
    let mut loaded = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = wav_name(&path) else {
            continue;
        };
        let shown = path.display().to_string();
        let bytes = std::fs::read(&path).map_err(|source| PromptError::File {
            path: shown.clone(),
            source,
        })?;
        let prompt = Prompt::from_wav(&bytes).map_err(|source| PromptError::Wav {
            path: shown,
            source,
        })?;
        loaded.push((name.to_string(), prompt));
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prompts_were_generated_at_build_time() {
        let names: Vec<&str> = DEFAULTS.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "queue",
                "queue_timeout",
                "closed",
                "recording_notice",
                "ivr_menu",
                "ivr_invalid",
                "judgement"
            ],
            "espeak-ng must be installed when tsunagu is built (scripts/test.sh installs it)"
        );
        let lib = Prompts::load(Path::new("/nonexistent")).unwrap();
        let notice = lib.get("any", "recording_notice").unwrap();
        assert!(
            (1.0..4.0).contains(&notice.seconds()),
            "{}",
            notice.seconds()
        );
    }

    #[test]
    fn prompts_are_whole_frames_in_both_laws() {
        let p = Prompt::from_samples(&[1000; 200]);
        assert_eq!(p.frames(), 2, "padded to whole frames");
        assert_eq!(p.frame(0, 1)[100], 0xff, "padding is μ-law silence");
        assert_eq!(p.frame(8, 1)[100], 0xd5, "padding is A-law silence");
        assert_ne!(p.frame(0, 0)[0], p.frame(8, 0)[0]);
        let ring = Prompt::ringback();
        assert_eq!(ring.frames(), 150, "three seconds");
        assert!(ring.frame(0, 10).iter().any(|b| *b != 0xff), "tone");
        assert!(ring.frame(0, 100).iter().all(|b| *b == 0xff), "pause");
    }

    /// A damaged operator's prompt on disk (empty after a power cut, unreadable) is
    /// left out at start, the node's other prompts loaded; it stopped the start.
    #[test]
    fn a_damaged_own_prompt_on_disk_does_not_stop_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut wav = crate::wav::header(1, 320).to_vec();
        wav.extend_from_slice(&[0; 320]);
        let op = dir.path().join("operators").join("op1");
        std::fs::create_dir_all(&op).unwrap();
        std::fs::write(op.join("good.wav"), &wav).unwrap();
        std::fs::write(op.join("empty.wav"), b"").unwrap();
        std::fs::write(op.join("cut.wav"), &wav[..30]).unwrap();
        std::fs::create_dir(op.join("dir.wav")).unwrap(); // cannot be read as a file
        let lib = Prompts::load(dir.path()).unwrap();
        assert_eq!(lib.get("op1", "good").unwrap().frames(), 1);
        for gone in ["empty", "cut", "dir"] {
            assert!(lib.get("op1", gone).is_none(), "{gone}");
        }
        // Saved in the same place and under the same name as before (the syncs on the
        // way are not seen here).
        lib.save_own("op1", "fresh", parse_own("fresh", &wav).unwrap(), &wav)
            .unwrap();
        assert_eq!(std::fs::read(op.join("fresh.wav")).unwrap(), wav);
        assert!(!op.join(".fresh.wav.tmp").exists());
    }

    #[test]
    fn library_loads_a_directory_and_operators_own_prompts_win() {
        let dir = tempfile::tempdir().unwrap();
        let mut wav = crate::wav::header(1, 320).to_vec();
        wav.extend_from_slice(&[0; 320]);
        std::fs::write(dir.path().join("queue.wav"), &wav).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a prompt").unwrap();
        let lib = Prompts::default();
        assert_eq!(lib.load_dir(dir.path()).unwrap(), 1);
        assert_eq!(lib.load_dir(&dir.path().join("none")).unwrap(), 0);
        assert_eq!(lib.get("op1", "queue").unwrap().frames(), 1);
        lib.insert_own("op1", "queue", Prompt::from_samples(&[0; 480]));
        assert_eq!(lib.get("op1", "queue").unwrap().frames(), 3, "own wins");
        assert_eq!(
            lib.get("op2", "queue").unwrap().frames(),
            1,
            "others keep the shared one"
        );
        assert_eq!(lib.names("op1"), vec![("queue".to_string(), true, 0.06)]);
        assert!(lib.delete_own("op1", "queue").unwrap());
        assert_eq!(lib.get("op1", "queue").unwrap().frames(), 1);
        assert!(lib.get("op1", "closed").is_none());
        std::fs::write(dir.path().join("bad.wav"), "RIFF").unwrap();
        assert!(matches!(
            lib.load_dir(dir.path()),
            Err(PromptError::Wav { .. })
        ));
        std::fs::remove_file(dir.path().join("bad.wav")).unwrap();
        let lib = Prompts::load(dir.path()).unwrap();
        let hello = parse_own("hello", &wav).unwrap();
        assert_eq!(hello.seconds(), 0.02);
        lib.save_own("op1", "hello", hello, &wav).unwrap();
        assert!(matches!(parse_own("../x", &wav), Err(PromptError::Name)));
        let any = parse_own("x", &wav).unwrap();
        assert!(matches!(
            lib.save_own("op1", "../x", any, &wav),
            Err(PromptError::Name)
        ));
        assert!(matches!(
            parse_own("x", b"RIFF"),
            Err(PromptError::Wav { .. })
        ));
        let reloaded = Prompts::load(dir.path()).unwrap();
        assert!(reloaded.get("op1", "hello").is_some(), "saved to disk");
        assert!(
            reloaded.get("op2", "hello").is_none(),
            "for its operator only"
        );
        assert!(reloaded.delete_own("op1", "hello").unwrap());
        assert!(!reloaded.delete_own("op1", "hello").unwrap());
        assert!(Prompts::load(dir.path())
            .unwrap()
            .get("op1", "hello")
            .is_none());
        assert!(valid_name("queue_timeout-2"));
        assert!(!valid_name("../etc"));
        assert!(!valid_name(""));
    }
}
