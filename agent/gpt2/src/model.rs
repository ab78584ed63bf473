//! GPT-2 exactly as Hugging Face's `GPT2LMHeadModel` computes it: learned position
//! embeddings, pre-norm blocks, fused `c_attn`, tanh-GELU, causal attention through
//! `scaled_dot_product_attention`, and an lm_head tied to the token embedding.
//!
//! Weights keep Hugging Face's names and its Conv1D layout (`[in, out]`, applied as
//! `x @ w + b`), so a checkpoint loads without transposes.

use tch::{Device, Kind, Tensor};

/// A model's shape and dropout, in Hugging Face config.json's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpt2Config {
    pub n_layer: i64,
    pub n_head: i64,
    pub n_embd: i64,
    /// Width of the MLP's hidden layer (4 x n_embd unless the config says otherwise).
    pub n_inner: i64,
    pub n_ctx: i64,
    pub vocab_size: i64,
    pub layer_norm_epsilon: f64,
    pub embd_pdrop: f64,
    pub attn_pdrop: f64,
    pub resid_pdrop: f64,
}

impl Gpt2Config {
    /// A preset's or custom size's config with GPT-2's defaults (dropout 0.1, eps 1e-5).
    pub fn from_size(size: &baton_proto::v1::Gpt2Size) -> Self {
        let n_embd = i64::from(size.n_embd);
        Self {
            n_layer: i64::from(size.n_layer),
            n_head: i64::from(size.n_head),
            n_embd,
            n_inner: 4 * n_embd,
            n_ctx: i64::from(size.n_ctx),
            vocab_size: i64::from(size.vocab_size),
            layer_norm_epsilon: 1e-5,
            embd_pdrop: 0.1,
            attn_pdrop: 0.1,
            resid_pdrop: 0.1,
        }
    }

    pub fn size(&self) -> baton_proto::v1::Gpt2Size {
        let u = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
        baton_proto::v1::Gpt2Size {
            n_layer: u(self.n_layer),
            n_head: u(self.n_head),
            n_embd: u(self.n_embd),
            n_ctx: u(self.n_ctx),
            vocab_size: u(self.vocab_size),
        }
    }

    /// Every tensor of the model: its Hugging Face name (without `transformer.`) and shape.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<i64>)> {
        let (d, inner) = (self.n_embd, self.n_inner);
        let mut shapes =
            vec![("wte.weight".to_string(), vec![self.vocab_size, d]), ("wpe.weight".into(), vec![self.n_ctx, d])];
        for i in 0..self.n_layer {
            let h = |s: &str| format!("h.{i}.{s}");
            shapes.extend([
                (h("ln_1.weight"), vec![d]),
                (h("ln_1.bias"), vec![d]),
                (h("attn.c_attn.weight"), vec![d, 3 * d]),
                (h("attn.c_attn.bias"), vec![3 * d]),
                (h("attn.c_proj.weight"), vec![d, d]),
                (h("attn.c_proj.bias"), vec![d]),
                (h("ln_2.weight"), vec![d]),
                (h("ln_2.bias"), vec![d]),
                (h("mlp.c_fc.weight"), vec![d, inner]),
                (h("mlp.c_fc.bias"), vec![inner]),
                (h("mlp.c_proj.weight"), vec![inner, d]),
                (h("mlp.c_proj.bias"), vec![d]),
            ]);
        }
        shapes.extend([("ln_f.weight".to_string(), vec![d]), ("ln_f.bias".into(), vec![d])]);
        shapes
    }

    /// Number of parameters (the tied lm_head counted once).
    pub fn parameters(&self) -> u64 {
        self.tensor_shapes().iter().map(|(_, s)| s.iter().product::<i64>() as u64).sum()
    }

    /// Sets every dropout probability (a job's override).
    pub fn set_dropout(&mut self, p: f64) {
        self.embd_pdrop = p;
        self.attn_pdrop = p;
        self.resid_pdrop = p;
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

/// Hugging Face's Conv1D: `x @ weight + bias` with weight `[in, out]`.
struct Conv1d {
    weight: Tensor,
    bias: Tensor,
}

struct Block {
    ln_1: LayerNorm,
    c_attn: Conv1d,
    attn_proj: Conv1d,
    ln_2: LayerNorm,
    c_fc: Conv1d,
    mlp_proj: Conv1d,
}

/// Keys and values of the tokens seen so far, preallocated to the full length.
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: i64,
}

