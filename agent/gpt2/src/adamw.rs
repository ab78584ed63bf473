//! Gradient clipping and AdamW.
//!
//! AdamW computes exactly what `torch.optim.AdamW` computes (decoupled weight decay,
//! bias-corrected moments). On the CPU with fp32 weights it runs fused, on all the job's
//! threads: one pass reads the gradients for the global norm, then one pass over each
//! parameter reads weight, gradient and both moments once and writes them once, with the
//! clipping factor folded in — where eager PyTorch makes about ten passes.
//! Elsewhere (CUDA) it runs as tensor operations under `no_grad`.

use crate::Gpt2Error;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tch::{Device, Kind, Tensor};

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
            decays: params.iter().map(|p| p.dim() >= 2).collect(),
            threads: threads.max(1),
        }
    }

    /// Clips the gradients to a global norm of `max_norm` (0: no clipping) and takes one
    /// AdamW step. Returns the global gradient norm before clipping.
    pub fn step(&mut self, params: &[&Tensor], grads: &[Tensor], max_norm: f64) -> Result<f64, Gpt2Error> {
        self.step_on(params, grads, max_norm, true)
    }

    fn step_on(
        &mut self,
        params: &[&Tensor],
        grads: &[Tensor],
        max_norm: f64,
        allow_fused: bool,
    ) -> Result<f64, Gpt2Error> {
        if params.len() != grads.len() {
            return Err(Gpt2Error::Torch(format!("{} gradients for {} parameters", grads.len(), params.len())));
        }
        let fusable = allow_fused
            && params.iter().zip(grads).all(|(p, g)| {
                p.device() == Device::Cpu && p.kind() == Kind::Float && g.kind() == Kind::Float && p.is_contiguous()
            });
        let fused = fusable.then(|| FusedPass::new(params, grads, &self.exp_avg, &self.exp_avg_sq));
        let total_norm = match &fused {
            Some(pass) => pass.grad_norm(self.threads),
            None => {
                let norms: Vec<Tensor> = grads.iter().map(|g| g.to_kind(Kind::Float).norm()).collect();
                Tensor::stack(&norms, 0).norm().f_double_value(&[])?
            }
        };
        // torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6), at most 1.
        let grad_scale = if max_norm > 0.0 { (max_norm / (total_norm + 1e-6)).min(1.0) } else { 1.0 };
        self.step += 1;
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
        match &fused {
            Some(pass) => {
                let decays: Vec<f32> = (0..params.len()).map(|i| self.decay_factor(i) as f32).collect();
                pass.update(self.threads, &decays, k);
            }
            None => self.tensor_step(params, grads, grad_scale, k),
        }
        Ok(total_norm)
    }

    fn decay_factor(&self, i: usize) -> f64 {
        if self.decays[i] { 1.0 - self.config.lr * self.config.weight_decay } else { 1.0 }
    }

    fn tensor_step(&mut self, params: &[&Tensor], grads: &[Tensor], grad_scale: f64, k: Coefficients) {
        let (beta1, beta2) = (self.config.beta1, self.config.beta2);
        tch::no_grad(|| {
            for (i, (p, g)) in params.iter().zip(grads).enumerate() {
                let g = if grad_scale < 1.0 { g * grad_scale } else { g.shallow_clone() };
                let (mut p, mut m, mut v) =
                    (p.shallow_clone(), self.exp_avg[i].shallow_clone(), self.exp_avg_sq[i].shallow_clone());
                let decay = self.decay_factor(i);
                if decay != 1.0 {
                    p *= decay;
                }
                let _ = m.lerp_(&g, 1.0 - beta1);
                v *= beta2;
                v += &g * &g * (1.0 - beta2);
                let denom = v.sqrt() * f64::from(k.inv_bias_correction2_sqrt) + f64::from(k.eps);
                p -= (&m / denom) * f64::from(k.step_size);
            }
        });
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

    /// The fused pass agrees with the tensor path (torch's formula spelled out in tensor
    /// operations) over several steps with clipping and weight decay.
    #[test]
    fn fused_matches_tensor_ops() {
        tch::manual_seed(0);
        let config = AdamWConfig { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
        let a =
            [Tensor::randn([70_000], (Kind::Float, Device::Cpu)), Tensor::randn([30, 40], (Kind::Float, Device::Cpu))];
        let b: Vec<Tensor> = a.iter().map(|t| t.copy()).collect();
        let (pa, pb): (Vec<&Tensor>, Vec<&Tensor>) = (a.iter().collect(), b.iter().collect());
        let mut fused = AdamW::new(&pa, config, 2);
        let mut plain = AdamW::new(&pb, config, 1);
        for _ in 0..3 {
            let grads: Vec<Tensor> = a.iter().map(|t| t.randn_like() * 3.0).collect();
            let n1 = fused.step(&pa, &grads, 1.0).unwrap();
            let n2 = plain.step_on(&pb, &grads, 1.0, false).unwrap();
            assert!((n1 - n2).abs() < 1e-6 * n2, "norms {n1} and {n2}");
            assert!(n1 > 1.0, "the gradients are clipped");
        }
        for (x, y) in a.iter().zip(&b) {
            let diff = (x - y).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "diff {diff}");
        }
    }
}
