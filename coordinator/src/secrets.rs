//! A job's secrets (`spec.browser.secrets`): never shown, never stored in the clear.
//!
//! At submit the values leave the spec (which keeps [`MASK`] in their place, so every
//! view of the job shows `***`) and are sealed with envelope encryption: encoded, then
//! encrypted under a fresh data key (ChaCha20-Poly1305), the data key encrypted under the
//! coordinator's secrets key. Only the assignment sent to the agent running the attempt
//! carries them again; a settled job drops them.
//!
//! Keys are 32 random bytes, base64 in a file (`--secrets-key-file`; the embedded store
//! makes one in its data dir). Rotation: start with the new key as `--secrets-key-file` and
//! the old one as `--secrets-old-key-file` until the jobs sealed with it are settled.

use crate::record::{SealedSecrets, Secrets};
use base64::Engine as _;
use baton_proto::v1::{JobSpec, job_spec};
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use prost::Message as _;
use sha2::Digest as _;
use std::collections::HashMap;
use std::path::Path;

/// What every view of a job shows in place of a secret's value.
pub const MASK: &str = "***";

const NONCE_BYTES: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{path}: {error}")]
    KeyFile { path: String, error: String },
    #[error("this coordinator keeps no secrets: start it with --secrets-key-file (the same key on every coordinator)")]
    NoKey,
    #[error("sealed with key {0}, which this coordinator was not given (--secrets-old-key-file)")]
    UnknownKey(String),
    #[error("the sealed secrets do not decrypt with key {0}: damaged, or another key of that id")]
    Damaged(String),
}

/// The coordinator's secrets keys: the one that seals, and older ones that still open.
#[derive(Default)]
pub struct Keyring {
    current: Option<String>,
    keys: HashMap<String, Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids only: the keys never reach a log.
        f.debug_struct("Keyring").field("current", &self.current).field("keys", &self.keys.keys()).finish()
    }
}

fn key_id(key: &Key) -> String {
    sha2::Sha256::digest(key.as_slice()).iter().take(4).map(|b| format!("{b:02x}")).collect()
}

fn read_key(path: &Path) -> Result<Key, SecretsError> {
    let fail = |error: String| SecretsError::KeyFile { path: path.display().to_string(), error };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(text.trim()).map_err(|e| fail(format!("not base64: {e}")))?;
    if bytes.len() != 32 {
        return Err(fail(format!("holds {} bytes; a secrets key is 32 random bytes, base64", bytes.len())));
    }
    Ok(*Key::from_slice(&bytes))
}

/// Writes a new random key to `path` (readable by its owner only); fails if it exists.
pub fn generate_key_file(path: &Path) -> Result<(), SecretsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let fail = |e: std::io::Error| SecretsError::KeyFile { path: path.display().to_string(), error: e.to_string() };
    let key = ChaCha20Poly1305::generate_key(&mut OsRng);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(fail)?;
    writeln!(file, "{}", base64::engine::general_purpose::STANDARD.encode(key)).map_err(fail)?;
    file.sync_all().map_err(fail)
}

fn encrypt(key: &Key, plain: &[u8]) -> Result<Vec<u8>, SecretsError> {
    let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
    let sealed = ChaCha20Poly1305::new(key).encrypt(&nonce, plain).map_err(|_| SecretsError::Damaged(key_id(key)))?;
    Ok([nonce.as_slice(), &sealed].concat())
}

fn decrypt(key: &Key, sealed: &[u8]) -> Result<Vec<u8>, SecretsError> {
    let damaged = || SecretsError::Damaged(key_id(key));
    if sealed.len() < NONCE_BYTES {
        return Err(damaged());
    }
    let (nonce, data) = sealed.split_at(NONCE_BYTES);
    ChaCha20Poly1305::new(key).decrypt(Nonce::from_slice(nonce), data).map_err(|_| damaged())
}

fn secrets_of(spec: &mut JobSpec) -> Option<&mut HashMap<String, String>> {
    match spec.kind.as_mut() {
        Some(job_spec::Kind::Browser(b)) if !b.secrets.is_empty() => Some(&mut b.secrets),
        _ => None,
    }
}

impl Keyring {
    /// The key that seals (`current`) and keys that only open (`old`).
    pub fn load(current: Option<&Path>, old: &[impl AsRef<Path>]) -> Result<Self, SecretsError> {
        let mut ring = Keyring::default();
        for path in old {
            let key = read_key(path.as_ref())?;
            ring.keys.insert(key_id(&key), key);
        }
        if let Some(path) = current {
            let key = read_key(path)?;
            let id = key_id(&key);
            ring.keys.insert(id.clone(), key);
            ring.current = Some(id);
        }
        Ok(ring)
    }

