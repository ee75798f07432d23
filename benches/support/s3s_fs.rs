//! A fast S3-compatible server for the data-plane benchmark: `s3s-fs` (objects as files on
//! local disk, served by the `s3s` crates) run in this process on a runtime of its own, with two
//! of its quirks mended so that every tool meets the server S3 would be:
//! - replies leave at once: each connection sets TCP_NODELAY. Without it a small reply (a 4 KiB
//!   GET) waits ~40 ms for the client's delayed ACK, and every tool reads small files at ~30/s.
//! - a key that is a directory on its disk is no object: HEAD or GET of `dir` answered 500
//!   (it tries to checksum a directory), which fails our lookups and makes s3fs retry for
//!   minutes. S3 answers 404 there. And `dir/`, which s3fs PUTs for every directory it makes
//!   (s3s-fs keeps it as the directory itself), is the empty object S3 would hold.
//!
//! It has no versioning; buckets are directories of its root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http::{Extensions, HeaderMap, HeaderValue, Method, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::SimpleAuth;
use s3s::dto::{GetObjectInput, HeadObjectInput};
use s3s::route::S3Route;
use s3s::service::S3ServiceBuilder;
use s3s::{Body, S3Request, S3Response, S3Result, s3_error};

/// Requests served, by S3 operation.
pub type Requests = Arc<Mutex<BTreeMap<String, u64>>>;

/// Counts the requests signed with one access key and answers 404 for keys that are
/// directories on disk; otherwise it checks what s3s does by default (signed requests only).
struct DirectoriesAreNoObjects {
    root: PathBuf,
    counted: String,
    requests: Requests,
}

impl DirectoriesAreNoObjects {
    fn refuse_directory(&self, bucket: &str, key: &str) -> S3Result<()> {
        if self.root.join(bucket).join(key).is_dir() {
            return Err(s3_error!(NoSuchKey));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl S3Access for DirectoriesAreNoObjects {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let Some(credentials) = cx.credentials() else {
            return Err(s3_error!(AccessDenied, "Signature is required"));
        };
        if credentials.access_key == self.counted
            && let Ok(mut counts) = self.requests.lock()
        {
            *counts.entry(cx.s3_op().name().to_owned()).or_default() += 1;
        }
        Ok(())
    }

    async fn head_object(&self, req: &mut S3Request<HeadObjectInput>) -> S3Result<()> {
        self.refuse_directory(&req.input.bucket, &req.input.key)
    }

    async fn get_object(&self, req: &mut S3Request<GetObjectInput>) -> S3Result<()> {
        self.refuse_directory(&req.input.bucket, &req.input.key)
    }
}

/// Answers HEAD and GET of `dir/` keys whose directory exists: the empty object a PUT of
/// `dir/` made.
struct DirectoryObjects {
    root: PathBuf,
    counted: String,
    requests: Requests,
}

impl DirectoryObjects {
    fn directory(&self, uri: &Uri) -> Option<PathBuf> {
        let path = uri.path();
        if !path.ends_with('/') || path.matches('/').count() < 3 {
            return None;
        }
        let decoded = percent_encoding::percent_decode_str(path.trim_start_matches('/'))
            .decode_utf8()
            .ok()?;
        if decoded.split('/').any(|part| part == "..") {
            return None;
        }
        let dir = self.root.join(decoded.as_ref());
        dir.is_dir().then_some(dir)
    }
}

#[async_trait::async_trait]
impl S3Route for DirectoryObjects {
    fn is_match(&self, method: &Method, uri: &Uri, _: &HeaderMap, _: &mut Extensions) -> bool {
        (method == Method::HEAD || method == Method::GET)
            && uri.query().is_none()
            && self.directory(uri).is_some()
    }

    async fn call(&self, req: S3Request<Body>) -> S3Result<S3Response<Body>> {
        if let Some(credentials) = &req.credentials
            && credentials.access_key == self.counted
            && let Ok(mut counts) = self.requests.lock()
        {
            let op = if req.method == Method::HEAD {
                "HeadObject"
            } else {
                "GetObject"
            };
            *counts.entry(op.to_owned()).or_default() += 1;
        }
        let dir = self
            .directory(&req.uri)
            .ok_or_else(|| s3_error!(NoSuchKey))?;
        let modified = std::fs::metadata(&dir)
            .and_then(|m| m.modified())
            .map_err(|_| s3_error!(NoSuchKey))?;
        let mut response = S3Response::new(Body::empty());
        let headers = &mut response.headers;
        headers.insert("content-length", HeaderValue::from_static("0"));
        // How s3fs marks the directory objects it makes (s3s-fs keeps no metadata for them).
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/x-directory"),
        );
        // The MD5 of no bytes.
        headers.insert(
            "etag",
            HeaderValue::from_static("\"d41d8cd98f00b204e9800998ecf8427e\""),
        );
        if let Ok(value) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
            headers.insert("last-modified", value);
        }
        Ok(response)
    }
}

/// A running server; dropping it stops it.
pub struct S3sFs {
    runtime: Option<tokio::runtime::Runtime>,
    pub url: String,
    pub requests: Requests,
}

impl S3sFs {
    /// Serves the buckets under `root` on a loopback port to the holders of `keys` (access key,
    /// secret key), counting the requests of `counted`.
    pub fn start(root: &Path, keys: &[(&str, &str)], counted: &str) -> anyhow::Result<S3sFs> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("s3s-fs")
            .enable_all()
            .build()?;
        let root = root.canonicalize()?;
        let fs = s3s_fs::FileSystem::new(&root).map_err(|e| anyhow::anyhow!("s3s-fs: {e:?}"))?;
        let mut builder = S3ServiceBuilder::new(fs);
        let mut auth = SimpleAuth::new();
        for (access, secret) in keys {
            auth.register((*access).to_owned(), (*secret).into());
        }
        builder.set_auth(auth);
        let requests = Requests::default();
        builder.set_access(DirectoriesAreNoObjects {
            root: root.clone(),
            counted: counted.to_owned(),
            requests: requests.clone(),
        });
        builder.set_route(DirectoryObjects {
            root,
            counted: counted.to_owned(),
            requests: requests.clone(),
        });
        let service = builder.build();
        // Bound here, served there: the caller may be inside another runtime.
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        runtime.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    // Out of descriptors, say: try again shortly rather than spin.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                let _ = socket.set_nodelay(true);
                let connection = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(connection);
            }
        });
        Ok(S3sFs {
            runtime: Some(runtime),
            url,
            requests,
        })
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
