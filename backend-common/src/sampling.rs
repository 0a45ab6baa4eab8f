//! Sampling parameters of a request, read from `PredictOptions` and validated.
//!
//! LocalAI sends 0 for "unset" in every numeric field except `Temperature`, where 0 means
//! greedy decoding. Values are checked here so that every engine rejects the same bad input
//! with the same message.
use crate::pb::PredictOptions;

/// A field of a request that cannot be honoured.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidRequest {
    /// The `PredictOptions` field.
    pub field: &'static str,
    /// What is wrong and what to send instead.
    pub reason: String,
}

impl InvalidRequest {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        InvalidRequest {
            field,
            reason: reason.into(),
        }
    }
}

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: u32,
    /// 1 disables top-p.
    pub top_p: f32,
    /// 0 disables min-p.
    pub min_p: f32,
    /// 1 disables locally typical sampling.
    pub typical_p: f32,
    /// How many recent tokens the repetition penalties look at.
    pub penalty_last_n: u32,
    /// 1 disables the repetition penalty.
    pub repeat_penalty: f32,
    /// 0 disables.
    pub presence_penalty: f32,
    /// 0 disables.
    pub frequency_penalty: f32,
    /// RNG seed; `None` draws one.
    pub seed: Option<u32>,
    /// Additive biases on logits of token ids.
    pub logit_bias: Vec<(i32, f32)>,
}

impl SamplingParams {
    /// Greedy decoding, no penalties.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            typical_p: 1.0,
            penalty_last_n: 64,
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            logit_bias: Vec::new(),
        }
    }

    /// Reads and validates the sampling fields of a request.
    pub fn from_request(req: &PredictOptions) -> Result<Self, InvalidRequest> {
        let finite = |field: &'static str, v: f32| {
            if v.is_finite() {
                Ok(v)
            } else {
                Err(InvalidRequest::new(
                    field,
                    format!("{v} is not a finite number"),
                ))
            }
        };
        let temperature = finite("Temperature", req.temperature)?;
        if temperature < 0.0 {
            return Err(InvalidRequest::new(
                "Temperature",
                format!("{temperature} is negative; use 0 for greedy decoding"),
            ));
        }
        let unit = |field: &'static str, v: f32, unset: f32| -> Result<f32, InvalidRequest> {
            let v = finite(field, v)?;
            if v == 0.0 {
                Ok(unset)
            } else if (0.0..=1.0).contains(&v) {
                Ok(v)
            } else {
                Err(InvalidRequest::new(field, format!("{v} is outside 0..=1")))
            }
        };
        let top_k = u32::try_from(req.top_k).map_err(|_| {
            InvalidRequest::new(
                "TopK",
                format!("{} is negative; use 0 to disable", req.top_k),
            )
        })?;
        let penalty_last_n = match req.repeat {
            0 => 64,
            n => u32::try_from(n).map_err(|_| {
                InvalidRequest::new("Repeat", format!("{n} is negative; use 0 for the default"))
            })?,
        };
        let repeat_penalty = match finite("Penalty", req.penalty)? {
            0.0 => 1.0,
            p if p < 0.0 => {
                return Err(InvalidRequest::new(
                    "Penalty",
                    format!("{p} is negative; 1 disables the repetition penalty"),
                ));
            }
            p => p,
        };
        Ok(SamplingParams {
            temperature,
            top_k,
            top_p: unit("TopP", req.top_p, 1.0)?,
            min_p: unit("MinP", req.min_p, 0.0)?,
            typical_p: unit("TypicalP", req.typical_p, 1.0)?,
            penalty_last_n,
            repeat_penalty,
            presence_penalty: finite("PresencePenalty", req.presence_penalty)?,
            frequency_penalty: finite("FrequencyPenalty", req.frequency_penalty)?,
            // LocalAI sends 0 when no seed was configured; negative seeds mean "random" in llama.cpp.
            seed: (req.seed > 0).then_some(req.seed as u32),
            logit_bias: parse_logit_bias(&req.logit_bias)?,
        })
    }

    /// Whether decoding is greedy (argmax).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// A seed for requests that ask for none: different per request, with no RNG crate.
pub fn random_seed() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

/// Parses `LogitBias`: a JSON object mapping token ids (as strings or numbers) to biases.
fn parse_logit_bias(raw: &str) -> Result<Vec<(i32, f32)>, InvalidRequest> {
    if raw.trim().is_empty() {
        return Ok(Vec::new());
    }
    let bad = |why: String| {
        InvalidRequest::new(
            "LogitBias",
            format!("{why}; expected a JSON object like {{\"15043\": -100}}"),
        )
    };
    let value: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| bad(format!("not valid JSON ({e})")))?;
    let object = value
        .as_object()
        .ok_or_else(|| bad("not a JSON object".to_string()))?;
    object
        .iter()
        .map(|(token, bias)| {
            let id: i32 = token
                .trim()
                .parse()
                .map_err(|_| bad(format!("key `{token}` is not a token id")))?;
            let bias = bias
                .as_f64()
                .filter(|b| b.is_finite())
                .ok_or_else(|| bad(format!("bias of `{token}` is not a number")))?;
            Ok((id, bias as f32))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> PredictOptions {
        PredictOptions::default()
    }

    #[test]
    fn zero_temperature_is_greedy_and_zeros_mean_unset() {
        let p = SamplingParams::from_request(&req()).unwrap();
        assert!(p.is_greedy());
        assert_eq!((p.top_p, p.min_p, p.typical_p), (1.0, 0.0, 1.0));
        assert_eq!(
            (p.repeat_penalty, p.penalty_last_n, p.seed),
            (1.0, 64, None)
        );
    }

    #[test]
    fn values_are_taken() {
        let mut r = req();
        r.temperature = 0.7;
        r.top_k = 40;
        r.top_p = 0.9;
        r.seed = 42;
        r.penalty = 1.1;
        r.repeat = 32;
        r.logit_bias = r#"{"15": -100, "7": 2.5}"#.into();
        let p = SamplingParams::from_request(&r).unwrap();
        assert_eq!((p.temperature, p.top_k, p.top_p), (0.7, 40, 0.9));
        assert_eq!(
            (p.seed, p.repeat_penalty, p.penalty_last_n),
            (Some(42), 1.1, 32)
        );
        assert_eq!(p.logit_bias, vec![(15, -100.0), (7, 2.5)]);
    }

    #[test]
    fn bad_values_name_the_field() {
        type Case = (fn(&mut PredictOptions), &'static str);
        let cases: Vec<Case> = vec![
            (|r| r.temperature = -1.0, "Temperature"),
            (|r| r.temperature = f32::NAN, "Temperature"),
            (|r| r.top_p = 1.5, "TopP"),
            (|r| r.top_k = -3, "TopK"),
            (|r| r.min_p = -0.1, "MinP"),
            (|r| r.penalty = -1.0, "Penalty"),
            (|r| r.repeat = -1, "Repeat"),
            (|r| r.logit_bias = "[1,2]".into(), "LogitBias"),
            (|r| r.logit_bias = "{\"abc\": 1}".into(), "LogitBias"),
            (|r| r.logit_bias = "{\"1\": \"x\"}".into(), "LogitBias"),
            (|r| r.logit_bias = "{".into(), "LogitBias"),
        ];
        for (set, field) in cases {
            let mut r = req();
            set(&mut r);
            let e = SamplingParams::from_request(&r).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }
}