    /// The id of the key that seals, if any.
    pub fn current_id(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// Takes the spec's secrets out (leaving [`MASK`] in their place) and seals them; none
    /// when the spec has none.
    pub fn seal(&self, spec: &mut JobSpec) -> Result<Option<SealedSecrets>, SecretsError> {
        let Some(secrets) = secrets_of(spec) else { return Ok(None) };
        let (id, master) = match &self.current {
            Some(id) => (id.clone(), &self.keys[id]),
            None => return Err(SecretsError::NoKey),
        };
        let values: HashMap<String, String> =
            secrets.iter_mut().map(|(k, v)| (k.clone(), std::mem::replace(v, MASK.to_string()))).collect();
        let data_key = ChaCha20Poly1305::generate_key(&mut OsRng);
        Ok(Some(SealedSecrets {
            key_id: id,
            wrapped_key: encrypt(master, data_key.as_slice())?,
            sealed: encrypt(&data_key, &Secrets { values }.encode_to_vec())?,
        }))
    }

    /// The sealed values.
    pub fn open(&self, sealed: &SealedSecrets) -> Result<HashMap<String, String>, SecretsError> {
        let master = self.keys.get(&sealed.key_id).ok_or_else(|| SecretsError::UnknownKey(sealed.key_id.clone()))?;
        let data_key = decrypt(master, &sealed.wrapped_key)?;
        if data_key.len() != 32 {
            return Err(SecretsError::Damaged(sealed.key_id.clone()));
        }
        let plain = decrypt(Key::from_slice(&data_key), &sealed.sealed)?;
        Secrets::decode(plain.as_slice()).map(|s| s.values).map_err(|_| SecretsError::Damaged(sealed.key_id.clone()))
    }

    /// Puts the sealed values back into the spec (for the agent that runs the attempt).
    pub fn unseal_into(&self, spec: &mut JobSpec, sealed: &SealedSecrets) -> Result<(), SecretsError> {
        let values = self.open(sealed)?;
        if let Some(secrets) = secrets_of(spec) {
            for (name, value) in values {
                secrets.insert(name, value);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::v1::BrowserSpec;

    fn spec_with_password(password: &str) -> JobSpec {
        let browser =
            BrowserSpec { secrets: [("password".to_string(), password.to_string())].into(), ..Default::default() };
        JobSpec { kind: Some(job_spec::Kind::Browser(browser)), ..Default::default() }
    }

    fn password_of(spec: &JobSpec) -> &str {
        match &spec.kind {
            Some(job_spec::Kind::Browser(b)) => &b.secrets["password"],
            _ => panic!("not a browser spec"),
        }
    }

    fn ring_in(dir: &Path, name: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        generate_key_file(&path).unwrap();
        path
    }

    #[test]
    fn sealing_masks_the_spec_and_only_the_key_opens_it() {
        let dir = std::env::temp_dir().join(format!("baton-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (old_path, new_path) = (ring_in(&dir, "old.key"), ring_in(&dir, "new.key"));
        let old = Keyring::load(Some(&old_path), &[] as &[&Path]).unwrap();
        let mut spec = spec_with_password("hunter2");
        let sealed = old.seal(&mut spec).unwrap().expect("sealed");
        assert_eq!(password_of(&spec), MASK);
        let bytes = sealed.encode_to_vec();
        assert!(!bytes.windows(7).any(|w| w == b"hunter2"), "the value is not in the sealed bytes");
        old.unseal_into(&mut spec, &sealed).unwrap();
        assert_eq!(password_of(&spec), "hunter2");

        // Rotated: the new key seals, the old one still opens; without it, a clear error.
        let rotated = Keyring::load(Some(&new_path), &[&old_path]).unwrap();
        assert_eq!(rotated.open(&sealed).unwrap()["password"], "hunter2");
        assert_ne!(rotated.current_id(), old.current_id());
        let new_only = Keyring::load(Some(&new_path), &[] as &[&Path]).unwrap();
        assert!(matches!(new_only.open(&sealed), Err(SecretsError::UnknownKey(_))));

        // Tampering is detected; no key, no sealing; a spec without secrets needs none.
        let mut tampered = sealed.clone();
        tampered.sealed[NONCE_BYTES] ^= 1;
        assert!(matches!(old.open(&tampered), Err(SecretsError::Damaged(_))));
        assert!(matches!(Keyring::default().seal(&mut spec_with_password("x")), Err(SecretsError::NoKey)));
        assert!(Keyring::default().seal(&mut JobSpec::default()).unwrap().is_none());
        assert!(generate_key_file(&old_path).is_err(), "an existing key file is never overwritten");
        std::fs::write(dir.join("short.key"), "c2hvcnQ=\n").unwrap();
        let short = Keyring::load(Some(&dir.join("short.key")), &[] as &[&Path]).unwrap_err().to_string();
        assert!(short.ends_with("holds 5 bytes; a secrets key is 32 random bytes, base64"), "{short}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
