//! Manifest fixtures with `# resource:` and `# expect:` header lines.

use std::path::{Path, PathBuf};

use kube::Client;

pub struct Fixture {
    pub path: PathBuf,
    /// Plural resource name the manifest is POSTed to.
    pub resource: String,
    /// Substrings the API server's error message must contain.
    pub expect: Vec<String>,
    pub body: String,
}

pub fn load_dir(dir: &Path) -> Vec<Fixture> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let body = std::fs::read_to_string(&path).expect("fixture readable");
            let header = |key: &str| -> Vec<String> {
                body.lines().filter_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_owned()).collect()
            };
            let resource =
                header("# resource:").pop().unwrap_or_else(|| panic!("{} has no '# resource:' line", path.display()));
            let expect = header("# expect:");
            Fixture { path, resource, expect, body }
        })
        .collect()
}

/// POSTs the fixture's raw bytes as YAML, exactly as written, with strict field
/// validation (kubectl's default), so the API server alone judges it.
pub async fn post_raw(client: &Client, namespace: &str, fixture: &Fixture) -> Result<(), kube::Error> {
    let scope =
        if fixture.resource == "acceleratorprofiles" { String::new() } else { format!("namespaces/{namespace}/") };
    let url = format!("/apis/taimatsu.dev/v1alpha1/{scope}{}?fieldValidation=Strict", fixture.resource);
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/yaml")
        .body(fixture.body.clone().into_bytes())
        .expect("request");
    client.request_text(request).await.map(|_| ())
}

pub fn fixtures_dir(kind: &str) -> PathBuf {
    taimatsu_tests::repo_root().join("tests/fixtures").join(kind)
}
