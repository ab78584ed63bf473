//! Gradient clipping and AdamW.
//!
//! AdamW computes exactly what `torch.optim.AdamW` computes (decoupled weight decay,
//! bias-corrected moments). On the CPU with fp32 weights it runs fused, on all the job's
//! threads: one pass reads the gradients for the global norm, then one pass over each
//! parameter reads weight, gradient and both moments once and writes them once, with the
//! clipping factor folded in — where eager PyTorch makes about ten passes.
//! Elsewhere (CUDA) it runs what `clip_grad_norm_(foreach=True)` and
//! `torch.optim.AdamW(fused=True)` run — libtorch's multi-tensor kernels, through
//! cpp/libtorch.cpp: a handful of launches per step and no wait for the device, where a
//! loop of tensor operations would launch ~10 kernels per parameter.

use crate::Gpt2Error;
use std::ffi::c_char;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

unsafe extern "C" {
    fn baton_clip_grad_norm(
        grads: *const *const C_tensor,
        n: usize,
        max_norm: f64,
        error: *mut c_char,
        error_len: usize,
    ) -> i32;
    fn baton_fused_adamw(
        params: *const *const C_tensor,
        grads: *const *const C_tensor,
        exp_avgs: *const *const C_tensor,
        exp_avg_sqs: *const *const C_tensor,
        steps: *const *const C_tensor,
        n: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        error: *mut c_char,
        error_len: usize,
    ) -> i32;
}

/// Calls one of cpp/libtorch.cpp's functions with a buffer for its error message.
fn libtorch_call(what: &str, call: impl FnOnce(*mut c_char, usize) -> i32) -> Result<(), Gpt2Error> {
    let mut error = [0u8; 512];
    if call(error.as_mut_ptr().cast(), error.len()) == 0 {
        return Ok(());
    }
    let message = std::ffi::CStr::from_bytes_until_nul(&error).map(|m| m.to_string_lossy()).unwrap_or_default();
    Err(Gpt2Error::Torch(format!("{what}: {}", message.lines().next().unwrap_or_default())))
}

