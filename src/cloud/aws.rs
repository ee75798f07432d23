//! [`S3Files`] on the official `aws-sdk-s3files` client.
//!
//! Configuration comes from the standard AWS sources (`aws-config`): region, the default
//! credential chain (environment, IRSA web identity, EKS Pod Identity, instance profile) and
//! the standard endpoint settings `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3FILES`, which is how
//! every component is pointed at the emulator.
//!
//! Every attempt of every call, retries included, goes through one pacer: callers queue in
//! arrival order (a fair mutex) for a token of the client-side rate limit, so `--api-rate-limit`
//! bounds what the service sees and no volume's calls are starved by others'. The SDK's own
//! retries are off; [`AwsS3Files`] retries throttled and transient failures itself (exponential
//! backoff with jitter, `backon`), each retry paced like a first attempt. In adaptive mode every
//! throttled answer also lowers the client's send rate (to 0.7 of what it was, additive increase
//! back to the limit with each answer that is not a throttle), and a run of throttled answers
//! holds every call back for one initial backoff, so a service whose limit is below the client's
//! is met at its own rate instead of hammered.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_sdk_s3files::Client;
use aws_sdk_s3files::config::http::HttpResponse;
use aws_sdk_s3files::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3files::types;
use backon::{ExponentialBuilder, Retryable};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::*;

/// How to build the client.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Overrides the region from the environment.
    pub region: Option<String>,
    /// Overrides `AWS_ENDPOINT_URL_S3FILES` / `AWS_ENDPOINT_URL`.
    pub endpoint_url: Option<String>,
    /// Attempts per call, including the first.
    pub max_attempts: u32,
    /// First retry backoff; later ones grow exponentially with jitter.
    pub initial_backoff: Duration,
    /// Client-side limit in calls per second across all operations; `None` for no limit.
    pub rate_limit: Option<f64>,
    /// Adaptive: a run of throttles also holds every call back; else each call only backs off.
    pub adaptive: bool,
    /// How long one attempt may take, connecting included, before it counts as a transient
    /// failure (so a hung connection cannot keep a call, or a GID, in flight for ever).
    pub attempt_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            region: None,
            endpoint_url: None,
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            rate_limit: Some(10.0),
            adaptive: true,
            attempt_timeout: Duration::from_secs(20),
        }
    }
}

/// How failed attempts are retried.
#[derive(Clone, Copy, Debug)]
struct Retries {
    max_attempts: u32,
    initial_backoff: Duration,
    adaptive: bool,
}

/// Throttled answers in a row that make an adaptive client hold every call back.
const THROTTLE_RUN: u32 = 3;

/// What an adaptive client's send rate is multiplied by on a throttled answer.
const SLOW_DOWN: f64 = 0.7;
/// The part of the limit an adaptive client's send rate regains per answer that is no throttle.
const SPEED_UP: f64 = 0.02;
/// The least send rate an adaptive client slows to, calls per second.
const SLOWEST: f64 = 0.5;
/// The rate an adaptive client without a limit slows down from.
const UNLIMITED_START: f64 = 50.0;

/// An adaptive client's lowered send rate, if lowered, and when the last attempt was sent.
#[derive(Default)]
struct Slowed {
    rate: Option<f64>,
    last_sent: Option<tokio::time::Instant>,
}

/// The pacing every attempt goes through.
struct Pacer {
    limiter: Option<DefaultDirectRateLimiter>,
    /// Waiters line up here in arrival order (tokio's mutex is fair).
    queue: tokio::sync::Mutex<()>,
    /// Set by a run of throttles in adaptive mode: nothing is sent before it.
    hold_until: std::sync::Mutex<Option<tokio::time::Instant>>,
    throttled_in_a_row: std::sync::atomic::AtomicU32,
    /// The configured limit (calls per second), and the lowered rate under it.
    limit: Option<f64>,
    slowed: std::sync::Mutex<Slowed>,
}

