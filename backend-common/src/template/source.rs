//! Where chat templates come from: a Hugging Face model folder (`chat_template.jinja`,
//! `additional_chat_templates/*.jinja`, `tokenizer_config.json`), or a plain string such
//! as a GGUF's `tokenizer.chat_template`; and how one of several named templates is picked.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::error::TemplateError;

/// The chat template(s) a model ships.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSource {
    /// One template, used for every request.
    Single(String),
    /// Named templates (`tokenizer_config.json`'s list form), in file order.
    Named(Vec<(String, String)>),
}

impl TemplateSource {
    /// Picks the template transformers would use: "tool_use" when tools are given and
    /// the model has one, else "default".
    pub fn select(&self, has_tools: bool) -> Result<(&str, &str), TemplateError> {
        match self {
            TemplateSource::Single(source) => Ok(("default", source)),
            TemplateSource::Named(templates) => {
                let find = |wanted: &str| {
                    templates
                        .iter()
                        .find(|(name, _)| name == wanted)
                        .map(|(name, source)| (name.as_str(), source.as_str()))
                };
                has_tools
                    .then(|| find("tool_use"))
                    .flatten()
                    .or_else(|| find("default"))
                    .ok_or_else(|| TemplateError::NoDefaultTemplate {
                        names: templates.iter().map(|(name, _)| name.clone()).collect(),
                    })
            }
        }
    }
}

/// The bos/eos tokens a template may print (unset ones stay undefined, as in transformers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// The beginning-of-sequence token text, e.g. `<s>`.
    pub bos_token: Option<String>,
    /// The end-of-sequence token text, e.g. `</s>`.
    pub eos_token: Option<String>,
}

/// What a model folder says about chat templating.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HfTemplateConfig {
    /// The template(s), if the folder has any.
    pub templates: Option<TemplateSource>,
    /// The special tokens from `tokenizer_config.json` (or `special_tokens_map.json`).
    pub tokens: SpecialTokens,
}

impl HfTemplateConfig {
    /// Parses a `tokenizer_config.json` document; `path` is only used in error messages.
    pub fn from_tokenizer_config(json: &str, path: &Path) -> Result<Self, TemplateError> {
        let invalid = |reason: String| TemplateError::InvalidConfig {
            path: path.to_path_buf(),
            reason,
        };
        let config: Json = serde_json::from_str(json).map_err(|e| invalid(e.to_string()))?;
        let config = config
            .as_object()
            .ok_or_else(|| invalid("not a JSON object".to_owned()))?;
        let templates = match config.get("chat_template") {
            None | Some(Json::Null) => None,
            Some(Json::String(source)) => Some(TemplateSource::Single(source.clone())),
            Some(Json::Array(entries)) => Some(TemplateSource::Named(
                entries
                    .iter()
                    .map(named_template)
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        invalid(
                            "chat_template list entries must be {\"name\": ..., \"template\": ...}"
                                .to_owned(),
                        )
                    })?,
            )),
            Some(_) => {
                return Err(invalid(
                    "chat_template must be a string or a list of {name, template}".to_owned(),
                ));
            }
        };
        Ok(HfTemplateConfig {
            templates,
            tokens: SpecialTokens {
                bos_token: token_text(config.get("bos_token")),
                eos_token: token_text(config.get("eos_token")),
            },
        })
    }

    /// Reads a Hugging Face model folder the way transformers does: `chat_template.jinja`
    /// and `additional_chat_templates/*.jinja` win over `tokenizer_config.json`'s
    /// `chat_template`; bos/eos come from `tokenizer_config.json`, else `special_tokens_map.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, TemplateError> {
        let mut config = match read_optional(&dir.join("tokenizer_config.json"))? {
            Some((path, json)) => Self::from_tokenizer_config(&json, &path)?,
            None => HfTemplateConfig::default(),
        };
        if (config.tokens.bos_token.is_none() || config.tokens.eos_token.is_none())
            && let Some((path, json)) = read_optional(&dir.join("special_tokens_map.json"))?
        {
            let map: Json =
                serde_json::from_str(&json).map_err(|e| TemplateError::InvalidConfig {
                    path,
                    reason: e.to_string(),
                })?;
            let tokens = &mut config.tokens;
            tokens.bos_token = tokens.bos_token.take().or(token_text(map.get("bos_token")));
            tokens.eos_token = tokens.eos_token.take().or(token_text(map.get("eos_token")));
        }
        if let Some(files) = template_files(dir)? {
            config.templates = Some(files);
        }
        Ok(config)
    }
}

