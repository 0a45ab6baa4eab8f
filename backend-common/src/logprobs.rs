//! Log-probabilities from raw logits, as OpenAI reports them: the chosen token's and the
//! most likely alternatives', before any sampling transform.

/// Log-probability of token `chosen` and the `top` most likely tokens (id, log-probability),
/// best first, from one row of logits.
pub fn from_logits(logits: &[f32], chosen: usize, top: usize) -> (f32, Vec<(usize, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln() + max;
    let logprob = |id: usize| logits.get(id).map_or(f32::NEG_INFINITY, |&l| l - log_sum);
    let k = top.min(logits.len());
    let mut best: Vec<usize> = (0..logits.len()).collect();
    if k == 0 {
        best.clear();
    } else {
        best.select_nth_unstable_by(k - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
        best.truncate(k);
        best.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    }
    (
        logprob(chosen),
        best.into_iter().map(|id| (id, logprob(id))).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_softmax() {
        let logits = [1.0f32, 3.0, 2.0, 0.5];
        let (chosen, top) = from_logits(&logits, 2, 2);
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        assert!((chosen - (2.0f32.exp() / z).ln()).abs() < 1e-5);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!(top[0].1 > top[1].1 && top[0].1 <= 0.0);
    }

    #[test]
    fn edge_cases_do_not_panic() {
        assert!(from_logits(&[], 0, 3).1.is_empty());
        assert_eq!(from_logits(&[0.0, 0.0], 5, 0).0, f32::NEG_INFINITY);
        assert_eq!(from_logits(&[1.0], 0, 10).1.len(), 1);
    }
}
