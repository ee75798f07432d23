//! Fault injection and call counters for the emulator.
//!
//! Each operation has a [`FaultSpec`] (the default, or an override for that operation): added
//! latency, a token-bucket rate limit whose excess is answered with `ThrottlingException`, and
//! random throttling and 5xx rates, and a rate of calls that are applied but whose answer is lost
//! (a 5xx after the change, as a timeout looks to the client). Specs are set by flags at start-up
//! and replaced at run time
//! through `PUT /_emulator/faults`. Every call is counted by operation and outcome, exposed in
//! Prometheus text format at `/metrics`.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use super::store::{ApiError, ErrorKind};

/// Faults for one operation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultSpec {
    /// Fraction (0 to 1) of calls answered with ThrottlingException.
    pub throttle_rate: f64,
    /// Fraction (0 to 1) of calls answered with InternalServerException.
    pub error_rate: f64,
    /// Milliseconds added before every call is served.
    pub latency_ms: u64,
    /// Calls per second allowed (token bucket, burst of one second); excess is throttled.
    pub rate_limit: Option<f64>,
    /// Fraction (0 to 1) of calls that are applied and then answered with
    /// InternalServerException, as if the answer had been lost on the way.
    pub drop_rate: f64,
}

/// The whole fault configuration, as read and written by the admin endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    pub default: FaultSpec,
    /// Overrides by operation name, e.g. `CreateAccessPoint`.
    pub operations: BTreeMap<String, FaultSpec>,
}

impl FaultConfig {
    /// Rejects rates outside 0..=1, non-positive limits and unknown operation names.
    pub fn validate(&self, known_ops: &[&str]) -> Result<(), String> {
        let check = |name: &str, spec: &FaultSpec| -> Result<(), String> {
            for (what, rate) in [
                ("throttleRate", spec.throttle_rate),
                ("errorRate", spec.error_rate),
                ("dropRate", spec.drop_rate),
            ] {
                if !(0.0..=1.0).contains(&rate) {
                    return Err(format!(
                        "{name}: {what} must be between 0 and 1, got {rate}"
                    ));
                }
            }
            if let Some(limit) = spec.rate_limit
                && !(limit > 0.0 && limit.is_finite())
            {
                return Err(format!(
                    "{name}: rateLimit must be a positive number of calls per second, got {limit}"
                ));
            }
            Ok(())
        };
        check("default", &self.default)?;
        for (op, spec) in &self.operations {
            if !known_ops.contains(&op.as_str()) {
                return Err(format!(
                    "unknown operation {op:?}; known: {}",
                    known_ops.join(", ")
                ));
            }
            check(op, spec)?;
        }
        Ok(())
    }

    fn spec(&self, op: &str) -> &FaultSpec {
        self.operations.get(op).unwrap_or(&self.default)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    operation: String,
    outcome: String,
}

/// Live fault state and counters.
pub struct Faults {
    config: Mutex<FaultConfig>,
    limiters: Mutex<HashMap<String, DefaultDirectRateLimiter>>,
    rng: Mutex<fastrand::Rng>,
    calls: Family<CallLabels, Counter>,
    registry: Registry,
}

impl Faults {
    pub fn new(config: FaultConfig, seed: Option<u64>) -> Self {
        let calls = Family::<CallLabels, Counter>::default();
        let mut registry = Registry::default();
        registry.register(
            "s3files_emulator_calls",
            "Calls to the emulated S3 Files API by operation and outcome (ok or the error type)",
            calls.clone(),
        );
        Faults {
            config: Mutex::new(config),
            limiters: Mutex::new(HashMap::new()),
            rng: Mutex::new(seed.map(fastrand::Rng::with_seed).unwrap_or_default()),
            calls,
            registry,
        }
    }

    pub fn config(&self) -> FaultConfig {
        self.config.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Replaces the configuration; rate-limit buckets start full again.
    pub fn set_config(&self, config: FaultConfig) {
        if let Ok(mut c) = self.config.lock() {
            *c = config;
        }
        if let Ok(mut l) = self.limiters.lock() {
            l.clear();
        }
    }

    /// Applies the faults configured for `op`: waits the added latency, then returns the error
    /// to answer instead of serving the call, if any.
    pub async fn before(&self, op: &str) -> Option<ApiError> {
        let spec = self
            .config
            .lock()
            .map(|c| c.spec(op).clone())
            .unwrap_or_default();
        if spec.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(spec.latency_ms)).await;
        }
        if let Some(limit) = spec.rate_limit
            && !self.admit(op, limit)
        {
            return Some(ApiError::new(
                ErrorKind::Throttling,
                "RateLimitExceeded",
                format!("rate of {op} calls exceeds {limit} per second"),
            ));
        }
        let (throttle, error) = match self.rng.lock() {
            Ok(mut rng) => (rng.f64() < spec.throttle_rate, rng.f64() < spec.error_rate),
            Err(_) => (false, false),
        };
        if throttle {
            return Some(ApiError::new(
                ErrorKind::Throttling,
                "Throttled",
                "request rate is too high (injected)",
            ));
        }
        if error {
            return Some(ApiError::new(
                ErrorKind::Internal,
                "InternalFailure",
                "the service had an internal error (injected)",
            ));
        }
        None
    }

