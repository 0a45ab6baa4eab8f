//! The harness configuration, read from the environment with the names and defaults of
//! LocalAI's `tests/e2e-backends` (`BACKEND_TEST_*`), plus a few of our own.
use std::path::PathBuf;
use std::time::Duration;

use crate::caps::Capability;

/// LocalAI's default capabilities.
pub const DEFAULT_CAPS: &str = "health,load,predict,stream";
/// LocalAI's default prompt.
pub const DEFAULT_PROMPT: &str = "The capital of France is";
/// LocalAI's default tool prompt.
pub const DEFAULT_TOOL_PROMPT: &str = "What's the weather like in Paris, France?";
/// LocalAI's default tool name.
pub const DEFAULT_TOOL_NAME: &str = "get_weather";

/// Which worker the harness talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `BACKEND_BINARY`: a local binary started with `--addr`.
    Binary(PathBuf),
    /// `BACKEND_ADDR`: a worker that is already running.
    Addr(String),
    /// `BACKEND_IMAGE`: a local backend image, run as `BACKEND_IMAGE_RUN` says.
    Image {
        /// `NAME[:TAG]`.
        reference: String,
        /// How the image is run.
        run: ImageRun,
    },
}

/// How a backend image is run (`BACKEND_IMAGE_RUN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageRun {
    /// `container` (the default): a container, its port mapped to loopback, the model
    /// folder mounted read-only.
    Container,
    /// `host`: LocalAI's way, the image's file system exported and `/run.sh --addr=...`
    /// started on this machine.
    Host,
}

/// Where the model comes from (LocalAI's three variables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// `BACKEND_TEST_MODEL_FILE`: a local file, sent as `ModelFile`.
    File(PathBuf),
    /// `BACKEND_TEST_MODEL_URL`: downloaded first, then used as a file.
    Url(String),
    /// `BACKEND_TEST_MODEL_NAME`: sent verbatim as `Model`, with `ModelFile` empty.
    Name(String),
}

/// `BACKEND_TEST_EMBEDDING_LAYOUT`: the shape the `embeddings` check expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingLayout {
    /// `final`: one pooled vector.
    Final,
    /// `per_token`: one vector per token (`pooling:none`).
    PerToken,
}

/// Everything the trials need to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// The worker under test; `None` when no target variable is set.
    pub target: Option<Target>,
    /// The model; `None` when no model variable is set.
    pub model: Option<ModelSource>,
    /// `BACKEND_TEST_CAPS`: the capabilities to check, in the order given.
    pub caps: Vec<Capability>,
    /// `BACKEND_TEST_PROMPT`.
    pub prompt: String,
    /// `BACKEND_TEST_CTX_SIZE`.
    pub ctx_size: i32,
    /// `BACKEND_TEST_THREADS`.
    pub threads: i32,
    /// `BACKEND_TEST_OPTIONS`, split on commas, sent as `ModelOptions.Options`.
    pub options: Vec<String>,
    /// `BACKEND_TEST_EXTRA_FILES`: `URL[#name]` entries (split on `|`) downloaded beside the
    /// model file.
    pub extra_files: Vec<String>,
    /// `BACKEND_TEST_EMBEDDING_LAYOUT`: the layout `embeddings` requires, if any.
    pub embedding_layout: Option<EmbeddingLayout>,
    /// `BACKEND_TEST_TOOL_PROMPT`.
    pub tool_prompt: String,
    /// `BACKEND_TEST_TOOL_NAME`.
    pub tool_name: String,
    /// `LOCALAI_GRPC_AUTH_TOKEN`: sent on every call when set.
    pub token: Option<String>,
    /// `BACKEND_TEST_REPLAY_OPTION`: the name of a backend load option that makes the backend
    /// replay a fixed text, so `reasoning` can be checked without a reasoning model.
    pub replay_option: Option<String>,
    /// `BACKEND_TEST_CONCURRENCY` (4): parallel streams of the `concurrency` check.
    pub concurrency: usize,
    /// `BACKEND_TEST_TIMEOUT` (seconds, 300): the limit of one trial.
    pub trial_timeout: Duration,
    /// `BACKEND_TEST_STARTUP_TIMEOUT` (seconds, 60): how long a started worker may take to
    /// answer Health (LocalAI waits 20 x 2 s).
    pub startup_timeout: Duration,
}

