//! Fuzz target: LocalAI `key:value` options, plus the other small string parsers a worker
//! meets at startup (`--addr` and `ToolChoice`).
//!
//! The input, as lossy UTF-8, is split on `\n` into option entries and parsed with
//! [`Options::parse`]. Every getter runs on keys taken from the entries and on fixed keys,
//! and must agree with a plain model of the documented rules: split on the first colon,
//! trim, a bare key is `true`, empty keys are dropped, the last occurrence wins. Typed
//! getters answer `Ok(None)` exactly when `get_str` finds nothing, report the raw key and
//! value when they fail, and `get_float` never yields a non-finite number. Each entry also
//! goes through `cli::parse_addr` (an accepted address prints back to itself) and each
//! entry and the whole input through `ToolChoice::parse`. Nothing may panic.
//!
//! Run with `cargo fuzz run options` from `backend-common/`.

#![no_main]

use std::collections::HashMap;

use backend_common::chat::ToolChoice;
use backend_common::cli::parse_addr;
use backend_common::options::{OptionError, Options};
use libfuzzer_sys::fuzz_target;

/// Keys real workers ask for, and a few awkward ones.
const FIXED_KEYS: &[&str] = &[
    "",
    " ",
    ":",
    "k",
    " k",
    "true",
    "parallel",
    "n_parallel",
    "use_jinja",
    "gpu_memory_utilization",
];

/// A typed getter's answer must match what `get_str` found.
fn agrees<T>(raw: Option<(&str, &str)>, result: Result<Option<T>, OptionError>) {
    match result {
        Ok(None) => assert!(raw.is_none(), "typed getter missed {raw:?}"),
        Ok(Some(_)) => assert!(raw.is_some(), "typed getter invented a value"),
        Err(error) => assert_eq!(
            Some((error.key.as_str(), error.value.as_str())),
            raw,
            "error names another key or value"
        ),
    }
}

/// Runs every getter on `keys`.
fn exercise(options: &Options, keys: &[&str]) {
    let raw = options.get_str(keys);
    if let Some((key, _)) = raw {
        assert!(keys.contains(&key), "get_str answered an unasked key");
    }
    agrees(raw, options.get_bool(keys));
    agrees(raw, options.get_int::<i32>(keys));
    agrees(raw, options.get_int::<u32>(keys));
    agrees(raw, options.get_int::<i64>(keys));
    let float = options.get_float(keys);
    if let Ok(Some(value)) = float {
        assert!(value.is_finite(), "get_float gave {value}");
    }
    agrees(raw, float);
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let entries: Vec<&str> = text.split('\n').collect();
    let options = Options::parse(&entries);

    // The documented rules; later entries overwrite earlier ones.
    let mut model: HashMap<&str, &str> = HashMap::new();
    for entry in &entries {
        let entry = entry.trim();
        let (key, value) = entry
            .split_once(':')
            .map_or((entry, "true"), |(k, v)| (k.trim(), v.trim()));
        if !key.is_empty() {
            model.insert(key, value);
        }
    }

    // A stored key is trimmed, so " absent" is never one: the alias falls through.
    for (&key, &value) in &model {
        assert_eq!(options.get_str(&[key]), Some((key, value)), "entry {key:?}");
        assert_eq!(options.get_str(&[" absent", key]), Some((key, value)));
        if value == "true" {
            assert_eq!(options.get_bool(&[key]), Ok(Some(true)), "bare {key:?}");
        }
        exercise(&options, &[key]);
    }
    let keys: Vec<&str> = model.keys().copied().collect();
    exercise(&options, &keys);
    for key in FIXED_KEYS {
        exercise(&options, &[key]);
        assert_eq!(options.get_str(&[key]).is_some(), model.contains_key(key));
    }
    exercise(&options, FIXED_KEYS);
    for entry in &entries {
        // Untrimmed and uncut: found only when it happens to be a stored key.
        exercise(&options, &[entry]);
        assert_eq!(
            options.get_str(&[entry]).is_some(),
            model.contains_key(entry)
        );
    }

    let mut unknown = options.unknown_keys(&[]);
    unknown.sort_unstable();
    let mut expected = keys.clone();
    expected.sort_unstable();
    assert_eq!(unknown, expected);
    assert!(options.unknown_keys(&keys).is_empty());
    assert_eq!(options.is_empty(), model.is_empty());

    // Stored entries written back as `key:value` parse to the same options.
    let rewritten: Vec<String> = model.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    assert_eq!(Options::parse(&rewritten), options);

    for entry in &entries {
        if let Ok(addr) = parse_addr(entry) {
            assert_eq!(parse_addr(&addr.to_string()), Ok(addr));
        }
        if let Ok(ToolChoice::Function(name)) = ToolChoice::parse(entry) {
            assert!(!name.is_empty());
        }
    }
    let _ = ToolChoice::parse(&text);
});