fn pointers<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) -> Vec<*const C_tensor> {
    tensors.into_iter().map(Tensor::as_ptr).collect()
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

pub struct AdamW {
    config: AdamWConfig,
    step: i32,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// libtorch's fused AdamW counts steps per parameter, on the parameter's device.
    steps: Vec<Tensor>,
    /// Weight decay applies to matrices and embeddings, not to biases and LayerNorms.
    decays: Vec<bool>,
    threads: usize,
}

/// Per-step constants of the update, in the parameters' precision.
#[derive(Clone, Copy)]
struct Coefficients {
    grad_scale: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    inv_bias_correction2_sqrt: f32,
    eps: f32,
    step_size: f32,
}

impl AdamW {
    /// Zeroed moments for `params`; the fused CPU pass runs on `threads` threads.
    pub fn new(params: &[&Tensor], config: AdamWConfig, threads: usize) -> Self {
        Self {
            config,
            step: 0,
            exp_avg: params.iter().map(|p| p.zeros_like()).collect(),
            exp_avg_sq: params.iter().map(|p| p.zeros_like()).collect(),
            steps: params.iter().map(|p| Tensor::zeros([], (Kind::Float, p.device()))).collect(),
            decays: params.iter().map(|p| p.dim() >= 2).collect(),
            threads: threads.max(1),
        }
    }

    /// Clips the gradients to a global norm of `max_norm` (0: no clipping) and takes one
    /// AdamW step. Gradients may be scaled in place.
    pub fn step(&mut self, params: &[&Tensor], grads: &[Tensor], max_norm: f64) -> Result<(), Gpt2Error> {
        self.step_on(params, grads, max_norm, true)
    }

    fn step_on(
        &mut self,
        params: &[&Tensor],
        grads: &[Tensor],
        max_norm: f64,
        allow_fused_cpu: bool,
    ) -> Result<(), Gpt2Error> {
        if params.len() != grads.len() {
            return Err(Gpt2Error::Torch(format!("{} gradients for {} parameters", grads.len(), params.len())));
        }
        self.step += 1;
        let fusable = allow_fused_cpu
            && params.iter().zip(grads).all(|(p, g)| {
                p.device() == Device::Cpu && p.kind() == Kind::Float && g.kind() == Kind::Float && p.is_contiguous()
            });
        if !fusable {
            return self.libtorch_step(params, grads, max_norm);
        }
        let pass = FusedPass::new(params, grads, &self.exp_avg, &self.exp_avg_sq);
        let total_norm = pass.grad_norm(self.threads);
        // torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6), at most 1.
        let grad_scale = if max_norm > 0.0 { (max_norm / (total_norm + 1e-6)).min(1.0) } else { 1.0 };
        let c = &self.config;
        let bias_correction1 = 1.0 - c.beta1.powi(self.step);
        let bias_correction2 = 1.0 - c.beta2.powi(self.step);
        let k = Coefficients {
            grad_scale: grad_scale as f32,
            one_minus_beta1: (1.0 - c.beta1) as f32,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            inv_bias_correction2_sqrt: (1.0 / bias_correction2.sqrt()) as f32,
            eps: c.eps as f32,
            step_size: (c.lr / bias_correction1) as f32,
        };
        let decays: Vec<f32> = (0..params.len()).map(|i| self.decay_factor(i) as f32).collect();
        pass.update(self.threads, &decays, k);
        Ok(())
    }

    /// libtorch's foreach clip and fused AdamW, one call per weight-decay group.
    fn libtorch_step(&mut self, params: &[&Tensor], grads: &[Tensor], max_norm: f64) -> Result<(), Gpt2Error> {
        if max_norm > 0.0 {
            let g = pointers(grads);
            // SAFETY: `g` points at live tensors for the whole call; errors come back as text.
            libtorch_call("clipping gradients", |error, len| unsafe {
                baton_clip_grad_norm(g.as_ptr(), g.len(), max_norm, error, len)
            })?;
        }
        let c = self.config;
        for decay in [true, false] {
            let group: Vec<usize> = (0..params.len()).filter(|&i| self.decays[i] == decay).collect();
            if group.is_empty() {
                continue;
            }
            let p = pointers(group.iter().map(|&i| params[i]));
            let g = pointers(group.iter().map(|&i| &grads[i]));
            let m = pointers(group.iter().map(|&i| &self.exp_avg[i]));
            let v = pointers(group.iter().map(|&i| &self.exp_avg_sq[i]));
            let s = pointers(group.iter().map(|&i| &self.steps[i]));
            let weight_decay = if decay { c.weight_decay } else { 0.0 };
            // SAFETY: every pointer list holds `group.len()` live tensors for the whole call.
            libtorch_call("AdamW", |error, len| unsafe {
                baton_fused_adamw(
                    p.as_ptr(),
                    g.as_ptr(),
                    m.as_ptr(),
                    v.as_ptr(),
                    s.as_ptr(),
                    group.len(),
                    c.lr,
                    c.beta1,
                    c.beta2,
                    weight_decay,
                    c.eps,
                    error,
                    len,
                )
            })?;
        }
        Ok(())
    }

    fn decay_factor(&self, i: usize) -> f64 {
        if self.decays[i] { 1.0 - self.config.lr * self.config.weight_decay } else { 1.0 }
    }
}

/// The fused CPU passes over every parameter, cut into chunks that threads take in turn:
/// one reads the gradients for their global norm, one updates weights and moments.
struct FusedPass {
    slots: Vec<Slot>,
    /// (parameter, first element, length)
    chunks: Vec<(usize, usize, usize)>,
    /// Keeps any gradient that had to be made contiguous alive for the raw pointers.
    _grads: Vec<Tensor>,
}

/// Raw views of one parameter's tensors.
struct Slot {
    param: *mut f32,
    grad: *const f32,
    exp_avg: *mut f32,
    exp_avg_sq: *mut f32,
}

// SAFETY: the pointers are only dereferenced inside `FusedPass::run`'s thread scope, on
// disjoint chunks (see there).
unsafe impl Send for Slot {}
unsafe impl Sync for Slot {}

impl FusedPass {
    /// `params`, `grads` and both moments must be CPU fp32 tensors of matching sizes that
    /// outlive the pass (the caller and the optimizer hold them).
    fn new(params: &[&Tensor], grads: &[Tensor], exp_avg: &[Tensor], exp_avg_sq: &[Tensor]) -> Self {
        const CHUNK: usize = 1 << 15;
        // Gradients are normally contiguous already; copies keep the odd one alive here.
        let grads: Vec<Tensor> =
            grads.iter().map(|g| if g.is_contiguous() { g.shallow_clone() } else { g.contiguous() }).collect();
        let mut slots = Vec::with_capacity(params.len());
        let mut chunks = Vec::new();
        for (i, p) in params.iter().enumerate() {
            let n = p.numel();
            slots.push(Slot {
                param: p.data_ptr() as *mut f32,
                grad: grads[i].data_ptr() as *const f32,
                exp_avg: exp_avg[i].data_ptr() as *mut f32,
                exp_avg_sq: exp_avg_sq[i].data_ptr() as *mut f32,
            });
            chunks.extend((0..n).step_by(CHUNK).map(|start| (i, start, CHUNK.min(n - start))));
        }
        Self { slots, chunks, _grads: grads }
    }

    /// Runs `work(slot index, slot, start, len)` on every chunk, on `threads` threads.
    fn run(&self, threads: usize, work: impl Fn(usize, usize, &Slot, usize, usize) + Sync) {
        let next = AtomicUsize::new(0);
        // Only the raw views cross threads (the tensors themselves are not `Sync`).
        let (slots, chunks) = (&self.slots, &self.chunks);
        let take = || {
            loop {
                let c = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(i, start, len)) = chunks.get(c) else { break };
                work(c, i, &slots[i], start, len);
            }
        };
        std::thread::scope(|s| {
            for _ in 1..threads {
                s.spawn(take);
            }
            take();
        });
    }

    /// The global L2 norm of all gradients, summed in f64 in chunk order (so the same
    /// gradients always give the same norm, whichever thread took which chunk).
    fn grad_norm(&self, threads: usize) -> f64 {
        let sums: Vec<AtomicU64> = self.chunks.iter().map(|_| AtomicU64::new(0)).collect();
        self.run(threads, |c, _, slot, start, len| {
            // SAFETY: the grad pointer is valid for start+len elements (see `new`), and
            // this pass only reads.
            let g = unsafe { std::slice::from_raw_parts(slot.grad.add(start), len) };
            sums[c].store(sum_of_squares(g).to_bits(), Ordering::Relaxed);
        });
        sums.iter().map(|s| f64::from_bits(s.load(Ordering::Relaxed))).sum::<f64>().sqrt()
    }

    fn update(&self, threads: usize, decays: &[f32], k: Coefficients) {
        self.run(threads, |_, i, slot, start, len| {
            // SAFETY: each slot points at four distinct live CPU fp32 contiguous tensors
            // of at least start+len elements (see `new`); chunks never overlap, and no
            // other code touches these tensors until `run` has joined its threads.
            let (p, g, m, v) = unsafe {
                (
                    std::slice::from_raw_parts_mut(slot.param.add(start), len),
                    std::slice::from_raw_parts(slot.grad.add(start), len),
                    std::slice::from_raw_parts_mut(slot.exp_avg.add(start), len),
                    std::slice::from_raw_parts_mut(slot.exp_avg_sq.add(start), len),
                )
            };
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (checked just above).
                unsafe { update_avx2(p, g, m, v, decays[i], k) };
                return;
            }
            update(p, g, m, v, decays[i], k);
        });
    }
}

