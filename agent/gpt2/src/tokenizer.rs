//! GPT-2's byte-pair encoding (r50k_base), embedded in the binary: no network needed.

use tiktoken_rs::CoreBPE;

/// GPT-2's vocabulary size: 50 000 merges, 256 bytes and `<|endoftext|>` (id 50256).
pub const VOCAB_SIZE: u32 = 50257;

pub struct Gpt2Tokenizer {
    bpe: &'static CoreBPE,
}

impl Gpt2Tokenizer {
    pub fn new() -> Self {
        Self { bpe: tiktoken_rs::r50k_base_singleton() }
    }

    /// Token ids of `text`; `<|endoftext|>` in the text becomes id 50256.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.bpe.encode_with_special_tokens(text)
    }

    /// Text of `ids`, or `None` when an id is outside GPT-2's vocabulary. Bytes that do
    /// not form whole UTF-8 characters (a generation cut mid-character) become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Option<String> {
        if ids.iter().any(|&id| id >= VOCAB_SIZE) {
            return None;
        }
        let bytes = self.bpe.decode_bytes(ids).ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }
}

impl Default for Gpt2Tokenizer {
    fn default() -> Self {
        Self::new()
    }
}
