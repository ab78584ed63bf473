//! What this machine offers GPT-2 jobs, and the device a job runs on.

use crate::Gpt2Error;
use baton_proto::v1::CudaDevice;
use std::sync::OnceLock;
use tch::{Cuda, Device};

/// What this machine offers GPT-2 jobs; the agent advertises it and passes it to jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpt2Capabilities {
    pub cuda_devices: Vec<CudaDevice>,
    /// Threads libtorch uses by default (one per physical core).
    pub torch_threads: u32,
    /// Memory available for jobs when probed (MemAvailable).
    pub memory_bytes: u64,
    /// Where jobs may read files (checkpoints, text files); none unless the agent is given
    /// `--data-root`.
    pub data_roots: crate::files::DataRoots,
}

/// Probes CUDA devices (loading libtorch_cuda first when an NVIDIA driver is present),
/// libtorch's default thread count and available memory. Called once at agent start,
/// after [`configure_memory`].
pub fn probe() -> Gpt2Capabilities {
    Gpt2Capabilities {
        cuda_devices: cuda_devices(),
        torch_threads: u32::try_from(tch::get_num_threads()).unwrap_or(1).max(1),
        memory_bytes: available_memory_bytes(),
        data_roots: Default::default(),
    }
}

/// Sets up memory for tensor work; call it first thing in `main`. Two settings:
///
/// - libtorch's CPU allocator puts tensors of 2 MiB and more on transparent huge pages
///   (`THP_MEM_ALLOC_ENABLE=1`: 2 MiB alignment and `madvise(MADV_HUGEPAGE)`), unless the
///   environment already says either way. Generation streams all ~0.5 GB of GPT-2 124M's
///   weights per token and training walks GBs of activations and gradients; with 4 KiB
///   pages a TLB entry covers only 4 KiB of that. Measured on a 2-core VM (fp32, 2 threads,
///   median of 6 runs): train step 4×128 p50 2357 → 2063 ms.
/// - glibc keeps freed memory for reuse instead of handing it back to the kernel at once
///   (no `mmap` for large blocks, no trimming, one arena so the job's thread and the main
///   thread share it). Otherwise every training step maps its ~0.5 GB of fresh gradients
///   (and larger activations) anew and the kernel zeroes each page on first touch: 95 ms
///   of system time per 1×128 step on that VM, 26 ms with the memory kept. [`release_memory`]
///   hands it back after a job.
///
/// Results are unchanged (same kernels, same memory contents).
///
/// # Safety
/// It sets an environment variable (libtorch reads it once, at its first CPU allocation):
/// call it while the process has one thread, before any runtime starts or tensor is made.
pub unsafe fn configure_memory() {
    const VAR: &str = "THP_MEM_ALLOC_ENABLE";
    if std::env::var_os(VAR).is_none() {
        // SAFETY: the caller guarantees the process is still single-threaded.
        unsafe { std::env::set_var(VAR, "1") };
    }
    // SAFETY: mallopt only changes glibc's allocator parameters; -1 disables trimming.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
    }
}

/// Hands the memory a finished job freed back to the kernel (see [`configure_memory`]).
pub fn release_memory() {
    // SAFETY: malloc_trim only walks glibc's free lists and madvises unused pages away.
    unsafe { libc::malloc_trim(0) };
}

/// `--as-needed` drops libtorch_cuda from the link, so `Cuda::is_available()` stays false
/// even on a GPU machine; loading it at run time registers the CUDA backend. Skipped
/// without an NVIDIA driver, which saves ~350 MB of start-up memory on CPU machines.
/// Returns whether CUDA is usable.
pub fn load_cuda() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        let driver = std::path::Path::new("/proc/driver/nvidia/version").exists()
            || std::path::Path::new("/dev/nvidiactl").exists();
        if driver {
            // SAFETY: dlopen with a valid NUL-terminated name; the handle is kept for the
            // life of the process on purpose (the CUDA backend registers itself on load).
            let handle = unsafe { libc::dlopen(c"libtorch_cuda.so".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if handle.is_null() {
                tracing::warn!("NVIDIA driver present but libtorch_cuda.so could not be loaded; CUDA is off");
            }
        }
        Cuda::is_available()
    })
}