/// A training forward pass: the loss and what [`Gpt2::gradients`] needs for backward.
pub struct TrainLoss {
    pub loss: Tensor,
    /// Token ids, flattened.
    ids: Tensor,
    /// The looked-up token embeddings, a leaf of their own (see [`Gpt2::train_loss`]).
    tokens: Tensor,
}

/// Prompts of different lengths, padded on the left to one length: which positions hold
/// real tokens, and each token's position id (counted from its own first real token).
pub struct LeftPadding {
    /// `[batch, max_len]` bool: true for real tokens (prompt and generated).
    valid: Tensor,
    /// `[batch, max_len]` int64.
    positions: Tensor,
}

impl LeftPadding {
    /// For prompts of `lengths` tokens padded to `padded_len`, growing to `max_len`.
    pub fn new(lengths: &[i64], padded_len: i64, max_len: i64, device: Device) -> Self {
        let lengths = Tensor::from_slice(lengths).to_device(device).unsqueeze(1);
        let index = Tensor::arange(max_len, (Kind::Int64, device)).unsqueeze(0);
        let first = -lengths + padded_len;
        let valid = index.ge_tensor(&first);
        let positions = (index - first).clamp_min(0);
        Self { valid, positions }
    }
}

pub struct Gpt2 {
    pub config: Gpt2Config,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    /// Kind of matmuls and attention: Float, or BFloat16 with fp32 weights cast on the fly
    /// (what autocast does) or bf16 weights (inference).
    compute: Kind,
}

impl Gpt2 {
    /// Builds the model from its tensors, asked for by name and shape in
    /// [`Gpt2Config::tensor_shapes`] order.
    pub fn from_tensors<E>(
        config: Gpt2Config,
        mut tensor: impl FnMut(&str, &[i64]) -> Result<Tensor, E>,
    ) -> Result<Self, E> {
        let mut named = std::collections::HashMap::new();
        for (name, shape) in config.tensor_shapes() {
            let t = tensor(&name, &shape)?;
            named.insert(name, t);
        }
        let wte = take(&mut named, "wte.weight");
        let wpe = take(&mut named, "wpe.weight");
        let ln_f = LayerNorm { weight: take(&mut named, "ln_f.weight"), bias: take(&mut named, "ln_f.bias") };
        let mut blocks = Vec::new();
        for i in 0..config.n_layer {
            let mut pair = |s: &str| {
                (take(&mut named, &format!("h.{i}.{s}.weight")), take(&mut named, &format!("h.{i}.{s}.bias")))
            };
            let ln = |(weight, bias)| LayerNorm { weight, bias };
            let conv = |(weight, bias)| Conv1d { weight, bias };
            blocks.push(Block {
                ln_1: ln(pair("ln_1")),
                c_attn: conv(pair("attn.c_attn")),
                attn_proj: conv(pair("attn.c_proj")),
                ln_2: ln(pair("ln_2")),
                c_fc: conv(pair("mlp.c_fc")),
                mlp_proj: conv(pair("mlp.c_proj")),
            });
        }
        Ok(Self { config, wte, wpe, blocks, ln_f, compute: Kind::Float })
    }

    /// Random init as GPT-2 does it: normal(0, 0.02) for embeddings and Conv1D weights,
    /// residual projections (attn.c_proj, mlp.c_proj) scaled by 1/sqrt(2·n_layer), zero
    /// biases, LayerNorm at identity. Seed first with `tch::manual_seed`.
    pub fn random(config: Gpt2Config, device: Device) -> Self {
        let proj_std = 0.02 / (2.0 * config.n_layer as f64).sqrt();
        let built: Result<Self, std::convert::Infallible> = Self::from_tensors(config, |name, shape| {
            let opts = (Kind::Float, device);
            Ok(if name.ends_with(".bias") {
                Tensor::zeros(shape, opts)
            } else if name.contains("ln_") {
                Tensor::ones(shape, opts)
            } else if name.ends_with("c_proj.weight") {
                Tensor::randn(shape, opts) * proj_std
            } else {
                Tensor::randn(shape, opts) * 0.02
            })
        });
        match built {
            Ok(m) => m,
            Err(never) => match never {},
        }
    }

