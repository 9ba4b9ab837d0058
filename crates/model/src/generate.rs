//! Decoding settings every generating architecture takes (greedy and beam search with
//! Hugging Face conventions).

/// How beam hypotheses of different lengths are compared.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LengthPenalty {
    /// HF: `sum_logprobs / len^a` (`a = 0` compares raw sums). `len` counts the generated
    /// tokens including EOS, as transformers ≥ 4.5x does.
    Power(f64),
    /// GNMT / the T5 paper: `sum_logprobs / ((5 + len) / 6)^alpha`.
    Gnmt(f64),
}

impl LengthPenalty {
    /// The score a hypothesis of `len` tokens with log-probability sum `sum_logprobs`
    /// is ranked by.
    pub fn normalise(self, sum_logprobs: f64, len: usize) -> f64 {
        let len = len as f64;
        match self {
            LengthPenalty::Power(a) => sum_logprobs / len.powf(a),
            LengthPenalty::Gnmt(alpha) => sum_logprobs / ((5.0 + len) / 6.0).powf(alpha),
        }
    }
}

/// Decoding settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GenerateOptions {
    /// 1: greedy.
    pub num_beams: usize,
    pub length_penalty: LengthPenalty,
    pub max_new_tokens: usize,
    /// EOS is forbidden before this many tokens (HF `min_new_tokens`; benchmarks force
    /// full-length outputs with it).
    pub min_new_tokens: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            num_beams: 1,
            length_penalty: LengthPenalty::Power(1.0),
            max_new_tokens: 32,
            min_new_tokens: 0,
        }
    }
}
