//! Which files a job may read: only under the folders the agent was started with
//! (`--data-root`), after following every symlink and `..`; regular files only (no
//! devices, no FIFOs), text files up to [`MAX_TEXT_FILE_BYTES`]. An agent given no root
//! reads no files for jobs.

use std::io::Read as _;
use std::path::{Path, PathBuf};

/// The largest `textFile` a training job may read.
pub const MAX_TEXT_FILE_BYTES: u64 = 64 << 20;

/// The folders jobs may read under, resolved at agent start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataRoots(Vec<PathBuf>);

impl DataRoots {
    /// Resolves each root (it must exist).
    pub fn new(roots: &[PathBuf]) -> std::io::Result<Self> {
        roots
            .iter()
            .map(|r| {
                r.canonicalize().map_err(|e| std::io::Error::new(e.kind(), format!("--data-root {}: {e}", r.display())))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// The resolved path, when it lies under a root; else why not.
    pub fn resolve(&self, path: &str) -> Result<PathBuf, String> {
        if self.0.is_empty() {
            return Err("this agent reads no files for jobs: start it with --data-root DIR".into());
        }
        // One answer for "absent" and "outside": a job learns nothing of what lies outside.
        let roots: Vec<String> = self.0.iter().map(|r| r.display().to_string()).collect();
        let refused = || format!("is not under this agent's data roots ({}), or does not exist", roots.join(", "));
        let resolved = Path::new(path).canonicalize().map_err(|_| refused())?;
        if !self.0.iter().any(|root| resolved.starts_with(root)) {
            return Err(refused());
        }
        Ok(resolved)
    }

    /// A regular file under a root.
    pub fn file(&self, path: &str) -> Result<PathBuf, String> {
        let resolved = self.resolve(path)?;
        let meta = std::fs::metadata(&resolved).map_err(|e| format!("cannot be read: {e}"))?;
        if !meta.is_file() {
            return Err("is not a regular file".into());
        }
        Ok(resolved)
    }

    /// A folder under a root, whose files `names` (where they exist) resolve under a root too.
    pub fn folder(&self, path: &str, names: &[&str]) -> Result<PathBuf, String> {
        let resolved = self.resolve(path)?;
        if !resolved.is_dir() {
            return Err("is not a folder".into());
        }
        for name in names {
            let inside = resolved.join(name);
            if inside.exists() {
                self.file(&inside.to_string_lossy()).map_err(|e| format!("{name} {e}"))?;
            }
        }
        Ok(resolved)
    }

    /// A text file under a root, at most [`MAX_TEXT_FILE_BYTES`], read in 1 MiB pieces:
    /// `None` as soon as `stopped()` says so (the job was cancelled or timed out).
    pub fn read_text(&self, path: &str, stopped: impl Fn() -> bool) -> Result<Option<String>, String> {
        let file = self.file(path)?;
        let mut file = std::fs::File::open(&file).map_err(|e| format!("cannot be read: {e}"))?;
        let (mut bytes, mut piece) = (Vec::new(), vec![0u8; 1 << 20]);
        loop {
            if stopped() {
                return Ok(None);
            }
            let n = file.read(&mut piece).map_err(|e| format!("cannot be read: {e}"))?;
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&piece[..n]);
            if bytes.len() as u64 > MAX_TEXT_FILE_BYTES {
                return Err(format!("is larger than {} MiB", MAX_TEXT_FILE_BYTES >> 20));
            }
        }
        String::from_utf8(bytes).map(Some).map_err(|_| "is not UTF-8 text".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_under_a_root_are_read() {
        let base = std::env::temp_dir().join(format!("baton-roots-{}", std::process::id()));
        let (root, outside) = (base.join("root"), base.join("outside"));
        std::fs::create_dir_all(root.join("ckpt")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("text.txt"), "hello").unwrap();
        std::fs::write(outside.join("secret.txt"), "no").unwrap();
        std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("link.txt")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("ckpt/config.json")).unwrap();
        let roots = DataRoots::new(std::slice::from_ref(&root)).unwrap();
        let at = |p: &Path| p.to_string_lossy().into_owned();

        assert_eq!(roots.read_text(&at(&root.join("text.txt")), || false).unwrap().as_deref(), Some("hello"));
        // A cancel stops the read.
        assert_eq!(roots.read_text(&at(&root.join("text.txt")), || true).unwrap(), None);
        let escaped = roots.read_text(&at(&root.join("../outside/secret.txt")), || false).unwrap_err();
        assert!(escaped.starts_with("is not under this agent's data roots"), "{escaped}");
        assert!(roots.read_text(&at(&root.join("link.txt")), || false).unwrap_err().starts_with("is not under"));
        let absent = roots.file(&at(&root.join("absent.txt"))).unwrap_err();
        assert_eq!(roots.file("/dev/zero").unwrap_err(), absent, "outside and absent read the same");
        let devices = DataRoots::new(&[PathBuf::from("/dev")]).unwrap();
        assert_eq!(devices.read_text("/dev/zero", || false).unwrap_err(), "is not a regular file");
        let folder = roots.folder(&at(&root.join("ckpt")), &["config.json"]).unwrap_err();
        assert!(folder.starts_with("config.json is not under"), "{folder}");
        assert_eq!(
            DataRoots::default().read_text(&at(&root.join("text.txt")), || false).unwrap_err(),
            "this agent reads no files for jobs: start it with --data-root DIR"
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
