//! LocalAI's `ModelOptions.Options`: a list of `key:value` strings.
//!
//! Each entry is split on its FIRST colon only, so values such as `host:port` or
//! `--flag:value` survive (LocalAI's C++ backend cuts them; we do not). A bare `key` means
//! `true`. A key may be written as vLLM's command-line flag: `--max-num-seqs` reads as
//! `max_num_seqs` (leading dashes dropped, inner dashes read as underscores), and such a flag
//! may also take its value after `=` (`--max-num-seqs=8`). Getters are
//! typed and report the key as written and the offending value; unknown keys are only
//! logged, because LocalAI configs are shared across backends.
use std::collections::BTreeMap;
use std::str::FromStr;

/// A typed option value that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("option `{key}`: `{value}` is not a valid {expected}")]
pub struct OptionError {
    /// The option's key.
    pub key: String,
    /// The value as given.
    pub value: String,
    /// What was expected, e.g. "boolean (true/false/1/0/yes/no/on/off/enabled/disabled)".
    pub expected: &'static str,
}

/// Parsed `key:value` options; the last occurrence of a key wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// By normalised key: the key as written, and the value.
    entries: BTreeMap<String, (String, String)>,
}

/// The key `key` stands for: `--max-num-seqs` and `max_num_seqs` are one option.
fn normalise(key: &str) -> String {
    key.trim_start_matches('-').replace('-', "_")
}

impl Options {
    /// Parses LocalAI option strings. Empty entries are ignored; keys and values are trimmed.
    pub fn parse<S: AsRef<str>>(raw: &[S]) -> Self {
        let mut entries = BTreeMap::new();
        for item in raw {
            let item = item.as_ref().trim();
            if item.is_empty() {
                continue;
            }
            // vLLM's command line writes `--flag=value`; LocalAI's options `key:value`.
            let split = if item.starts_with("--") {
                item.find([':', '='])
            } else {
                item.find(':')
            };
            let (key, value) = match split {
                Some(at) => (item[..at].trim(), item[at + 1..].trim()),
                None => (item, "true"),
            };
            let name = normalise(key);
            if name.is_empty() {
                continue;
            }
            entries.insert(name, (key.to_string(), value.to_string()));
        }
        Options { entries }
    }

    /// The raw value of the first of `keys` that is present (aliases such as `parallel` /
    /// `n_parallel`).
    pub fn get_str(&self, keys: &[&str]) -> Option<(&str, &str)> {
        keys.iter().find_map(|k| {
            self.entries
                .get(*k)
                .map(|(written, v)| (written.as_str(), v.as_str()))
        })
    }

