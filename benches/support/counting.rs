//! An HTTP proxy in front of an S3 server that counts the requests passing through it, so a
//! test can say how many requests an operation cost as the server saw them.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;

/// Requests seen, as `METHOD /path?query-names`.
#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    /// Everything seen so far.
    pub fn all(&self) -> Vec<String> {
        self.0.lock().expect("seen").clone()
    }

    pub fn clear(&self) {
        self.0.lock().expect("seen").clear();
    }
}

pub struct CountingProxy {
    pub url: String,
    pub seen: Seen,
}

#[derive(Clone)]
struct Upstream {
    base: String,
    client: reqwest::Client,
    seen: Seen,
}

impl CountingProxy {
    /// Listens on a loopback port and forwards to `upstream` (`http://HOST:PORT`).
    pub async fn start(upstream: &str) -> CountingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Seen::default();
        let state = Upstream {
            base: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
            seen: seen.clone(),
        };
        let app = axum::Router::new().fallback(forward).with_state(state);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        CountingProxy { url, seen }
    }
}

async fn forward(State(up): State<Upstream>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path_query = parts
        .uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.to_string());
    let query_names: Vec<&str> = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split('=').next().unwrap_or(p))
        .collect();
    up.seen.0.lock().expect("seen").push(format!(
        "{} {}?{}",
        parts.method,
        parts.uri.path(),
        query_names.join("&")
    ));
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let mut out = up
        .client
        .request(parts.method.clone(), format!("{}{path_query}", up.base));
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            out = out.header(name, value);
        }
    }
    let answer = match out.body(bytes).send().await {
        Ok(a) => a,
        Err(e) => {
            return Response::builder()
                .status(502)
                .body(Body::from(e.to_string()))
                .expect("response");
        }
    };
    let mut response = Response::builder().status(answer.status().as_u16());
    for (name, value) in answer.headers() {
        if name != "content-length" && name != "transfer-encoding" {
            response = response.header(name, value);
        }
    }
    let body = answer.bytes().await.unwrap_or_default();
    response.body(Body::from(body)).expect("response")
}
