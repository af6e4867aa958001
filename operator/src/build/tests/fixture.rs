//! The one comparison every fixture test makes: a built object, serialized, against its
//! reviewed fixture, `build/fixtures/<case>/<object>.json`, as a whole.
//!
//! Values are compared, not text, so what counts is what the API server would receive:
//! every field, present or absent, empty or not, and the order of every list.
//!
//! After an intended change, regenerate with
//! `TAIMATSU_BLESS=1 cargo test -p taimatsu-operator --lib build::tests` and review the
//! diff before committing: a fixture is only worth what its review was.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

/// Asserts that `actual` serializes to exactly the fixture `<case>/<object>.json`.
pub fn check(case: &str, object: &str, actual: &impl Serialize) {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/build/fixtures").join(case).join(format!("{object}.json"));
    let actual = serde_json::to_value(actual).expect("a built object serializes");
    if std::env::var_os("TAIMATSU_BLESS").is_some() {
        let rendered = serde_json::to_string_pretty(&actual).expect("json") + "\n";
        std::fs::create_dir_all(path.parent().expect("fixture directory")).expect("create fixture directory");
        std::fs::write(&path, rendered).expect("write fixture");
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let expected: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    pretty_assertions::assert_eq!(expected, actual, "{} differs from the builder's output", path.display());
}
