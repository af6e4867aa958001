//! Fetching from S3 with an endpoint override (path-style), against the test server.

mod support;

use support::{Fault, FileServer, Model, init_tracing};
use taimatsu_model_fetch::sigv4::{self, Credentials, EMPTY_PAYLOAD_SHA256};
use taimatsu_model_fetch::{SourceEnv, fetch_with_env};

fn env(endpoint: &str) -> SourceEnv {
    SourceEnv::from_pairs(
        [
            ("AWS_ACCESS_KEY_ID", "AKIDTEST"),
            ("AWS_SECRET_ACCESS_KEY", "secret/key+test"),
            ("AWS_REGION", "eu-central-1"),
            ("AWS_ENDPOINT_URL_S3", endpoint),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    )
}

#[tokio::test]
async fn s3_requests_are_path_style_and_signed() {
    init_tracing();
    let work = tempfile::tempdir().unwrap();
    let model = Model::standard(work.path(), "models/smol/v1");
    let server = FileServer::start(&work.path().join("source")).await;
    server.fault("models/smol/v1/weights/model-00002.safetensors", Fault::CutAfter(123_456));
    let dest = work.path().join("dest");

    let options = model.options("s3://models/smol/v1/".into(), &dest);
    let report = fetch_with_env(&options, &env(&server.url(""))).await.unwrap();
    model.assert_fetched(&dest, &report);

    let requests = server.requests();
    assert_eq!(requests.len(), 4, "three files, one of them resumed");
    let credentials = Credentials {
        access_key_id: "AKIDTEST".into(),
        secret_access_key: "secret/key+test".into(),
        session_token: None,
    };
    for request in &requests {
        assert!(request.path.starts_with("models/smol/v1/"), "{}", request.path);
        let header = |name: &str| request.headers.get(name).map(|v| v.to_str().unwrap().to_owned());
        let amz_date = header("x-amz-date").expect("x-amz-date");
        assert!(amz_date.len() == 16 && amz_date.as_bytes()[8] == b'T' && amz_date.ends_with('Z'), "{amz_date}");
        assert_eq!(header("x-amz-content-sha256").as_deref(), Some(EMPTY_PAYLOAD_SHA256));

        let authorization = header("authorization").expect("authorization");
        let range = header("range");
        let signed_headers = if range.is_some() {
            "host;range;x-amz-content-sha256;x-amz-date"
        } else {
            "host;x-amz-content-sha256;x-amz-date"
        };
        let prefix = format!(
            "AWS4-HMAC-SHA256 Credential=AKIDTEST/{}/eu-central-1/s3/aws4_request, SignedHeaders={signed_headers}, Signature=",
            &amz_date[..8]
        );
        assert!(authorization.starts_with(&prefix), "{authorization}");
        let signature = &authorization[prefix.len()..];
        assert!(signature.len() == 64 && signature.bytes().all(|b| b.is_ascii_hexdigit()), "{signature}");

        // Recompute the signature from what arrived (the signer itself is checked against
        // AWS's published examples in its unit tests): host with port, encoded path, range.
        let host = header("host").unwrap();
        let mut signed = vec![
            ("host", host.as_str()),
            ("x-amz-content-sha256", EMPTY_PAYLOAD_SHA256),
            ("x-amz-date", amz_date.as_str()),
        ];
        if let Some(range) = &range {
            signed.push(("range", range.as_str()));
        }
        let expected = sigv4::authorization(
            &credentials,
            "eu-central-1",
            "s3",
            &amz_date,
            &sigv4::Request {
                method: "GET",
                path: &request.raw_path,
                query: "",
                headers: &signed,
                payload_sha256: EMPTY_PAYLOAD_SHA256,
            },
        );
        assert_eq!(authorization, expected);
    }
    let resumed = server.requests_for("models/smol/v1/weights/model-00002.safetensors");
    assert_eq!(resumed[1].headers["range"], "bytes=123456-");
    assert_eq!(
        server.requests_for("models/smol/v1/weights/model 00001.safetensors")[0].raw_path,
        "/models/smol/v1/weights/model%2000001.safetensors"
    );
}

#[tokio::test]
async fn s3_without_credentials_names_the_variables() {
    let work = tempfile::tempdir().unwrap();
    let model = Model::standard(work.path(), "b");
    let options = model.options("s3://b/".into(), &work.path().join("dest"));
    let err = fetch_with_env(&options, &SourceEnv::default()).await.unwrap_err();
    assert_eq!(err.reason(), "FetchFailed");
    assert!(err.to_string().contains("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"), "{err}");
}