    /// A boolean: true/1/yes/on/enabled or false/0/no/off/disabled, any case.
    pub fn get_bool(&self, keys: &[&str]) -> Result<Option<bool>, OptionError> {
        let Some((key, value)) = self.get_str(keys) else {
            return Ok(None);
        };
        match value.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" | "enabled" => Ok(Some(true)),
            "false" | "0" | "no" | "off" | "disabled" => Ok(Some(false)),
            _ => Err(OptionError {
                key: key.to_string(),
                value: value.to_string(),
                expected: "boolean (true/false, 1/0, yes/no, on/off, enabled/disabled)",
            }),
        }
    }

    /// An integer of type `T`.
    pub fn get_int<T: FromStr>(&self, keys: &[&str]) -> Result<Option<T>, OptionError> {
        self.get_parsed(keys, "integer")
    }

    /// A floating point number.
    pub fn get_float(&self, keys: &[&str]) -> Result<Option<f64>, OptionError> {
        let value: Option<f64> = self.get_parsed(keys, "number")?;
        match value {
            Some(v) if !v.is_finite() => {
                let (key, raw) = self.get_str(keys).unwrap_or_default();
                Err(OptionError {
                    key: key.to_string(),
                    value: raw.to_string(),
                    expected: "finite number",
                })
            }
            other => Ok(other),
        }
    }

    fn get_parsed<T: FromStr>(
        &self,
        keys: &[&str],
        expected: &'static str,
    ) -> Result<Option<T>, OptionError> {
        let Some((key, value)) = self.get_str(keys) else {
            return Ok(None);
        };
        value.parse().map(Some).map_err(|_| OptionError {
            key: key.to_string(),
            value: value.to_string(),
            expected,
        })
    }

    /// Keys present (as written) whose option is not in `known`.
    pub fn unknown_keys<'a>(&'a self, known: &[&str]) -> Vec<&'a str> {
        self.entries
            .iter()
            .filter(|(name, _)| !known.contains(&name.as_str()))
            .map(|(_, (written, _))| written.as_str())
            .collect()
    }

    /// Logs every key that is not in `known` (a warning, never an error).
    pub fn warn_unknown(&self, known: &[&str]) {
        for key in self.unknown_keys(known) {
            tracing::warn!(option = key, "unknown option ignored");
        }
    }

    /// Whether no option was given.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_take_their_value_after_a_colon_or_an_equals_sign() {
        let o = Options::parse(&[
            "--max-num-seqs=8",
            "--block-size:32",
            "--enforce-eager",
            "url:a=b",
        ]);
        assert_eq!(o.get_str(&["max_num_seqs"]), Some(("--max-num-seqs", "8")));
        assert_eq!(o.get_str(&["block_size"]), Some(("--block-size", "32")));
        assert_eq!(
            o.get_str(&["enforce_eager"]),
            Some(("--enforce-eager", "true"))
        );
        // Only flags split on `=`: a LocalAI option keeps it in its value.
        assert_eq!(o.get_str(&["url"]), Some(("url", "a=b")));
    }

    #[test]
    fn splits_on_first_colon_only() {
        let o = Options::parse(&[
            "proxy:http://host:8080",
            "flag:--x:y",
            "gpu_memory_utilization:0.5",
        ]);
        assert_eq!(o.get_str(&["proxy"]), Some(("proxy", "http://host:8080")));
        assert_eq!(o.get_str(&["flag"]), Some(("flag", "--x:y")));
        assert_eq!(o.get_float(&["gpu_memory_utilization"]), Ok(Some(0.5)));
    }

    #[test]
    fn bare_key_is_true_and_aliases_resolve() {
        let o = Options::parse(&["use_jinja", "n_parallel:4", ""]);
        assert_eq!(o.get_bool(&["use_jinja"]), Ok(Some(true)));
        assert_eq!(o.get_int::<u32>(&["parallel", "n_parallel"]), Ok(Some(4)));
        assert_eq!(o.get_bool(&["missing"]), Ok(None));
    }

    #[test]
    fn booleans_in_every_spelling() {
        for (raw, want) in [
            ("TRUE", true),
            ("1", true),
            ("yes", true),
            ("On", true),
            ("enabled", true),
            ("false", false),
            ("0", false),
            ("No", false),
            ("off", false),
            ("DISABLED", false),
        ] {
            let o = Options::parse(&[format!("k:{raw}")]);
            assert_eq!(o.get_bool(&["k"]), Ok(Some(want)), "{raw}");
        }
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let o = Options::parse(&["warmup:maybe", "parallel:four", "scale:nan"]);
        let e = o.get_bool(&["warmup"]).unwrap_err();
        assert_eq!((e.key.as_str(), e.value.as_str()), ("warmup", "maybe"));
        assert!(e.to_string().contains("warmup") && e.to_string().contains("maybe"));
        let e = o.get_int::<u32>(&["parallel"]).unwrap_err();
        assert_eq!(e.value, "four");
        assert!(o.get_float(&["scale"]).is_err());
    }

    #[test]
    fn unknown_keys_are_listed_not_fatal() {
        let o = Options::parse(&["a:1", "b", "c:x"]);
        assert_eq!(o.unknown_keys(&["a"]), vec!["b", "c"]);
    }

    #[test]
    fn vllm_flag_spelling_reads_as_the_option() {
        let o = Options::parse(&["--max-num-seqs:8", "--enable-prefix-caching:false", "--x"]);
        assert_eq!(o.get_int::<u32>(&["max_num_seqs"]), Ok(Some(8)));
        assert_eq!(o.get_bool(&["enable_prefix_caching"]), Ok(Some(false)));
        assert_eq!(o.get_bool(&["x"]), Ok(Some(true)));
        // Messages and the unknown list name the key as written.
        let e = Options::parse(&["--block-size:big"])
            .get_int::<u32>(&["block_size"])
            .unwrap_err();
        assert_eq!(e.key, "--block-size");
        assert_eq!(
            o.unknown_keys(&["max_num_seqs", "x"]),
            vec!["--enable-prefix-caching"]
        );
        assert!(Options::parse(&["--:1", "-"]).is_empty());
    }

    #[test]
    fn last_occurrence_wins_and_whitespace_is_trimmed() {
        let o = Options::parse(&[" k : 1 ", "k:2"]);
        assert_eq!(o.get_int::<i32>(&["k"]), Ok(Some(2)));
    }
}