    /// Every parameter with its Hugging Face name, in [`Gpt2Config::tensor_shapes`] order.
    pub fn named_parameters(&self) -> Vec<(String, &Tensor)> {
        let mut out = vec![("wte.weight".to_string(), &self.wte), ("wpe.weight".to_string(), &self.wpe)];
        for (i, b) in self.blocks.iter().enumerate() {
            let h = |s: &str| format!("h.{i}.{s}");
            out.extend([
                (h("ln_1.weight"), &b.ln_1.weight),
                (h("ln_1.bias"), &b.ln_1.bias),
                (h("attn.c_attn.weight"), &b.c_attn.weight),
                (h("attn.c_attn.bias"), &b.c_attn.bias),
                (h("attn.c_proj.weight"), &b.attn_proj.weight),
                (h("attn.c_proj.bias"), &b.attn_proj.bias),
                (h("ln_2.weight"), &b.ln_2.weight),
                (h("ln_2.bias"), &b.ln_2.bias),
                (h("mlp.c_fc.weight"), &b.c_fc.weight),
                (h("mlp.c_fc.bias"), &b.c_fc.bias),
                (h("mlp.c_proj.weight"), &b.mlp_proj.weight),
                (h("mlp.c_proj.bias"), &b.mlp_proj.bias),
            ]);
        }
        out.extend([("ln_f.weight".to_string(), &self.ln_f.weight), ("ln_f.bias".to_string(), &self.ln_f.bias)]);
        out
    }

    pub fn parameters(&self) -> Vec<&Tensor> {
        self.named_parameters().into_iter().map(|(_, t)| t).collect()
    }

    /// Marks every parameter as trained (autograd records operations on it).
    pub fn set_trainable(&mut self) {
        for t in self.parameters_mut() {
            let _ = t.set_requires_grad(true);
        }
    }

    /// Matmuls and attention in `kind`; weights stay fp32 and are cast on the fly.
    pub fn set_compute_kind(&mut self, kind: Kind) {
        self.compute = kind;
    }

    /// Converts the weights themselves (inference in bf16).
    pub fn cast_weights(&mut self, kind: Kind) {
        for t in self.parameters_mut() {
            *t = t.to_kind(kind);
        }
        self.compute = kind;
    }