impl Pacer {
    /// An answer came back: a throttle lowers the send rate, anything else raises it again.
    fn answered(&self, throttled: bool) {
        let limit = self.limit.unwrap_or(UNLIMITED_START);
        let mut slowed = self.slowed.lock().unwrap_or_else(|p| p.into_inner());
        slowed.rate = match (throttled, slowed.rate) {
            (true, rate) => Some((rate.unwrap_or(limit) * SLOW_DOWN).max(SLOWEST)),
            (false, Some(rate)) => Some(rate + limit * SPEED_UP).filter(|r| *r < limit),
            (false, None) => None,
        };
    }
}

/// The SDK-backed client.
#[derive(Clone)]
pub struct AwsS3Files {
    client: Client,
    pacer: Arc<Pacer>,
    retries: Retries,
}

impl AwsS3Files {
    /// Loads the standard AWS configuration, with `options` on top.
    pub async fn from_env(options: &ClientOptions) -> Self {
        // Retries are ours (paced); the SDK makes one attempt per call.
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(options.attempt_timeout.min(Duration::from_secs(5)))
            .operation_attempt_timeout(options.attempt_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts);
        if let Some(region) = &options.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(url) = &options.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        let sdk = loader.load().await;
        let mut client = Self::new(Client::new(&sdk), options.rate_limit);
        client.retries = Retries {
            max_attempts: options.max_attempts.max(1),
            initial_backoff: options.initial_backoff,
            adaptive: options.adaptive,
        };
        client
    }

    /// Wraps an existing SDK client.
    pub fn new(client: Client, rate_limit: Option<f64>) -> Self {
        let limiter = rate_limit
            .filter(|r| *r > 0.0 && r.is_finite())
            .map(|per_second| {
                let burst = NonZeroU32::new(per_second.ceil() as u32).unwrap_or(NonZeroU32::MIN);
                let quota = Quota::with_period(Duration::from_secs_f64(1.0 / per_second))
                    .unwrap_or(Quota::per_second(burst))
                    .allow_burst(burst);
                RateLimiter::direct(quota)
            });
        AwsS3Files {
            client,
            pacer: Arc::new(Pacer {
                limiter,
                queue: tokio::sync::Mutex::new(()),
                hold_until: std::sync::Mutex::new(None),
                throttled_in_a_row: std::sync::atomic::AtomicU32::new(0),
                limit: rate_limit.filter(|r| *r > 0.0 && r.is_finite()),
                slowed: std::sync::Mutex::new(Slowed::default()),
            }),
            // An SDK client built elsewhere keeps its own retry settings: one attempt here.
            retries: Retries {
                max_attempts: 1,
                initial_backoff: Duration::from_secs(1),
                adaptive: false,
            },
        }
    }

    /// Waits for this attempt's turn: after the callers before it, after any adaptive hold,
    /// and for a token of the rate limit.
    async fn pace(&self) {
        let _turn = self.pacer.queue.lock().await;
        let hold = *self
            .pacer
            .hold_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(until) = hold {
            tokio::time::sleep_until(until).await;
        }
        if let Some(limiter) = &self.pacer.limiter {
            limiter.until_ready().await;
        }
        let next = {
            let slowed = self.pacer.slowed.lock().unwrap_or_else(|p| p.into_inner());
            slowed
                .rate
                .zip(slowed.last_sent)
                .map(|(rate, last)| last + Duration::from_secs_f64(1.0 / rate))
        };
        if let Some(next) = next {
            tokio::time::sleep_until(next).await;
        }
        self.pacer
            .slowed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_sent = Some(tokio::time::Instant::now());
    }

