//! What this machine offers, read once at start.

use baton_proto::v1::Capabilities;

/// CPU cores this process may use (cgroup and affinity aware).
pub fn cpu_cores() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
}

/// Memory available for new work, from /proc/meminfo (0 when unknown).
pub fn memory_available_bytes() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else { return 0 };
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// What every agent has, over what its engines found (CUDA devices, browsers, display).
pub fn capabilities(job_kinds: Vec<String>, engines: Capabilities) -> Capabilities {
    Capabilities {
        hostname: baton_proto::telemetry::hostname(),
        cpu_cores: cpu_cores(),
        memory_bytes: memory_available_bytes(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        job_kinds,
        ..engines
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn probes_this_machine() {
        assert!(super::cpu_cores() >= 1);
        assert!(super::memory_available_bytes() > 0);
    }
}