    /// After `op` was applied: the error to answer instead of its result, when its answer is
    /// to be lost.
    pub fn after(&self, op: &str) -> Option<ApiError> {
        let rate = self
            .config
            .lock()
            .map(|c| c.spec(op).drop_rate)
            .unwrap_or_default();
        let dropped = rate > 0.0 && self.rng.lock().is_ok_and(|mut rng| rng.f64() < rate);
        dropped.then(|| {
            ApiError::new(
                ErrorKind::Internal,
                "InternalFailure",
                "the call was applied but its answer was lost (injected)",
            )
        })
    }

    fn admit(&self, op: &str, per_second: f64) -> bool {
        let Ok(mut limiters) = self.limiters.lock() else {
            return true;
        };
        let limiter = limiters.entry(op.to_owned()).or_insert_with(|| {
            let burst =
                NonZeroU32::new(per_second.ceil().max(1.0) as u32).unwrap_or(NonZeroU32::MIN);
            let period = Duration::from_secs_f64(1.0 / per_second);
            let quota = Quota::with_period(period)
                .unwrap_or(Quota::per_second(burst))
                .allow_burst(burst);
            RateLimiter::direct(quota)
        });
        limiter.check().is_ok()
    }

    /// Counts one answered call.
    pub fn count(&self, op: &str, outcome: &str) {
        self.calls
            .get_or_create(&CallLabels {
                operation: op.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The number of calls of `op` with `outcome` so far.
    pub fn calls(&self, op: &str, outcome: &str) -> u64 {
        self.calls
            .get_or_create(&CallLabels {
                operation: op.to_owned(),
                outcome: outcome.to_owned(),
            })
            .get()
    }

    /// All counters in Prometheus text format.
    pub fn render(&self) -> String {
        crate::metrics::render_registry(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rates_of_one_always_fire_and_zero_never() {
        let always = Faults::new(
            FaultConfig {
                default: FaultSpec {
                    throttle_rate: 1.0,
                    ..Default::default()
                },
                ..Default::default()
            },
            Some(1),
        );
        for _ in 0..20 {
            assert_eq!(
                always.before("GetFileSystem").await.map(|e| e.kind),
                Some(ErrorKind::Throttling)
            );
        }
        let never = Faults::new(FaultConfig::default(), Some(1));
        for _ in 0..20 {
            assert!(never.before("GetFileSystem").await.is_none());
        }
    }

    #[tokio::test]
    async fn the_rate_limit_throttles_bursts_beyond_a_second() {
        let mut config = FaultConfig::default();
        config.operations.insert(
            "CreateAccessPoint".into(),
            FaultSpec {
                rate_limit: Some(5.0),
                ..Default::default()
            },
        );
        let faults = Faults::new(config, Some(1));
        let mut throttled = 0;
        for _ in 0..20 {
            if faults.before("CreateAccessPoint").await.is_some() {
                throttled += 1;
            }
        }
        assert!(
            throttled >= 14,
            "burst of 5 then throttle, got {throttled} throttled of 20"
        );
        assert!(
            faults.before("GetAccessPoint").await.is_none(),
            "other operations unaffected"
        );
    }

    #[test]
    fn bad_configurations_are_rejected_with_the_reason() {
        let mut config = FaultConfig::default();
        config.default.error_rate = 1.5;
        assert!(
            config
                .validate(&["GetFileSystem"])
                .expect_err("rate")
                .contains("errorRate")
        );
        let mut config = FaultConfig::default();
        config
            .operations
            .insert("Nope".into(), FaultSpec::default());
        assert!(
            config
                .validate(&["GetFileSystem"])
                .expect_err("op")
                .contains("unknown operation")
        );
    }

    #[test]
    fn counters_render_in_prometheus_format() {
        let faults = Faults::new(FaultConfig::default(), None);
        faults.count("CreateAccessPoint", "ok");
        faults.count("CreateAccessPoint", "ok");
        let text = faults.render();
        assert!(
            text.contains(
                r#"s3files_emulator_calls_total{operation="CreateAccessPoint",outcome="ok"} 2"#
            ),
            "{text}"
        );
    }
}