    /// Runs `attempt` until it succeeds, fails for good, or the attempts are spent; every
    /// attempt paced. Throttled and transient failures are retried.
    async fn attempts<T, F, Fut>(&self, attempt: F) -> Result<T, CloudError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, CloudError>>,
    {
        let Retries {
            max_attempts,
            initial_backoff,
            adaptive,
        } = self.retries;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(initial_backoff)
            .with_max_delay(Duration::from_secs(20))
            .with_max_times((max_attempts - 1) as usize)
            .with_jitter();
        let (this, attempt) = (self, &attempt);
        let pacer = &self.pacer;
        (move || async move {
            this.pace().await;
            let result = attempt().await;
            use std::sync::atomic::Ordering;
            if adaptive {
                pacer.answered(matches!(result, Err(CloudError::Throttled(_))));
            }
            match &result {
                Err(CloudError::Throttled(_)) => {
                    let run = pacer.throttled_in_a_row.fetch_add(1, Ordering::SeqCst) + 1;
                    if adaptive && run >= THROTTLE_RUN {
                        let until = tokio::time::Instant::now() + initial_backoff;
                        let mut hold = pacer.hold_until.lock().unwrap_or_else(|p| p.into_inner());
                        *hold = Some(hold.map_or(until, |h| h.max(until)));
                    }
                }
                _ => {
                    pacer.throttled_in_a_row.store(0, Ordering::SeqCst);
                }
            }
            result
        })
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e| matches!(e, CloudError::Throttled(_) | CloudError::Transient(_)))
        .await
    }
}

/// Maps an SDK failure to what the caller should do about it.
fn cloud_error<E>(op: &str, err: SdkError<E, HttpResponse>) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().unwrap_or_default();
            let message = format!("{op}: {}", e.message().unwrap_or(code));
            match code {
                "ResourceNotFoundException" => CloudError::NotFound(message),
                "ConflictException" => CloudError::Conflict {
                    message,
                    resource_id: None,
                },
                "ThrottlingException"
                | "TooManyRequestsException"
                | "Throttling"
                | "RequestLimitExceeded" => CloudError::Throttled(message),
                "ServiceQuotaExceededException" => CloudError::QuotaExceeded(message),
                "ValidationException" => CloudError::Validation(message),
                "AccessDeniedException"
                | "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "ExpiredTokenException" => CloudError::AccessDenied(message),
                "InternalServerException" => CloudError::Transient(message),
                _ if service.raw().status().is_server_error() => CloudError::Transient(message),
                _ => CloudError::Other(format!("{message} ({code})")),
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            CloudError::Transient(format!("{op}: {}", DisplayErrorContext(&err)))
        }
        _ => CloudError::Other(format!("{op}: {}", DisplayErrorContext(&err))),
    }
}