/// The environment does not describe a valid run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A capability name is unknown.
    #[error("BACKEND_TEST_CAPS: unknown capability `{0}`; known: {known}", known = Capability::names().join(", "))]
    UnknownCapability(String),
    /// A number does not parse.
    #[error("{var}: `{value}` is not a positive number")]
    Number {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// More than one target or model variable is set.
    #[error("set only one of {0}")]
    Conflict(&'static str),
    /// `BACKEND_TEST_EMBEDDING_LAYOUT` is neither `final` nor `per_token`.
    #[error("BACKEND_TEST_EMBEDDING_LAYOUT: `{0}` is not `final` or `per_token`")]
    EmbeddingLayout(String),
    /// `BACKEND_IMAGE_RUN` is neither `container` nor `host`.
    #[error("BACKEND_IMAGE_RUN: `{0}` is not `container` or `host`")]
    ImageRun(String),
}

impl Config {
    /// Reads the configuration through `var` (the process environment in the binary).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let target = one_of(
            [
                get("BACKEND_BINARY").map(|v| Target::Binary(PathBuf::from(v))),
                get("BACKEND_ADDR").map(Target::Addr),
                get("BACKEND_IMAGE").map(|reference| Target::Image {
                    reference,
                    run: ImageRun::Container,
                }),
            ],
            "BACKEND_BINARY, BACKEND_ADDR and BACKEND_IMAGE",
        )?;
        let run = match get("BACKEND_IMAGE_RUN").as_deref().map(str::trim) {
            None | Some("container") => ImageRun::Container,
            Some("host") => ImageRun::Host,
            Some(other) => return Err(ConfigError::ImageRun(other.to_string())),
        };
        let target = target.map(|t| match t {
            Target::Image { reference, .. } => Target::Image { reference, run },
            other => other,
        });
        let model = one_of(
            [
                get("BACKEND_TEST_MODEL_FILE").map(|v| ModelSource::File(PathBuf::from(v))),
                get("BACKEND_TEST_MODEL_URL").map(ModelSource::Url),
                get("BACKEND_TEST_MODEL_NAME").map(ModelSource::Name),
            ],
            "BACKEND_TEST_MODEL_FILE, BACKEND_TEST_MODEL_URL and BACKEND_TEST_MODEL_NAME",
        )?;
        let embedding_layout = match get("BACKEND_TEST_EMBEDDING_LAYOUT")
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None => None,
            Some("final") => Some(EmbeddingLayout::Final),
            Some("per_token") => Some(EmbeddingLayout::PerToken),
            Some(other) => return Err(ConfigError::EmbeddingLayout(other.to_string())),
        };
        let caps = get("BACKEND_TEST_CAPS")
            .unwrap_or_else(|| DEFAULT_CAPS.to_string())
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| Capability::parse(c).ok_or_else(|| ConfigError::UnknownCapability(c.into())))
            .collect::<Result<Vec<_>, _>>()?;
        let number = |name: &'static str, default: u64| -> Result<u64, ConfigError> {
            match get(name) {
                None => Ok(default),
                Some(v) => {
                    v.trim()
                        .parse::<u64>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or(ConfigError::Number {
                            var: name,
                            value: v,
                        })
                }
            }
        };
        // A list variable's non-empty entries, trimmed.
        let list = |name: &str, separator: char| -> Vec<String> {
            get(name)
                .map(|v| {
                    v.split(separator)
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        let small = |name: &'static str, default: u64| -> Result<i32, ConfigError> {
            let n = number(name, default)?;
            i32::try_from(n).map_err(|_| ConfigError::Number {
                var: name,
                value: n.to_string(),
            })
        };
        Ok(Config {
            target,
            model,
            caps,
            prompt: get("BACKEND_TEST_PROMPT").unwrap_or_else(|| DEFAULT_PROMPT.into()),
            ctx_size: small("BACKEND_TEST_CTX_SIZE", 512)?,
            threads: small("BACKEND_TEST_THREADS", 4)?,
            options: list("BACKEND_TEST_OPTIONS", ','),
            extra_files: list("BACKEND_TEST_EXTRA_FILES", '|'),
            embedding_layout,
            tool_prompt: get("BACKEND_TEST_TOOL_PROMPT")
                .unwrap_or_else(|| DEFAULT_TOOL_PROMPT.into()),
            tool_name: get("BACKEND_TEST_TOOL_NAME").unwrap_or_else(|| DEFAULT_TOOL_NAME.into()),
            token: get("LOCALAI_GRPC_AUTH_TOKEN"),
            replay_option: get("BACKEND_TEST_REPLAY_OPTION"),
            concurrency: small("BACKEND_TEST_CONCURRENCY", 4)? as usize,
            trial_timeout: Duration::from_secs(number("BACKEND_TEST_TIMEOUT", 300)?),
            startup_timeout: Duration::from_secs(number("BACKEND_TEST_STARTUP_TIMEOUT", 60)?),
        })
    }

    /// Whether `cap` was asked for.
    pub fn requested(&self, cap: Capability) -> bool {
        self.caps.contains(&cap)
    }
}

