//! `index.yaml`, the LocalAI gallery entries of our backends: it parses in LocalAI's schema,
//! every meta capability names an existing concrete entry, and every entry has its
//! `-development` twin.
use std::collections::{BTreeMap, HashMap};

/// One gallery entry (LocalAI's fields; unknown fields are refused to catch typos).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    #[serde(default)]
    alias: Option<String>,
    #[serde(default)]
    uri: Option<String>,
    #[serde(default)]
    mirrors: Vec<String>,
    #[serde(default)]
    capabilities: BTreeMap<String, String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    description: Option<String>,
    license: String,
    #[serde(default)]
    icon: Option<String>,
    #[serde(default)]
    urls: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
}

/// The capability keys every meta entry maps (`default` is what a machine without a GPU
/// reports).
const REQUIRED_KEYS: [&str; 5] = [
    "default",
    "cpu",
    "nvidia",
    "nvidia-cuda-12",
    "nvidia-cuda-13",
];

fn entries() -> Vec<Entry> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../index.yaml");
    let text = std::fs::read_to_string(path).expect("index.yaml at the repository root");
    serde_yaml::from_str(&text).expect("index.yaml is a list of gallery entries")
}

/// `host/path:tag`, with a lower-case repository path.
fn is_oci_ref(uri: &str) -> bool {
    let Some((repository, tag)) = uri.rsplit_once(':') else {
        return false;
    };
    let (host, path) = repository.split_once('/').unwrap_or(("", ""));
    host.contains('.')
        && !path.is_empty()
        && path
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "/._-".contains(c))
        && !tag.is_empty()
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

#[test]
fn every_capability_points_at_a_concrete_entry() {
    let entries = entries();
    let by_name: HashMap<&str, &Entry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
    assert_eq!(by_name.len(), entries.len(), "entry names are unique");
    let metas: Vec<_> = entries
        .iter()
        .filter(|e| !e.capabilities.is_empty())
        .collect();
    assert!(metas.len() >= 2, "a meta entry per backend");
    for meta in metas {
        assert!(meta.uri.is_none(), "{}: a meta entry has no uri", meta.name);
        let alias = meta.alias.as_deref().unwrap_or_default();
        assert!(!alias.is_empty(), "{}: has an alias", meta.name);
        assert!(
            !["vllm", "llama-cpp", "llama.cpp"].contains(&alias),
            "{}: alias `{alias}` is an upstream backend's name",
            meta.name
        );
        for key in REQUIRED_KEYS {
            assert!(
                meta.capabilities.contains_key(key),
                "{}: no `{key}` capability",
                meta.name
            );
        }
        for (key, target) in &meta.capabilities {
            let concrete = by_name.get(target.as_str()).unwrap_or_else(|| {
                panic!(
                    "{}: capability `{key}` names `{target}`, which is not an entry",
                    meta.name
                )
            });
            assert!(
                concrete.uri.is_some() && concrete.capabilities.is_empty(),
                "{}: capability `{key}` names `{target}`, which is not a concrete entry",
                meta.name
            );
            assert_eq!(
                meta.name.ends_with("-development"),
                target.ends_with("-development"),
                "{}: `{key}` crosses between release and development entries",
                meta.name
            );
        }
    }
}

#[test]
fn concrete_entries_are_oci_images_with_development_twins() {
    let entries = entries();
    let by_name: HashMap<&str, &Entry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
    for entry in &entries {
        assert!(
            !entry.license.is_empty() && !entry.tags.is_empty(),
            "{}",
            entry.name
        );
        assert!(
            entry.version.as_deref() != Some(""),
            "{}: empty version",
            entry.name
        );
        for url in entry.icon.iter().chain(&entry.urls) {
            assert!(
                url.starts_with("https://"),
                "{}: `{url}` is not an https URL",
                entry.name
            );
        }
        if let Some(uri) = &entry.uri {
            for image in std::iter::once(uri).chain(&entry.mirrors) {
                assert!(
                    is_oci_ref(image),
                    "{}: `{image}` is not an OCI reference",
                    entry.name
                );
            }
            let tag = uri.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
            let development = entry.name.ends_with("-development");
            assert_eq!(
                tag.starts_with("master-"),
                development,
                "{}: development entries, and only they, use the master- tag",
                entry.name
            );
        } else {
            assert!(
                entry.description.is_some(),
                "{}: a meta entry describes the backend",
                entry.name
            );
        }
        if !entry.name.ends_with("-development") {
            let twin = format!("{}-development", entry.name);
            let twin = by_name
                .get(twin.as_str())
                .unwrap_or_else(|| panic!("{}: no `{twin}` entry", entry.name));
            assert_eq!(twin.uri.is_some(), entry.uri.is_some(), "{}", entry.name);
        }
    }
}

#[test]
fn oci_reference_rule() {
    assert!(is_oci_ref(
        "ghcr.io/localai-rust/backends:latest-cpu-rust-vllm"
    ));
    for bad in [
        "backends:latest",
        "ghcr.io/Org/backends:latest",
        "ghcr.io/org/backends",
        "ghcr.io/org/b:",
    ] {
        assert!(!is_oci_ref(bad), "{bad}");
    }
}
