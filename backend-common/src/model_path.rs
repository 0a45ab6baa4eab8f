//! Where LoadModel's model lives: `ModelFile` if set, else `Model` (absolute, or relative
//! to `ModelPath`), as LocalAI sends them.
use std::path::{Path, PathBuf};

use crate::engine::EngineError;
use crate::gguf::GgufHeader;
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

/// Reads the header of the GGUF file at `path`, naming what is wrong otherwise: a missing path
/// is [`EngineError::ModelNotFound`]; a folder, a file without the GGUF magic, a malformed
/// header or a file shorter than its tensor table says is [`EngineError::InvalidModel`].
pub fn check_gguf_file(path: &Path) -> Result<GgufHeader, EngineError> {
    let meta =
        std::fs::metadata(path).map_err(|_| EngineError::ModelNotFound(path.to_path_buf()))?;
    let invalid = |reason: String| EngineError::InvalidModel {
        path: path.to_path_buf(),
        reason,
    };
    if meta.is_dir() {
        return Err(invalid(
            "is a directory; this backend loads one GGUF file".into(),
        ));
    }
    GgufHeader::read(path).map_err(|e| invalid(e.to_string()))
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
    fn gguf_check_names_the_problem() {
        let dir = std::env::temp_dir();
        assert!(matches!(
            check_gguf_file(&dir),
            Err(EngineError::InvalidModel { .. })
        ));
        let missing = dir.join("no-such-model-file.gguf");
        assert!(matches!(
            check_gguf_file(&missing),
            Err(EngineError::ModelNotFound(_))
        ));
        let text = dir.join(format!("not-gguf-{}.gguf", std::process::id()));
        std::fs::write(&text, b"text").unwrap();
        let result = check_gguf_file(&text);
        std::fs::write(&text, b"GGUF\x03\x00").unwrap();
        let cut = check_gguf_file(&text);
        std::fs::remove_file(&text).unwrap();
        for result in [result, cut] {
            assert!(matches!(result, Err(EngineError::InvalidModel { .. })));
        }
    }

    #[test]
    fn nothing_given_is_invalid() {
        assert!(matches!(
            resolve(&opts("", "", "/models")),
            Err(EngineError::InvalidArgument(_))
        ));
    }
}