    fn parameters_mut(&mut self) -> Vec<&mut Tensor> {
        let mut out = vec![&mut self.wte, &mut self.wpe];
        for b in &mut self.blocks {
            out.extend([
                &mut b.ln_1.weight,
                &mut b.ln_1.bias,
                &mut b.c_attn.weight,
                &mut b.c_attn.bias,
                &mut b.attn_proj.weight,
                &mut b.attn_proj.bias,
                &mut b.ln_2.weight,
                &mut b.ln_2.bias,
                &mut b.c_fc.weight,
                &mut b.c_fc.bias,
                &mut b.mlp_proj.weight,
                &mut b.mlp_proj.bias,
            ]);
        }
        out.extend([&mut self.ln_f.weight, &mut self.ln_f.bias]);
        out
    }

    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]` (dropout off).
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        let hidden = self.hidden_padded(self.embed(ids), None, false, None);
        self.lm_head(&hidden)
    }

    /// Mean cross-entropy of predicting `targets` `[batch, seq]` from `ids` `[batch, seq]`
    /// (dropout off; for training see [`Gpt2::train_loss`]).
    pub fn loss(&self, ids: &Tensor, targets: &Tensor) -> Tensor {
        self.cross_entropy(&self.forward(ids), targets)
    }

    /// The training loss (dropout on) of predicting `targets` from `ids`; its gradients
    /// come from [`Gpt2::gradients`].
    ///
    /// The token lookup reads `wte` outside autograd, from a leaf of its own: left to
    /// autograd, the lookup's gradient (a few rows) and the lm_head's (all of
    /// vocab × width) meet in a sum that can copy the whole 154 MB gradient of GPT-2 124M.
    /// [`Gpt2::gradients`] adds the looked-up rows into the lm_head's gradient in place.
    pub fn train_loss(&self, ids: &Tensor, targets: &Tensor) -> TrainLoss {
        let tokens = Tensor::embedding(&self.wte.detach(), ids, -1, false, false).set_requires_grad(true);
        let hidden = self.hidden_padded(tokens.shallow_clone(), None, true, None);
        let loss = self.cross_entropy(&self.lm_head(&hidden), targets);
        TrainLoss { loss, ids: ids.reshape([-1]), tokens }
    }

    /// Gradients of a [`TrainLoss`] for every parameter, in [`Gpt2::parameters`] order.
    pub fn gradients(&self, loss: &TrainLoss) -> Result<Vec<Tensor>, tch::TchError> {
        let mut inputs = self.parameters();
        inputs.push(&loss.tokens);
        let mut grads = Tensor::f_run_backward(&[&loss.loss], &inputs, false, false)?;
        let tokens = grads.pop().unwrap_or_else(|| Tensor::zeros([0], (Kind::Float, Device::Cpu)));
        // parameters() starts with wte; its gradient so far is the lm_head's.
        let _ = grads[0].f_index_add_(0, &loss.ids, &tokens.reshape([-1, self.config.n_embd]))?;
        Ok(grads)
    }

    fn embed(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.wte, ids, -1, false, false)
    }

    fn cross_entropy(&self, logits: &Tensor, targets: &Tensor) -> Tensor {
        logits.view([-1, self.config.vocab_size]).to_kind(Kind::Float).cross_entropy_loss::<Tensor>(
            &targets.reshape([-1]),
            None,
            tch::Reduction::Mean,
            -100,
            0.0,
        )
    }

    /// A cache for `batch` sequences of up to `max_len` tokens.
    pub fn new_cache(&self, batch: i64, max_len: i64, device: Device) -> KvCache {
        let c = &self.config;
        let shape = [batch, c.n_head, max_len, c.n_embd / c.n_head];
        let kind = self.compute;
        let zeros = || (0..c.n_layer).map(|_| Tensor::zeros(shape, (kind, device))).collect();
        KvCache { keys: zeros(), values: zeros(), len: 0 }
    }

    /// Logits `[batch, vocab]` of the last position after feeding `ids` `[batch, seq]`;
    /// with a cache, only the new tokens are computed and the cache grows by them.
    /// `padding` is given when the prompts were padded to one length.
    pub fn next_token_logits(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        padding: Option<&LeftPadding>,
    ) -> Tensor {
        let hidden = self.hidden_padded(self.embed(ids), cache, false, padding);
        self.lm_head(&hidden.select(1, -1))
    }

    fn lm_head(&self, hidden: &Tensor) -> Tensor {
        let wte =
            if self.wte.kind() == self.compute { self.wte.shallow_clone() } else { self.wte.to_kind(self.compute) };
        hidden.to_kind(self.compute).linear::<Tensor>(&wte, None)
    }

    /// The final hidden states for token embeddings `tokens` `[batch, seq, width]`.
    fn hidden_padded(
        &self,
        tokens: Tensor,
        mut cache: Option<&mut KvCache>,
        train: bool,
        padding: Option<&LeftPadding>,
    ) -> Tensor {
        let c = &self.config;
        let (batch, seq, device) = (tokens.size()[0], tokens.size()[1], tokens.device());
        let past = cache.as_ref().map_or(0, |k| k.len);
        let positions = match padding {
            Some(p) => Tensor::embedding(&self.wpe, &p.positions.narrow(1, past, seq), -1, false, false),
            None => self.wpe.narrow(0, past, seq),
        };
        // With padding: token i sees the real tokens up to itself, and always itself (so a
        // padding row never has nothing to attend to).
        let padding_mask = padding.map(|p| {
            let rows = Tensor::arange(seq, (Kind::Int64, device)).unsqueeze(1) + past;
            let cols = Tensor::arange(past + seq, (Kind::Int64, device)).unsqueeze(0);
            let keys = p.valid.narrow(1, 0, past + seq).view([batch, 1, 1, past + seq]);
            cols.le_tensor(&rows).logical_and(&keys).logical_or(&cols.eq_tensor(&rows))
        });
        let mut x = tokens + positions;
        x = dropout(x, c.embd_pdrop, train);
        let (heads, head_dim) = (c.n_head, c.n_embd / c.n_head);
        for (layer, b) in self.blocks.iter().enumerate() {
            let h = layer_norm(&x, &b.ln_1, c.layer_norm_epsilon);
            let qkv = b.c_attn.apply(&h, self.compute);
            let split = |t: &Tensor| t.view([batch, seq, heads, head_dim]).transpose(1, 2);
            let parts = qkv.split(c.n_embd, 2);
            let (q, mut k, mut v) = (split(&parts[0]), split(&parts[1]), split(&parts[2]));
            let mut mask = padding_mask.as_ref().map(|m| m.shallow_clone());
            let mut causal = mask.is_none();
            if let Some(cache) = cache.as_deref_mut() {
                let (ck, cv) = (&cache.keys[layer], &cache.values[layer]);
                ck.narrow(2, past, seq).copy_(&k);
                cv.narrow(2, past, seq).copy_(&v);
                k = ck.narrow(2, 0, past + seq);
                v = cv.narrow(2, 0, past + seq);
                if past > 0 && mask.is_none() {
                    causal = false;
                    if seq > 1 {
                        // New token i sees every cached token and new tokens up to itself.
                        let rows = Tensor::arange(seq, (Kind::Int64, device)).unsqueeze(1) + past;
                        let cols = Tensor::arange(past + seq, (Kind::Int64, device)).unsqueeze(0);
                        mask = Some(cols.le_tensor(&rows));
                    }
                }
            }
            let p = if train { c.attn_pdrop } else { 0.0 };
            let y = if causal && explicit_attention(q.device(), q.kind(), p) {
                causal_attention_with_dropout(&q, &k, &v, p)
            } else {
                Tensor::scaled_dot_product_attention(&q, &k, &v, mask, p, causal, None, false)
            };
            let y = y.transpose(1, 2).reshape([batch, seq, c.n_embd]);
            let y = dropout(b.attn_proj.apply(&y, self.compute), c.resid_pdrop, train);
            // Not `+=`: that adds in place, and autograd saved `x` for backward.
            x = &x + y;
            let h = layer_norm(&x, &b.ln_2, c.layer_norm_epsilon);
            let h = b.c_fc.apply(&h, self.compute).gelu("tanh");
            let h = dropout(b.mlp_proj.apply(&h, self.compute), c.resid_pdrop, train);
            x = &x + h;
        }
        if let Some(cache) = cache {
            cache.len = past + seq;
        }
        layer_norm(&x, &self.ln_f, c.layer_norm_epsilon)
    }
}

/// Hands over a tensor gathered by `from_tensors`. Every name asked for comes from
/// `tensor_shapes()`, which filled the map, so the empty fallback is never used.
fn take(named: &mut std::collections::HashMap<String, Tensor>, name: &str) -> Tensor {
    named.remove(name).unwrap_or_else(|| Tensor::zeros([0], (Kind::Float, Device::Cpu)))
}

impl Conv1d {
    fn apply(&self, x: &Tensor, kind: Kind) -> Tensor {
        let size = x.size();
        let d_in = size[size.len() - 1];
        let (w, b) = if self.weight.kind() == kind {
            (self.weight.shallow_clone(), self.bias.shallow_clone())
        } else {
            (self.weight.to_kind(kind), self.bias.to_kind(kind))
        };
        let y = b.addmm(&x.to_kind(kind).reshape([-1, d_in]), &w);
        let mut out = size;
        let last = out.len() - 1;
        out[last] = w.size()[1];
        y.view(out.as_slice())
    }
}

fn layer_norm(x: &Tensor, ln: &LayerNorm, eps: f64) -> Tensor {
    // In bf16 compute with fp32 weights the input is promoted: LayerNorm runs in fp32.
    let x = if ln.weight.kind() == Kind::Float && x.kind() != Kind::Float {
        x.to_kind(Kind::Float)
    } else {
        x.shallow_clone()
    };
    x.layer_norm([ln.weight.size()[0]], Some(&ln.weight), Some(&ln.bias), eps, true)
}

fn dropout(x: Tensor, p: f64, train: bool) -> Tensor {
    if train && p > 0.0 { crate::dropout::dropout(&x, p) } else { x }
}

/// Whether training attention with dropout `p` on `device` in `kind` is computed by
/// [`causal_attention_with_dropout`] rather than libtorch's SDPA: on the CPU in fp32, where
/// SDPA would draw its dropout masks serially.
pub fn explicit_attention(device: Device, kind: Kind, p: f64) -> bool {
    p > 0.0 && device == Device::Cpu && kind == Kind::Float
}

/// Causal attention with dropout on the attention weights, spelled out as libtorch's SDPA
/// computes it when dropout is on (its math fallback on the CPU): softmax(q·kᵀ/√d + causal
/// mask), dropout, · v — with this crate's dropout masks instead of libtorch's serial ones.
fn causal_attention_with_dropout(q: &Tensor, k: &Tensor, v: &Tensor, p: f64) -> Tensor {
    let (seq, head_dim) = (q.size()[2], q.size()[3]);
    let future = Tensor::ones([seq, seq], (Kind::Bool, q.device())).triu(1);
    let scores = (q.matmul(&k.transpose(-2, -1)) / (head_dim as f64).sqrt()).masked_fill(&future, f64::NEG_INFINITY);
    crate::dropout::dropout(&scores.softmax(-1, Kind::Float), p).matmul(v)
}
