//! Runs the emulator in-process on a free loopback port and builds real SDK clients for it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3files::config::{BehaviorVersion, Credentials, Region};
use s3files_csi::cloud::aws::AwsS3Files;
use s3files_csi::emulator::faults::FaultConfig;
use s3files_csi::emulator::store::Settings;
use s3files_csi::emulator::{BucketStore, Config, Emulator};
use tokio::sync::oneshot;

pub struct RunningEmulator {
    pub emulator: Arc<Emulator>,
    pub addr: SocketAddr,
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    pub buckets: tempfile::TempDir,
}

/// Settings for tests: resources are available immediately, ids reproducible.
pub fn test_config() -> Config {
    let mut settings = Settings::for_region("us-east-1");
    settings.ready_after = 0.0;
    Config {
        settings,
        state_dir: None,
        buckets: BucketStore::Local {
            root: std::env::temp_dir(),
        },
        faults: FaultConfig::default(),
        seed: Some(7),
    }
}

impl RunningEmulator {
    pub async fn start(mut config: Config) -> RunningEmulator {
        let buckets = tempfile::tempdir().expect("tempdir");
        if matches!(config.buckets, BucketStore::Local { .. }) {
            config.buckets = BucketStore::Local {
                root: buckets.path().to_owned(),
            };
        }
        let emulator = Emulator::new(config).expect("emulator starts");
        let (stop, stopped) = oneshot::channel::<()>();
        let (bound_tx, bound_rx) = oneshot::channel();
        let serving = emulator.clone();
        let task = tokio::spawn(async move {
            serving
                .serve(
                    "127.0.0.1:0".parse().expect("addr"),
                    async move {
                        let _ = stopped.await;
                    },
                    move |addr| {
                        let _ = bound_tx.send(addr);
                    },
                )
                .await
                .expect("emulator serves");
        });
        let addr = bound_rx.await.expect("emulator bound");
        RunningEmulator {
            emulator,
            addr,
            url: format!("http://{addr}"),
            stop: Some(stop),
            task: Some(task),
            buckets,
        }
    }

    /// Stops serving and waits for the server to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// A raw SDK client with fast retries.
    pub fn sdk(&self) -> aws_sdk_s3files::Client {
        sdk_client(&self.url, 5)
    }

    /// The driver's client over the SDK.
    pub fn cloud(&self) -> AwsS3Files {
        AwsS3Files::new(self.sdk(), None)
    }

    /// Sends a raw HTTP/1.1 request to an admin endpoint; returns (status, body).
    pub async fn admin(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        http_request(self.addr, method, path, body).await
    }
}

pub fn sdk_client(url: &str, attempts: u32) -> aws_sdk_s3files::Client {
    let retry = aws_sdk_s3files::config::retry::RetryConfig::adaptive()
        .with_max_attempts(attempts)
        .with_initial_backoff(Duration::from_millis(5))
        .with_max_backoff(Duration::from_millis(50));
    let config = aws_sdk_s3files::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(Credentials::new(
            "AKIDEMULATOR",
            "secret",
            None,
            None,
            "test",
        ))
        .retry_config(retry)
        .build();
    aws_sdk_s3files::Client::from_conf(config)
}

pub async fn http_request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    s3files_csi::plain_http::request(&format!("http://{addr}"), method, path, body)
        .await
        .expect("http request")
}

pub const ROLE: &str = "arn:aws:iam::123456789012:role/s3files-access";