fn one_of<T, const N: usize>(
    values: [Option<T>; N],
    names: &'static str,
) -> Result<Option<T>, ConfigError> {
    let mut set = values.into_iter().flatten();
    let first = set.next();
    if set.next().is_some() {
        return Err(ConfigError::Conflict(names));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_env(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn localai_defaults() {
        let c = config(&[]).unwrap();
        assert_eq!(c.target, None);
        assert_eq!(
            c.caps,
            vec![
                Capability::Health,
                Capability::Load,
                Capability::Predict,
                Capability::Stream
            ]
        );
        assert_eq!(c.prompt, DEFAULT_PROMPT);
        assert_eq!((c.ctx_size, c.threads), (512, 4));
        assert_eq!(c.tool_name, "get_weather");
        assert!(c.options.is_empty());
    }

    #[test]
    fn options_caps_and_model() {
        let c = config(&[
            ("BACKEND_ADDR", "127.0.0.1:1"),
            ("BACKEND_TEST_MODEL_NAME", "qwen"),
            ("BACKEND_TEST_CAPS", "tools, stream_tools,"),
            ("BACKEND_TEST_OPTIONS", "tool_parser:hermes,proxy:host:8080"),
        ])
        .unwrap();
        assert_eq!(c.target, Some(Target::Addr("127.0.0.1:1".into())));
        assert_eq!(c.model, Some(ModelSource::Name("qwen".into())));
        assert_eq!(c.caps, vec![Capability::Tools, Capability::StreamTools]);
        assert_eq!(c.options, vec!["tool_parser:hermes", "proxy:host:8080"]);
    }

    #[test]
    fn extra_files_and_the_embedding_layout() {
        let c = config(&[
            (
                "BACKEND_TEST_EXTRA_FILES",
                "https://h/a.gguf#tok.gguf| https://h/b.txt |",
            ),
            ("BACKEND_TEST_EMBEDDING_LAYOUT", "Per_Token"),
        ])
        .unwrap();
        assert_eq!(
            c.extra_files,
            vec!["https://h/a.gguf#tok.gguf", "https://h/b.txt"]
        );
        assert_eq!(c.embedding_layout, Some(EmbeddingLayout::PerToken));
        assert_eq!(config(&[]).unwrap().embedding_layout, None);
        assert!(matches!(
            config(&[("BACKEND_TEST_EMBEDDING_LAYOUT", "pooled")]),
            Err(ConfigError::EmbeddingLayout(l)) if l == "pooled"
        ));
    }

    #[test]
    fn mistakes_are_errors() {
        assert!(matches!(
            config(&[("BACKEND_TEST_CAPS", "health,streaming")]),
            Err(ConfigError::UnknownCapability(c)) if c == "streaming"
        ));
        assert!(matches!(
            config(&[("BACKEND_BINARY", "a"), ("BACKEND_ADDR", "b")]),
            Err(ConfigError::Conflict(_))
        ));
        assert!(matches!(
            config(&[("BACKEND_TEST_CTX_SIZE", "-1")]),
            Err(ConfigError::Number { .. })
        ));
        assert!(matches!(
            config(&[("BACKEND_IMAGE", "a"), ("BACKEND_ADDR", "b")]),
            Err(ConfigError::Conflict(_))
        ));
        assert!(matches!(
            config(&[("BACKEND_IMAGE", "a"), ("BACKEND_IMAGE_RUN", "vm")]),
            Err(ConfigError::ImageRun(r)) if r == "vm"
        ));
    }

    #[test]
    fn images_run_as_containers_unless_told() {
        let c = config(&[("BACKEND_IMAGE", "localai-rs/llama-cpp:dev")]).unwrap();
        assert_eq!(
            c.target,
            Some(Target::Image {
                reference: "localai-rs/llama-cpp:dev".into(),
                run: ImageRun::Container
            })
        );
        let c = config(&[
            ("BACKEND_IMAGE", "localai-rs/llama-cpp:dev"),
            ("BACKEND_IMAGE_RUN", "host"),
        ])
        .unwrap();
        assert!(matches!(
            c.target,
            Some(Target::Image {
                run: ImageRun::Host,
                ..
            })
        ));
    }
}