fn u32_of(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn posix_user(p: Option<&types::PosixUser>) -> Option<PosixUser> {
    p.map(|p| PosixUser {
        uid: u32_of(p.uid()),
        gid: u32_of(p.gid()),
        secondary_gids: p.secondary_gids().iter().map(|g| u32_of(*g)).collect(),
    })
}

fn root(r: Option<&types::RootDirectory>) -> (Option<String>, Option<CreationPermissions>) {
    let Some(r) = r else { return (None, None) };
    let perms = r.creation_permissions().map(|c| CreationPermissions {
        owner_uid: u32_of(c.owner_uid()),
        owner_gid: u32_of(c.owner_gid()),
        permissions: c.permissions().to_owned(),
    });
    (r.path().map(str::to_owned), perms)
}

fn tags(t: &[types::Tag]) -> Vec<(String, String)> {
    t.iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect()
}

fn sdk_tags(t: &[(String, String)]) -> Result<Option<Vec<types::Tag>>, CloudError> {
    if t.is_empty() {
        return Ok(None);
    }
    t.iter()
        .map(|(k, v)| {
            types::Tag::builder()
                .key(k)
                .value(v)
                .build()
                .map_err(|e| CloudError::Other(format!("building tag {k}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn mount_target(m: &types::ListMountTargetsDescription) -> MountTarget {
    MountTarget {
        id: m.mount_target_id().to_owned(),
        file_system_id: m.file_system_id().unwrap_or_default().to_owned(),
        availability_zone_id: m.availability_zone_id().map(str::to_owned),
        subnet_id: m.subnet_id().to_owned(),
        ipv4_address: m.ipv4_address().map(str::to_owned),
        status: m
            .status()
            .map(|s| LifeCycle::parse(s.as_str()))
            .unwrap_or(LifeCycle::Unknown(String::new())),
    }
}

macro_rules! access_point_from {
    ($o:expr, $token:expr, $tags:expr) => {{
        let o = $o;
        let (root_path, creation_permissions) = root(o.root_directory());
        AccessPoint {
            id: o.access_point_id().to_owned(),
            arn: o.access_point_arn().to_owned(),
            file_system_id: o.file_system_id().to_owned(),
            client_token: $token,
            status: LifeCycle::parse(o.status().as_str()),
            posix_user: posix_user(o.posix_user()),
            root_path,
            creation_permissions,
            tags: $tags,
        }
    }};
}

macro_rules! file_system_from {
    ($o:expr) => {{
        let o = $o;
        FileSystem {
            id: o.file_system_id().unwrap_or_default().to_owned(),
            arn: o.file_system_arn().unwrap_or_default().to_owned(),
            bucket: o.bucket().unwrap_or_default().to_owned(),
            prefix: o.prefix().to_owned(),
            status: o
                .status()
                .map(|s| LifeCycle::parse(s.as_str()))
                .unwrap_or(LifeCycle::Unknown(String::new())),
            status_message: o.status_message().map(str::to_owned),
        }
    }};
}

#[tonic::async_trait]
impl S3Files for AwsS3Files {
    async fn get_file_system(&self, id: &str) -> Result<FileSystem, CloudError> {
        let out = self
            .attempts(|| async {
                self.client
                    .get_file_system()
                    .file_system_id(id)
                    .send()
                    .await
                    .map_err(|e| cloud_error("GetFileSystem", e))
            })
            .await?;
        Ok(file_system_from!(&out))
    }

    async fn list_mount_targets(
        &self,
        file_system_id: &str,
    ) -> Result<Vec<MountTarget>, CloudError> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .attempts(|| async {
                    self.client
                        .list_mount_targets()
                        .file_system_id(file_system_id)
                        .max_results(100)
                        .set_next_token(token.clone())
                        .send()
                        .await
                        .map_err(|e| cloud_error("ListMountTargets", e))
                })
                .await?;
            all.extend(out.mount_targets().iter().map(mount_target));
            match out.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(all),
            }
        }
    }

    async fn create_access_point(&self, new: &NewAccessPoint) -> Result<AccessPoint, CloudError> {
        let posix = match &new.posix_user {
            Some(p) => Some(
                types::PosixUser::builder()
                    .uid(i64::from(p.uid))
                    .gid(i64::from(p.gid))
                    .set_secondary_gids(
                        (!p.secondary_gids.is_empty())
                            .then(|| p.secondary_gids.iter().map(|g| i64::from(*g)).collect()),
                    )
                    .build()
                    .map_err(|e| CloudError::Other(format!("building posixUser: {e}")))?,
            ),
            None => None,
        };
        let perms = match &new.creation_permissions {
            Some(c) => Some(
                types::CreationPermissions::builder()
                    .owner_uid(i64::from(c.owner_uid))
                    .owner_gid(i64::from(c.owner_gid))
                    .permissions(&c.permissions)
                    .build()
                    .map_err(|e| CloudError::Other(format!("building creationPermissions: {e}")))?,
            ),
            None => None,
        };
        let root_directory = (new.root_path.is_some() || perms.is_some()).then(|| {
            types::RootDirectory::builder()
                .set_path(new.root_path.clone())
                .set_creation_permissions(perms)
                .build()
        });
        let out = self
            .attempts(|| async {
                self
                .client
                .create_access_point()
                .file_system_id(&new.file_system_id)
                .client_token(&new.client_token)
                .set_posix_user(posix.clone())
                .set_root_directory(root_directory.clone())
                .set_tags(sdk_tags(&new.tags)?)
                .send()
                .await
                .map_err(|e| {
                    // Keep the id of the access point a conflicting token already names.
                    let resource_id = match &e {
                        SdkError::ServiceError(s) => match s.err() {
                            aws_sdk_s3files::operation::create_access_point::CreateAccessPointError::ConflictException(c) => {
                                c.resource_id().map(str::to_owned)
                            }
                            _ => None,
                        },
                        _ => None,
                    };
                    match cloud_error("CreateAccessPoint", e) {
                        CloudError::Conflict { message, .. } => CloudError::Conflict { message, resource_id },
                        other => other,
                    }
                })
            })
            .await?;
        Ok(access_point_from!(
            &out,
            Some(out.client_token().to_owned()),
            tags(out.tags())
        ))
    }

    async fn get_access_point(&self, id: &str) -> Result<AccessPoint, CloudError> {
        let out = self
            .attempts(|| async {
                self.client
                    .get_access_point()
                    .access_point_id(id)
                    .send()
                    .await
                    .map_err(|e| cloud_error("GetAccessPoint", e))
            })
            .await?;
        Ok(access_point_from!(
            &out,
            Some(out.client_token().to_owned()),
            tags(out.tags())
        ))
    }

    async fn list_access_points_page(
        &self,
        file_system_id: &str,
        next_token: Option<String>,
    ) -> Result<(Vec<AccessPoint>, Option<String>), CloudError> {
        let out = self
            .attempts(|| async {
                self.client
                    .list_access_points()
                    .file_system_id(file_system_id)
                    .max_results(1000)
                    .set_next_token(next_token.clone())
                    .send()
                    .await
                    .map_err(|e| cloud_error("ListAccessPoints", e))
            })
            .await?;
        let page = out
            .access_points()
            .iter()
            .map(|a| access_point_from!(a, None, Vec::new()))
            .collect();
        let next = out
            .next_token()
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        Ok((page, next))
    }

    async fn delete_access_point(&self, id: &str) -> Result<(), CloudError> {
        self.attempts(|| async {
            self.client
                .delete_access_point()
                .access_point_id(id)
                .send()
                .await
                .map_err(|e| cloud_error("DeleteAccessPoint", e))
        })
        .await?;
        Ok(())
    }

    async fn create_file_system(&self, new: &NewFileSystem) -> Result<FileSystem, CloudError> {
        let out = self
            .attempts(|| async {
                self.client
                    .create_file_system()
                    .bucket(&new.bucket_arn)
                    .set_prefix(new.prefix.clone())
                    .role_arn(&new.role_arn)
                    .set_client_token(new.client_token.clone())
                    .set_tags(sdk_tags(&new.tags)?)
                    .send()
                    .await
                    .map_err(|e| cloud_error("CreateFileSystem", e))
            })
            .await?;
        Ok(file_system_from!(&out))
    }

    async fn create_mount_target(
        &self,
        file_system_id: &str,
        subnet_id: &str,
    ) -> Result<MountTarget, CloudError> {
        let o = self
            .attempts(|| async {
                self.client
                    .create_mount_target()
                    .file_system_id(file_system_id)
                    .subnet_id(subnet_id)
                    .send()
                    .await
                    .map_err(|e| cloud_error("CreateMountTarget", e))
            })
            .await?;
        Ok(MountTarget {
            id: o.mount_target_id().to_owned(),
            file_system_id: o.file_system_id().unwrap_or_default().to_owned(),
            availability_zone_id: o.availability_zone_id().map(str::to_owned),
            subnet_id: o.subnet_id().to_owned(),
            ipv4_address: o.ipv4_address().map(str::to_owned),
            status: o
                .status()
                .map(|s| LifeCycle::parse(s.as_str()))
                .unwrap_or(LifeCycle::Unknown(String::new())),
        })
    }

    async fn delete_mount_target(&self, id: &str) -> Result<(), CloudError> {
        self.attempts(|| async {
            self.client
                .delete_mount_target()
                .mount_target_id(id)
                .send()
                .await
                .map_err(|e| cloud_error("DeleteMountTarget", e))
        })
        .await?;
        Ok(())
    }

    async fn delete_file_system(&self, id: &str) -> Result<(), CloudError> {
        self.attempts(|| async {
            self.client
                .delete_file_system()
                .file_system_id(id)
                .send()
                .await
                .map_err(|e| cloud_error("DeleteFileSystem", e))
        })
        .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), CloudError> {
        self.attempts(|| async {
            self.client
                .list_file_systems()
                .max_results(1)
                .send()
                .await
                .map_err(|e| cloud_error("ListFileSystems", e))
        })
        .await?;
        Ok(())
    }

    async fn list_file_system_ids(&self) -> Result<Vec<String>, CloudError> {
        let mut ids = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .attempts(|| async {
                    self.client
                        .list_file_systems()
                        .set_next_token(token.clone())
                        .send()
                        .await
                        .map_err(|e| cloud_error("ListFileSystems", e))
                })
                .await?;
            ids.extend(
                out.file_systems()
                    .iter()
                    .map(|f| f.file_system_id().to_owned()),
            );
            token = out.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(ids);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn client(rate: Option<f64>, attempts: u32, adaptive: bool) -> AwsS3Files {
        let config = aws_sdk_s3files::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build();
        let mut c = AwsS3Files::new(Client::from_conf(config), rate);
        c.retries = Retries {
            max_attempts: attempts,
            initial_backoff: Duration::from_millis(1),
            adaptive,
        };
        c
    }

    #[tokio::test]
    async fn retries_take_tokens_of_the_rate_limit_like_first_attempts() {
        // 4 calls per second, a burst of 4: eight attempts cannot take less than a second.
        let c = client(Some(4.0), 8, false);
        let calls = AtomicU32::new(0);
        let started = std::time::Instant::now();
        let answer = c
            .attempts(|| async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    n if n < 7 => Err(CloudError::Throttled("slow down".into())),
                    n => Ok(n),
                }
            })
            .await;
        assert_eq!(answer.expect("the eighth attempt succeeds"), 7);
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "{:?}: retries went past the limit",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn only_throttled_and_transient_failures_are_retried_and_attempts_are_bounded() {
        let c = client(None, 3, false);
        for (error, expected) in [
            (CloudError::Throttled("t".into()), 3),
            (CloudError::Transient("5xx".into()), 3),
            (CloudError::Validation("bad".into()), 1),
            (CloudError::NotFound("gone".into()), 1),
        ] {
            let calls = AtomicU32::new(0);
            let err = c
                .attempts(|| async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>(error.clone())
                })
                .await
                .expect_err("fails");
            assert_eq!(calls.load(Ordering::SeqCst), expected, "{err:?}");
        }
    }

    #[tokio::test]
    async fn a_run_of_throttles_holds_every_call_in_adaptive_mode_only() {
        for adaptive in [false, true] {
            let c = client(None, THROTTLE_RUN, adaptive);
            let _ = c
                .attempts(|| async { Err::<(), _>(CloudError::Throttled("t".into())) })
                .await;
            let held = c.pacer.hold_until.lock().expect("lock").is_some();
            assert_eq!(held, adaptive);
            // A success ends the run.
            c.attempts(|| async { Ok(()) }).await.expect("ok");
            assert_eq!(c.pacer.throttled_in_a_row.load(Ordering::SeqCst), 0);
        }
    }

    #[tokio::test]
    async fn throttles_lower_an_adaptive_clients_rate_and_answers_raise_it_to_the_limit() {
        let c = client(Some(10.0), 1, true);
        let rate = || c.pacer.slowed.lock().expect("lock").rate;
        assert_eq!(rate(), None, "at the limit");
        c.pacer.answered(true);
        assert_eq!(rate(), Some(7.0));
        c.pacer.answered(true);
        assert!((rate().expect("slowed") - 4.9).abs() < 1e-9);
        for _ in 0..200 {
            c.pacer.answered(true);
        }
        assert_eq!(rate(), Some(SLOWEST));
        // Each answer that is no throttle gives back 2% of the limit, until the limit.
        c.pacer.answered(false);
        assert!((rate().expect("slowed") - 0.7).abs() < 1e-9);
        for _ in 0..47 {
            c.pacer.answered(false);
        }
        assert_eq!(rate(), None);
        // A slowed client spaces its attempts.
        c.pacer.slowed.lock().expect("lock").rate = Some(20.0);
        let started = std::time::Instant::now();
        for _ in 0..5 {
            c.pace().await;
        }
        assert!(
            started.elapsed() >= Duration::from_millis(190),
            "{:?}",
            started.elapsed()
        );
        // Standard mode never slows.
        let s = client(Some(10.0), 2, false);
        let _ = s
            .attempts(|| async { Err::<(), _>(CloudError::Throttled("t".into())) })
            .await;
        assert_eq!(s.pacer.slowed.lock().expect("lock").rate, None);
    }
}
