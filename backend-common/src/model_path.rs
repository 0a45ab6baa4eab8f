//! Where LoadModel's model lives: `ModelFile` if set, else `Model` (absolute, or relative
//! to `ModelPath`), as LocalAI sends them.
use std::path::{Path, PathBuf};

use crate::engine::EngineError;
use crate::pb::ModelOptions;

/// The path LocalAI means by a LoadModel request. Existence is the engine's check, since
/// some engines also accept names that are not paths.
pub fn resolve(options: &ModelOptions) -> Result<PathBuf, EngineError> {
    if !options.model_file.is_empty() {
        return Ok(PathBuf::from(&options.model_file));
    }
    if options.model.is_empty() {
        return Err(EngineError::InvalidArgument(
            "LoadModel needs `ModelFile` (a full path) or `Model` (a path, absolute or relative to `ModelPath`)"
                .to_string(),
        ));
    }
    let model = Path::new(&options.model);
    if model.is_absolute() || options.model_path.is_empty() {
        Ok(model.to_path_buf())
    } else {
        Ok(Path::new(&options.model_path).join(model))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(model: &str, file: &str, dir: &str) -> ModelOptions {
        ModelOptions {
            model: model.into(),
            model_file: file.into(),
            model_path: dir.into(),
            ..Default::default()
        }
    }

    #[test]
    fn model_file_wins() {
        let p = resolve(&opts("m.gguf", "/abs/x.gguf", "/models")).unwrap();
        assert_eq!(p, PathBuf::from("/abs/x.gguf"));
    }

    #[test]
    fn model_is_relative_to_model_path() {
        assert_eq!(
            resolve(&opts("m.gguf", "", "/models")).unwrap(),
            PathBuf::from("/models/m.gguf")
        );
        assert_eq!(
            resolve(&opts("/abs/m.gguf", "", "/models")).unwrap(),
            PathBuf::from("/abs/m.gguf")
        );
        assert_eq!(
            resolve(&opts("m.gguf", "", "")).unwrap(),
            PathBuf::from("m.gguf")
        );
    }

    #[test]
    fn nothing_given_is_invalid() {
        assert!(matches!(
            resolve(&opts("", "", "/models")),
            Err(EngineError::InvalidArgument(_))
        ));
    }
}
