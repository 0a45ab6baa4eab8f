//! Hugging Face folder fixtures, exported from the real GGUFs by this crate's `export-hf`
//! code once per target directory and shared by the test binaries.
use std::path::PathBuf;
use std::sync::Mutex;

use candle_core::DType;

use backend_vllm_rs::export::export_hf;

/// The folder exported from GGUF `name` with weights in `dtype`; written on first use (to a
/// private folder, then renamed into place, so concurrent test binaries never see half of one).
pub fn exported(name: &str, dtype: DType) -> PathBuf {
    // Tests of one binary share its process id, so they take turns: the second finds the
    // folder the first wrote instead of exporting into the same scratch folder.
    static EXPORTING: Mutex<()> = Mutex::new(());
    let _turn = EXPORTING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hf-fixtures");
    let dir = root.join(format!("{name}.{dtype:?}"));
    if dir.join("config.json").is_file() {
        return dir;
    }
    let scratch = root.join(format!("{name}.{dtype:?}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    export_hf(&e2e_backends::testing::model(name), &scratch, dtype)
        .unwrap_or_else(|e| panic!("exporting {name}: {e}"));
    if std::fs::rename(&scratch, &dir).is_err() {
        // Another test binary finished the same export first.
        std::fs::remove_dir_all(&scratch).unwrap();
    }
    dir
}