fn cuda_devices() -> Vec<CudaDevice> {
    if !load_cuda() {
        return Vec::new();
    }
    let count = usize::try_from(Cuda::device_count()).unwrap_or(0);
    let smi = nvidia_smi();
    (0..count)
        .map(|i| {
            let (name, memory_bytes) = smi.get(i).cloned().unwrap_or_else(|| (format!("CUDA device {i}"), 0));
            CudaDevice { index: i as u32, name, memory_bytes }
        })
        .collect()
}

/// Names and memory of the GPUs, from nvidia-smi (libtorch's C API does not expose them).
fn nvidia_smi() -> Vec<(String, u64)> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name,memory.total", "--format=csv,noheader,nounits"])
        .output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (name, mib) = l.rsplit_once(',')?;
            Some((name.trim().to_string(), mib.trim().parse::<u64>().ok()? << 20))
        })
        .collect()
}

/// MemAvailable from /proc/meminfo, in bytes (0 when unreadable).
pub fn available_memory_bytes() -> u64 {
    proc_field("/proc/meminfo", "MemAvailable:").unwrap_or(0)
}

/// A `Name:   123 kB` field of a /proc file, in bytes.
fn proc_field(path: &str, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kb: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Resets the process's peak RSS so a job's peak is its own (Linux 4.0+).
fn reset_peak_rss() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        tracing::debug!(error = %e, "could not reset peak RSS");
    }
}

/// The process's peak RSS (VmHWM) in bytes.
fn peak_rss_bytes() -> u64 {
    proc_field("/proc/self/status", "VmHWM:").unwrap_or(0)
}

/// The device a job runs on, and its name for reports.
#[derive(Debug, Clone)]
pub struct JobDevice {
    pub device: Device,
    /// `cpu` or `cuda:N`.
    pub label: String,
    /// The CPU model or the GPU's name.
    pub name: String,
    /// What a memory estimate is checked against.
    pub memory_bytes: u64,
}

impl JobDevice {
    /// Waits for queued kernels so a phase's time is the kernels', not the launches'.
    pub fn synchronize(&self) {
        if let Device::Cuda(i) = self.device {
            Cuda::synchronize(i as i64);
        }
    }

    pub fn is_cuda(&self) -> bool {
        matches!(self.device, Device::Cuda(_))
    }

    /// Starts measuring the job's peak memory (call at job start, before the model exists).
    pub fn reset_peak_memory(&self) {
        match self.device {
            Device::Cuda(i) => {
                if !crate::cuda::reset_peak(i) {
                    tracing::warn!(device = %self.label, "could not reset the CUDA allocator's peak");
                }
            }
            _ => reset_peak_rss(),
        }
    }

    /// The job's peak memory since [`JobDevice::reset_peak_memory`], and what it measures.
    pub fn peak_memory(&self) -> (u64, String) {
        match self.device {
            Device::Cuda(i) => match crate::cuda::peak_allocated_bytes(i) {
                Some(bytes) => {
                    (bytes, "libtorch's CUDA caching allocator: peak bytes allocated (reset at job start)".into())
                }
                None => (0, "not measured: libtorch's CUDA allocator statistics were not available".into()),
            },
            _ => (peak_rss_bytes(), "process peak RSS (VmHWM, reset at job start)".into()),
        }
    }

    /// A CUDA event at this point of the device's queue (None on the CPU).
    pub fn event(&self) -> Option<crate::cuda::Event> {
        match self.device {
            Device::Cuda(i) => crate::cuda::Event::record(i),
            _ => None,
        }
    }

    /// A phase boundary: a CUDA event at this point of the queue, then
    /// [`JobDevice::synchronize`].
    pub fn boundary(&self) -> Option<crate::cuda::Event> {
        let event = self.event();
        self.synchronize();
        event
    }
}