fn sum_of_squares(g: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { sum_of_squares_avx2(g) };
    }
    sum_of_squares_portable(g)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn sum_of_squares_avx2(g: &[f32]) -> f64 {
    sum_of_squares_portable(g)
}

/// In f64, over eight interleaved accumulators the compiler keeps in vector registers.
#[inline(always)]
fn sum_of_squares_portable(g: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let mut blocks = g.chunks_exact(8);
    for block in &mut blocks {
        for (a, &x) in acc.iter_mut().zip(block) {
            *a += f64::from(x) * f64::from(x);
        }
    }
    acc.iter().sum::<f64>() + blocks.remainder().iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn update_avx2(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], decay: f32, k: Coefficients) {
    update(p, g, m, v, decay, k)
}

/// One AdamW update of a chunk, as torch.optim.AdamW orders it:
/// p *= 1 - lr·wd; m = lerp(m, g, 1-β1); v = β2·v + (1-β2)·g²;
/// p -= lr/bc1 · m / (sqrt(v)/sqrt(bc2) + eps).
#[inline(always)]
fn update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], decay: f32, k: Coefficients) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = g * k.grad_scale;
        let mi = *m + k.one_minus_beta1 * (g - *m);
        let vi = k.beta2 * *v + k.one_minus_beta2 * g * g;
        *m = mi;
        *v = vi;
        let denom = vi.sqrt() * k.inv_bias_correction2_sqrt + k.eps;
        *p = *p * decay - k.step_size * mi / denom;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// torch.nn.utils.clip_grad_norm_ then torch.optim.AdamW's update, spelled out in
    /// tensor operations (decay on tensors of 2+ dimensions, as `AdamW::new` decides).
    struct Reference {
        m: Vec<Tensor>,
        v: Vec<Tensor>,
        step: i32,
    }

    impl Reference {
        fn new(params: &[Tensor]) -> Self {
            Self {
                m: params.iter().map(Tensor::zeros_like).collect(),
                v: params.iter().map(Tensor::zeros_like).collect(),
                step: 0,
            }
        }

        fn step(&mut self, params: &[Tensor], grads: &[Tensor], c: AdamWConfig, max_norm: f64) {
            self.step += 1;
            let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
            let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
            let scale = (max_norm / (total + 1e-6)).min(1.0);
            let (bc1, bc2) = (1.0 - c.beta1.powi(self.step), 1.0 - c.beta2.powi(self.step));
            tch::no_grad(|| {
                for (i, (p, g)) in params.iter().zip(grads).enumerate() {
                    let g = g * scale;
                    let mut p = p.shallow_clone();
                    if p.dim() >= 2 {
                        p *= 1.0 - c.lr * c.weight_decay;
                    }
                    self.m[i] = &self.m[i] * c.beta1 + &g * (1.0 - c.beta1);
                    self.v[i] = &self.v[i] * c.beta2 + &g * &g * (1.0 - c.beta2);
                    let denom = (&self.v[i] / bc2).sqrt() + c.eps;
                    p -= (&self.m[i] / denom) * (c.lr / bc1);
                }
            });
        }
    }

    /// Runs three steps through `AdamW` (the fused CPU pass, or libtorch's fused kernels
    /// when `fused_cpu` is false) and through the reference, on a vector (no decay) and a
    /// matrix (decay), with gradients large enough to be clipped, then small enough not to.
    fn agrees_with_reference(fused_cpu: bool) {
        tch::manual_seed(0);
        let config = AdamWConfig { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
        let a =
            [Tensor::randn([70_000], (Kind::Float, Device::Cpu)), Tensor::randn([30, 40], (Kind::Float, Device::Cpu))];
        let b: Vec<Tensor> = a.iter().map(|t| t.copy()).collect();
        let pa: Vec<&Tensor> = a.iter().collect();
        let mut adamw = AdamW::new(&pa, config, 2);
        let mut reference = Reference::new(&b);
        for scale in [100.0, 0.01, 3.0] {
            let grads: Vec<Tensor> = a.iter().map(|t| t.randn_like() * scale).collect();
            reference.step(&b, &grads, config, 1.0);
            let grads: Vec<Tensor> = grads.iter().map(Tensor::copy).collect();
            adamw.step_on(&pa, &grads, 1.0, fused_cpu).unwrap();
        }
        for (x, y) in a.iter().zip(&b) {
            let diff = (x - y).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "diff {diff}");
        }
    }

    #[test]
    fn fused_cpu_pass_matches_torch() {
        agrees_with_reference(true);
    }

    /// The path CUDA takes, run on the CPU (libtorch has both kernels).
    #[test]
    fn libtorch_fused_kernels_match_torch() {
        agrees_with_reference(false);
    }

    /// libtorch's refusal (integer gradients here) comes back as a one-line error naming the
    /// step, not a crash.
    #[test]
    fn a_libtorch_error_is_reported() {
        let config = AdamWConfig { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
        let p = [Tensor::zeros([4, 4], (Kind::Float, Device::Cpu))];
        let mut adamw = AdamW::new(&[&p[0]], config, 1);
        let wrong = [Tensor::ones([4, 4], (Kind::Int64, Device::Cpu))];
        for (max_norm, step) in [(1.0, "clipping gradients"), (0.0, "AdamW")] {
            let err = adamw.step_on(&[&p[0]], &wrong, max_norm, false).unwrap_err().to_string();
            assert!(err.starts_with(&format!("libtorch: {step}: ")) && !err.contains('\n'), "{err}");
        }
    }

    /// Clipping makes a difference in these tests: without it the result is another.
    #[test]
    fn the_reference_clips() {
        tch::manual_seed(0);
        let config = AdamWConfig { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
        let p = [Tensor::randn([1000], (Kind::Float, Device::Cpu))];
        let q: Vec<Tensor> = p.iter().map(Tensor::copy).collect();
        let (mut clipped, mut unclipped) = (Reference::new(&p), Reference::new(&q));
        for scale in [100.0, 0.01, 3.0] {
            let g = [p[0].randn_like() * scale];
            clipped.step(&p, &g, config, 1.0);
            unclipped.step(&q, &g, config, f64::INFINITY);
        }
        assert!((&p[0] - &q[0]).abs().max().double_value(&[]) > 1e-4);
    }
}
