//! Choosing the next token from logits, in llama.cpp's order: logit biases, repetition
//! penalties, then greedy argmax, or top-k, top-p, min-p, temperature and a seeded draw.
//! Keeping llama.cpp's order makes the two workers behave alike on the same request.
use std::collections::{HashMap, VecDeque};

use backend_common::engine::{GenerationRequest, TokenLogprob};
use backend_common::sampling::SamplingParams;

/// A small deterministic generator (SplitMix64): the same seed draws the same tokens.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The sampler of one request.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    biases: Vec<(usize, f32)>,
    recent: VecDeque<u32>,
    rng: SplitMix64,
}

impl Sampler {
    /// A sampler for `request` over `vocab` logits; `eog` tokens are banned when the request
    /// ignores EOS.
    pub fn new(
        request: &GenerationRequest,
        vocab: usize,
        eog: impl IntoIterator<Item = u32>,
    ) -> Self {
        // backend-common checked that every biased id is in the vocabulary.
        let mut biases: Vec<(usize, f32)> = request
            .sampling
            .logit_bias
            .iter()
            .filter_map(|&(id, bias)| usize::try_from(id).ok().map(|i| (i, bias)))
            .filter(|&(i, _)| i < vocab)
            .collect();
        if request.ignore_eos {
            biases.extend(eog.into_iter().map(|t| (t as usize, f32::NEG_INFINITY)));
        }
        let seed = request.sampling.seed.map_or_else(
            || u64::from(backend_common::sampling::random_seed()),
            u64::from,
        );
        Sampler {
            params: request.sampling.clone(),
            biases,
            recent: VecDeque::new(),
            rng: SplitMix64(seed),
        }
    }

    /// Picks the next token from `logits` (reshaped in place by biases and penalties) and
    /// records it for the penalties of later tokens.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        for &(id, bias) in &self.biases {
            if let Some(l) = logits.get_mut(id) {
                *l += bias;
            }
        }
        self.penalize(logits);
        let token = if self.params.is_greedy() {
            argmax(logits)
        } else {
            self.draw(logits)
        };
        self.recent.push_back(token);
        while self.recent.len() > self.params.penalty_last_n as usize {
            self.recent.pop_front();
        }
        token
    }

    /// llama.cpp's penalties: repeated tokens' logits are divided (positive) or multiplied
    /// (negative) by the repetition penalty, then lowered by frequency and presence terms.
    fn penalize(&self, logits: &mut [f32]) {
        let p = &self.params;
        if self.recent.is_empty()
            || (p.repeat_penalty == 1.0 && p.frequency_penalty == 0.0 && p.presence_penalty == 0.0)
        {
            return;
        }
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &t in &self.recent {
            *counts.entry(t).or_default() += 1;
        }
        for (&token, &count) in &counts {
            let Some(l) = logits.get_mut(token as usize) else {
                continue;
            };
            if *l > 0.0 {
                *l /= p.repeat_penalty;
            } else {
                *l *= p.repeat_penalty;
            }
            *l -= count as f32 * p.frequency_penalty + p.presence_penalty;
        }
    }

    fn draw(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l))
            .collect();
        if candidates.is_empty() {
            return argmax(logits);
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        if p.top_k > 0 && (p.top_k as usize) < candidates.len() {
            let k = p.top_k as usize;
            candidates.select_nth_unstable_by(k - 1, by_logit);
            candidates.truncate(k);
        }
        candidates.sort_by(by_logit);
        if p.typical_p < 1.0 {
            candidates = locally_typical(candidates, p.typical_p);
            candidates.sort_by(by_logit);
        }
        if p.top_p < 1.0 {
            let probs = softmax(candidates.iter().map(|c| c.1));
            let mut cumulative = 0.0;
            let keep = probs
                .iter()
                .position(|&q| {
                    cumulative += q;
                    cumulative >= p.top_p
                })
                .map_or(candidates.len(), |i| i + 1);
            candidates.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            let probs = softmax(candidates.iter().map(|c| c.1));
            let floor = probs[0] * p.min_p;
            let keep = probs.iter().take_while(|&&q| q >= floor).count();
            candidates.truncate(keep.max(1));
        }
        let probs = softmax(candidates.iter().map(|c| c.1 / p.temperature));
        let mut target = self.rng.next_f64() as f32;
        for (c, q) in candidates.iter().zip(&probs) {
            if target < *q {
                return c.0;
            }
            target -= q;
        }
        candidates[candidates.len() - 1].0
    }
}

