//! Finding programs and making sure the processes we started are gone.

use std::path::{Path, PathBuf};

/// The first of `names` found on PATH.
pub(crate) fn find_on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().flat_map(|n| std::env::split_paths(&path).map(move |dir| dir.join(n))).find(|p| p.is_file())
}

/// SIGKILLs a whole process group (a driver started with `process_group(0)` and the
/// browsers it launched). A group that is already gone is fine.
pub(crate) fn kill_group(group: u32) {
    let Ok(group) = i32::try_from(group) else {
        return;
    };
    if group <= 1 {
        return;
    }
    // SAFETY: kill(2) takes plain integers and has no memory effects; a negative pid
    // addresses the process group we created.
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
}

/// SIGKILLs every process whose command line mentions `marker` (a browser profile
/// directory unique to one session), so a browser orphaned by a dead driver is not left.
/// Returns how many were signalled.
pub(crate) fn kill_processes_mentioning(marker: &Path) -> usize {
    let marker = marker.to_string_lossy();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid as u32 == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(marker.as_ref()) {
            // SAFETY: as in kill_group; the pid was just read from /proc.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            killed += 1;
        }
    }
    killed
}
