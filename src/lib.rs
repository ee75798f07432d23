//! s3files-csi: a Kubernetes CSI driver for Amazon S3 Files.
//!
//! One binary serves every role (see `cli`). The gRPC layer (`identity`, `controller`, `node`)
//! is thin: each method goes through `rpc::call`, which traces, logs with secrets redacted and
//! converts the crate `Error` into a CSI status code in one place (`error`).
//! `docs/ARCHITECTURE.md` describes how the parts fit together.

pub mod cli;
pub mod client;
pub mod cloud;
pub mod controller;
pub mod csi;
pub mod data;
pub mod emulator;
pub mod error;
pub mod fuse;
pub mod identity;
pub mod metrics;
pub mod mount;
pub mod node;
pub mod plain_http;
pub mod process;
pub mod quickstart;
pub mod rpc;
pub mod server;
pub mod telemetry;
pub mod volume;

pub use error::{Error, Result};