/// Picks the device a spec asks for (`auto`, `cpu`, `cuda`, `cuda:N`) on this agent.
pub fn resolve(requested: &str, caps: &Gpt2Capabilities) -> Result<JobDevice, Gpt2Error> {
    let cuda_index = match requested {
        "" | "auto" => (!caps.cuda_devices.is_empty() && load_cuda()).then_some(0),
        "cpu" => None,
        "cuda" => Some(0),
        other => Some(
            other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| baton_proto::spec::SpecError::new("device", format!("unknown device {other:?}")))?,
        ),
    };
    let Some(index) = cuda_index else {
        let cpu = cpu_info();
        return Ok(JobDevice {
            device: Device::Cpu,
            label: "cpu".into(),
            name: cpu.model,
            memory_bytes: caps.memory_bytes,
        });
    };
    if caps.cuda_devices.is_empty() || !load_cuda() {
        return Err(Gpt2Error::NoCuda { requested: requested.to_string() });
    }
    let Some(dev) = caps.cuda_devices.iter().find(|d| d.index as usize == index) else {
        return Err(Gpt2Error::NoSuchCudaDevice { requested: requested.to_string(), count: caps.cuda_devices.len() });
    };
    Ok(JobDevice {
        device: Device::Cuda(index),
        label: format!("cuda:{index}"),
        name: dev.name.clone(),
        memory_bytes: dev.memory_bytes,
    })
}

/// What /proc/cpuinfo says about the CPU.
#[derive(Debug, Clone)]
pub struct CpuInfo {
    pub model: String,
    pub cores: u32,
    pub mhz: f64,
    /// fp32 FLOP per cycle per core from the widest FMA the CPU has (2 FMA units assumed).
    pub fp32_flop_per_cycle: f64,
    pub simd: &'static str,
}

pub fn cpu_info() -> CpuInfo {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string())
    };
    let flags = field("flags").unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let (fp32_flop_per_cycle, simd) = if has("avx512f") {
        (64.0, "AVX-512 FMA: 2 units x 16 lanes x 2")
    } else if has("avx2") && has("fma") {
        (32.0, "AVX2 FMA: 2 units x 8 lanes x 2")
    } else {
        (8.0, "SSE: 4 lanes x 2")
    };
    CpuInfo {
        model: field("model name").unwrap_or_else(|| "unknown CPU".into()),
        cores: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
        mhz: field("cpu MHz").and_then(|v| v.parse().ok()).unwrap_or(0.0),
        fp32_flop_per_cycle,
        simd,
    }
}

/// Peak FLOP/s of the device for a dtype, and where the number comes from.
pub fn peak_flops(device: &JobDevice, threads: u32, bf16: bool) -> (f64, String) {
    if device.is_cuda() {
        // Dense (no sparsity) tensor-core peaks from NVIDIA's datasheets (SXM parts).
        let table: [(&str, f64, f64); 4] =
            [("H200", 989.4e12, 67e12), ("H100", 989.4e12, 67e12), ("A100", 312e12, 19.5e12), ("L4", 121e12, 30.3e12)];
        return match table.iter().find(|(n, ..)| device.name.contains(n)) {
            Some((n, bf, _)) if bf16 => (*bf, format!("NVIDIA {n} datasheet: dense BF16 tensor-core peak")),
            Some((n, _, fp)) => (*fp, format!("NVIDIA {n} datasheet: FP32 (non-tensor-core) peak")),
            None => (0.0, format!("no peak known for {}; set peakFlops in the spec", device.name)),
        };
    }
    let cpu = cpu_info();
    if cpu.mhz <= 0.0 {
        return (0.0, "CPU frequency unknown; set peakFlops in the spec".into());
    }
    let peak = f64::from(threads) * cpu.mhz * 1e6 * cpu.fp32_flop_per_cycle;
    let source = format!(
        "{threads} threads x {:.2} GHz (cpu MHz, /proc/cpuinfo) x {} fp32 FLOP/cycle ({}); \
         an upper bound that ignores turbo and AVX down-clocking; set peakFlops to override",
        cpu.mhz / 1000.0,
        cpu.fp32_flop_per_cycle,
        cpu.simd
    );
    (peak, source)
}
