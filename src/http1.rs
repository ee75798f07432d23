//! A minimal HTTP/1.1 client for plain-HTTP calls between local components: the mount helper
//! asking the emulator where buckets live, the emulator creating its preset bucket in a local
//! object store. No TLS and no signing: these only ever talk to loopback or in-cluster services.

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends one request to `base` (`http://HOST:PORT`) and returns the status and body.
pub async fn request(
    base: &str,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let Some(hostport) = base.strip_prefix("http://") else {
        bail!("{base} is not http://HOST:PORT");
    };
    let hostport = hostport.trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(hostport)
        .await
        .with_context(|| format!("connecting to {base}"))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("malformed answer from {base}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in the answer from {base}"))?;
    Ok((status, body.to_owned()))
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