/// `chat_template.jinja` as "default" plus `additional_chat_templates/<name>.jinja`.
fn template_files(dir: &Path) -> Result<Option<TemplateSource>, TemplateError> {
    let mut named = Vec::new();
    if let Some((_, source)) = read_optional(&dir.join("chat_template.jinja"))? {
        named.push(("default".to_owned(), source));
    }
    let extra_dir = dir.join("additional_chat_templates");
    if extra_dir.is_dir() {
        let io_error = |source| TemplateError::Io {
            path: extra_dir.clone(),
            source,
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&extra_dir)
            .map_err(io_error)?
            .map(|entry| entry.map(|e| e.path()).map_err(io_error))
            .collect::<Result<_, _>>()?;
        paths.sort();
        for path in paths {
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".jinja"))
            else {
                continue;
            };
            let name = name.to_owned();
            if let Some((_, source)) = read_optional(&path)? {
                named.push((name, source));
            }
        }
    }
    // transformers keeps a lone "default" as a plain string template.
    if let [(name, _)] = named.as_slice()
        && name == "default"
    {
        return Ok(named
            .pop()
            .map(|(_, source)| TemplateSource::Single(source)));
    }
    Ok((!named.is_empty()).then_some(TemplateSource::Named(named)))
}

fn named_template(entry: &Json) -> Option<(String, String)> {
    Some((
        entry.get("name")?.as_str()?.to_owned(),
        entry.get("template")?.as_str()?.to_owned(),
    ))
}

/// A token is written as a string or as an AddedToken object `{"content": ...}`.
fn token_text(value: Option<&Json>) -> Option<String> {
    match value? {
        Json::String(text) => Some(text.clone()),
        Json::Object(token) => token.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

fn read_optional(path: &Path) -> Result<Option<(PathBuf, String)>, TemplateError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some((path.to_path_buf(), text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TemplateError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<HfTemplateConfig, TemplateError> {
        HfTemplateConfig::from_tokenizer_config(json, Path::new("tokenizer_config.json"))
    }

    #[test]
    fn list_form_picks_tool_use_with_tools_and_default_without() {
        let config = parse(
            r#"{"chat_template": [{"name": "default", "template": "D"}, {"name": "tool_use", "template": "T"}, {"name": "rag", "template": "R"}],
                "bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>"}"#,
        )
        .unwrap();
        let templates = config.templates.unwrap();
        assert_eq!(templates.select(false).unwrap(), ("default", "D"));
        assert_eq!(templates.select(true).unwrap(), ("tool_use", "T"));
        assert_eq!(config.tokens.bos_token.as_deref(), Some("<s>"));
        assert_eq!(config.tokens.eos_token.as_deref(), Some("</s>"));
    }

    #[test]
    fn list_form_without_default_is_a_clear_error() {
        let config = parse(r#"{"chat_template": [{"name": "rag", "template": "R"}]}"#).unwrap();
        let templates = config.templates.unwrap();
        assert!(matches!(
            templates.select(false),
            Err(TemplateError::NoDefaultTemplate { names }) if names == ["rag"]
        ));
        assert!(matches!(
            templates.select(true),
            Err(TemplateError::NoDefaultTemplate { .. })
        ));
    }

    #[test]
    fn string_form_and_missing_template() {
        let single = parse(r#"{"chat_template": "S", "bos_token": null}"#).unwrap();
        assert_eq!(
            single.templates.unwrap().select(true).unwrap(),
            ("default", "S")
        );
        assert_eq!(single.tokens.bos_token, None);
        assert_eq!(parse("{}").unwrap().templates, None);
        assert!(matches!(
            parse(r#"{"chat_template": 3}"#),
            Err(TemplateError::InvalidConfig { .. })
        ));
        assert!(matches!(
            parse(r#"{"chat_template": [{"name": "x"}]}"#),
            Err(TemplateError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn folder_files_win_over_tokenizer_config() {
        let dir = std::env::temp_dir().join(format!("template-source-{}", std::process::id()));
        let extra = dir.join("additional_chat_templates");
        std::fs::create_dir_all(&extra).unwrap();
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"chat_template": "from config", "eos_token": "</s>"}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("special_tokens_map.json"),
            r#"{"bos_token": "<s>"}"#,
        )
        .unwrap();
        let config = HfTemplateConfig::from_dir(&dir).unwrap();
        assert_eq!(
            config.templates,
            Some(TemplateSource::Single("from config".to_owned()))
        );
        assert_eq!(config.tokens.bos_token.as_deref(), Some("<s>"));

        std::fs::write(dir.join("chat_template.jinja"), "from file").unwrap();
        let config = HfTemplateConfig::from_dir(&dir).unwrap();
        assert_eq!(
            config.templates,
            Some(TemplateSource::Single("from file".to_owned()))
        );

        std::fs::write(extra.join("tool_use.jinja"), "tools file").unwrap();
        let config = HfTemplateConfig::from_dir(&dir).unwrap();
        assert_eq!(
            config.templates,
            Some(TemplateSource::Named(vec![
                ("default".to_owned(), "from file".to_owned()),
                ("tool_use".to_owned(), "tools file".to_owned()),
            ]))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
