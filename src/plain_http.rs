//! Plain-HTTP calls between local components, on reqwest (already in the tree through
//! object_store): the mount helper asking the emulator where buckets live, the emulator creating
//! its preset bucket in a local object store, tests reaching admin endpoints. No signing: these
//! only ever talk to loopback or in-cluster services. Every call has a deadline.

use std::time::Duration;

use anyhow::{Context, bail};

/// The longest one call may take, connecting included.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one request to `base` (`http://HOST:PORT`) and returns the status and body.
pub async fn request(
    base: &str,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    send(base, method, path, body, TIMEOUT).await
}

async fn send(
    base: &str,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    if !base.starts_with("http://") {
        bail!("{base} is not http://HOST:PORT");
    }
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .with_context(|| format!("{method} is not an HTTP method"))?;
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .no_proxy()
        .build()
        .context("building an HTTP client")?;
    let response = client
        .request(method, &url)
        .header("content-type", "application/xml")
        .body(body.to_owned())
        .send()
        .await
        .with_context(|| format!("calling {url}"))?;
    let status = response.status().as_u16();
    let text = response
        .text()
        .await
        .with_context(|| format!("reading the answer from {url}"))?;
    Ok((status, text))
}

/// Creates `bucket` with versioning on (as S3 Files requires) on an S3-compatible server that
/// takes unsigned requests, such as moto; an existing bucket is fine.
pub async fn ensure_versioned_bucket(base: &str, bucket: &str) -> anyhow::Result<()> {
    let (status, body) = request(base, "PUT", &format!("/{bucket}"), "").await?;
    if status != 200 && !body.contains("BucketAlreadyOwnedByYou") {
        bail!("creating bucket {bucket} at {base}: HTTP {status}: {body}");
    }
    let versioning = r#"<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Status>Enabled</Status></VersioningConfiguration>"#;
    let (status, body) = request(base, "PUT", &format!("/{bucket}?versioning"), versioning).await?;
    if status != 200 {
        bail!("turning on versioning for {bucket} at {base}: HTTP {status}: {body}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_server_that_never_answers_is_an_error_not_a_hang() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Accepts and then says nothing.
        let _held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let base = format!("http://{addr}");
        let started = std::time::Instant::now();
        let err = send(&base, "GET", "/", "", Duration::from_millis(300))
            .await
            .expect_err("timed out");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(format!("{err:#}").contains("calling http://"), "{err:#}");
    }

    #[tokio::test]
    async fn only_plain_http_bases_are_taken() {
        let err = request("https://example.com", "GET", "/", "")
            .await
            .expect_err("https");
        assert!(err.to_string().contains("http://HOST:PORT"), "{err}");
    }
}