/// Locally typical sampling (Meister et al. 2022, llama.cpp's `typical`): keeps the tokens whose
/// surprisal is closest to the distribution's entropy until their mass reaches `mass`.
fn locally_typical(candidates: Vec<(u32, f32)>, mass: f32) -> Vec<(u32, f32)> {
    let probs = softmax(candidates.iter().map(|c| c.1));
    let entropy: f32 = -probs
        .iter()
        .filter(|&&q| q > 0.0)
        .map(|&q| q * q.ln())
        .sum::<f32>();
    let shift = |i: usize| (-probs[i].ln() - entropy).abs();
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| shift(a).total_cmp(&shift(b)));
    let mut cumulative = 0.0;
    let keep = order
        .iter()
        .position(|&i| {
            cumulative += probs[i];
            cumulative >= mass
        })
        .map_or(order.len(), |i| i + 1);
    order[..keep.max(1)]
        .iter()
        .map(|&i| candidates[i])
        .collect()
}

/// Softmax of `logits` (largest first is not required).
fn softmax(logits: impl Iterator<Item = f32> + Clone) -> Vec<f32> {
    let max = logits.clone().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Index of the largest logit; the first one on ties, as llama.cpp's greedy sampler.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Log-probability of `token` and the `top` most likely tokens under the raw `logits`.
pub fn token_logprob(
    logits: &[f32],
    token: u32,
    top: u32,
    piece: impl Fn(u32) -> Vec<u8>,
) -> TokenLogprob {
    let (logprob, best) =
        backend_common::logprobs::from_logits(logits, token as usize, top as usize);
    TokenLogprob {
        logprob,
        top: best
            .into_iter()
            .map(|(id, logprob)| (id as i32, piece(id as u32), logprob))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(sampling: SamplingParams) -> GenerationRequest {
        GenerationRequest {
            prompt: vec![1],
            sampling,
            max_tokens: None,
            ignore_eos: false,
            grammar: None,
            grammar_triggers: Vec::new(),
            tool_call: None,
            logprobs: None,
        }
    }

    fn sampled(params: SamplingParams, logits: &[f32], n: usize) -> Vec<u32> {
        let mut s = Sampler::new(&request(params), logits.len(), []);
        (0..n).map(|_| s.sample(&mut logits.to_vec())).collect()
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
        assert_eq!(
            sampled(SamplingParams::greedy(), &[0.0, 1.0, 5.0], 3),
            vec![2, 2, 2]
        );
    }

    #[test]
    fn same_seed_same_draws_and_top_k_limits() {
        let mut p = SamplingParams::greedy();
        p.temperature = 1.0;
        p.seed = Some(7);
        let logits = [1.0, 1.1, 0.9, 1.05, 0.2];
        let a = sampled(p.clone(), &logits, 32);
        assert_eq!(a, sampled(p.clone(), &logits, 32));
        assert!(a.iter().any(|&t| t != a[0]), "draws vary: {a:?}");
        p.top_k = 2;
        assert!(
            sampled(p.clone(), &logits, 64)
                .iter()
                .all(|&t| t == 1 || t == 3)
        );
        p.top_k = 0;
        p.min_p = 0.99;
        assert!(sampled(p, &logits, 16).iter().all(|&t| t == 1));
    }

    #[test]
    fn top_p_keeps_the_smallest_sufficient_prefix() {
        let mut p = SamplingParams::greedy();
        p.temperature = 1.0;
        p.seed = Some(1);
        p.top_p = 0.5;
        // Token 0 alone holds far more than half the mass.
        assert!(
            sampled(p, &[5.0, 1.0, 1.0, 1.0], 32)
                .iter()
                .all(|&t| t == 0)
        );
    }

    #[test]
    fn typical_keeps_the_tokens_nearest_the_entropy() {
        let mut p = SamplingParams::greedy();
        p.temperature = 1.0;
        p.seed = Some(3);
        p.typical_p = 0.01;
        // Probabilities 0.4, 0.3, 0.3: entropy 1.09 nats; the 0.3 tokens' surprisal (1.20) is
        // nearer to it than the top token's (0.92), so the most likely token is never drawn.
        let logits = [0.4f32.ln(), 0.3f32.ln(), 0.3f32.ln()];
        assert!(sampled(p, &logits, 32).iter().all(|&t| t != 0));
    }

    #[test]
    fn biases_penalties_and_ignore_eos() {
        let mut p = SamplingParams::greedy();
        p.logit_bias = vec![(2, -100.0)];
        assert_eq!(sampled(p.clone(), &[0.0, 1.0, 5.0], 1), vec![1]);
        p.logit_bias.clear();
        p.repeat_penalty = 10.0;
        assert_eq!(sampled(p, &[0.0, 1.0, 2.0], 2), vec![2, 1]);
        let mut req = request(SamplingParams::greedy());
        req.ignore_eos = true;
        let mut s = Sampler::new(&req, 3, [2]);
        assert_eq!(s.sample(&mut [0.0, 1.0, 5.0]), 1);
    }

    #[test]
    fn logprobs_are_normalised_and_sorted() {
        let lp = token_logprob(&[0.0, 2.0, 1.0], 2, 2, |id| vec![id as u8]);
        let total: f32 = [0.0f32, 2.0, 1.0]
            .iter()
            .map(|l| (l - 1.0 + lp.logprob).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(lp.top[0].1, vec![1]);
    }
}
