//! The `s3files-csi` binary: parse the command line, start logging, run the chosen role.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use s3files_csi::cli::{Cli, Command, EmulatorArgs, HealthArgs, ServeArgs};
use s3files_csi::controller::ControllerService;
use s3files_csi::emulator::faults::FaultConfig;
use s3files_csi::emulator::store::Settings;
use s3files_csi::emulator::{BucketStore, Config as EmulatorConfig, Emulator};
use s3files_csi::identity::{IdentityService, Mode, validate_driver_name};
use s3files_csi::node::{NodeService, validate_node_id};
use s3files_csi::server::{Listener, Services, shutdown_signal};
use s3files_csi::{client, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log.log_format);
    match run(cli.command).await {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Controller(args) => {
            let identity = identity(&args.serve, Mode::Controller)?;
            let services = Services {
                identity,
                controller: Some(ControllerService::new()),
                node: None,
            };
            serve(&args.serve, services).await
        }
        Command::Node(args) => {
            validate_node_id(&args.node_id).map_err(anyhow::Error::msg)?;
            let identity = identity(&args.serve, Mode::Node)?;
            let services = Services {
                identity,
                controller: None,
                node: Some(NodeService::new(args.node_id)),
            };
            serve(&args.serve, services).await
        }
        Command::Health(args) => health(args).await,
        Command::Emulator(args) => emulator(args).await,
    }
}

async fn emulator(args: EmulatorArgs) -> anyhow::Result<ExitCode> {
    let config = emulator_config(args)?;
    let listen = config.1;
    let emu = Emulator::new(config.0)?;
    emu.serve(listen, shutdown_signal(), |_| {}).await?;
    Ok(ExitCode::SUCCESS)
}

fn emulator_config(args: EmulatorArgs) -> anyhow::Result<(EmulatorConfig, std::net::SocketAddr)> {
    let mut settings = Settings::for_region(&args.region);
    settings.account_id = args.account_id;
    if !args.zone_ids.is_empty() {
        settings.zone_ids = args.zone_ids;
    }
    settings.subnet_zones = args.subnet_zone.into_iter().collect();
    settings.ready_after = args.ready_after.as_secs_f64();
    settings.max_file_systems = args.max_file_systems;
    settings.max_access_points_per_file_system = args.max_access_points;
    let mut faults = FaultConfig::default();
    faults.default.throttle_rate = args.throttle_rate;
    faults.default.error_rate = args.error_rate;
    faults.default.latency_ms = args.latency_ms;
    for (op, rate) in args.rate_limit {
        let rate: f64 = rate
            .parse()
            .with_context(|| format!("--rate-limit {op}={rate}: not a number"))?;
        if op == "*" {
            faults.default.rate_limit = Some(rate);
        } else {
            let mut spec = faults.default.clone();
            spec.rate_limit = Some(rate);
            faults.operations.insert(op, spec);
        }
    }
    let buckets = match args.bucket_endpoint {
        Some(endpoint) => BucketStore::S3 { endpoint },
        None => BucketStore::Local {
            root: args.bucket_dir,
        },
    };
    let config = EmulatorConfig {
        settings,
        state_dir: args.state_dir,
        buckets,
        faults,
        seed: args.seed,
    };
    Ok((config, args.listen))
}

fn identity(args: &ServeArgs, mode: Mode) -> anyhow::Result<IdentityService> {
    validate_driver_name(&args.driver_name).map_err(anyhow::Error::msg)?;
    Ok(IdentityService::new(
        args.driver_name.clone(),
        mode,
        Vec::new(),
    ))
}

async fn serve(args: &ServeArgs, services: Services) -> anyhow::Result<ExitCode> {
    let listener = Listener::bind(&args.endpoint).await?;
    listener
        .serve(services, shutdown_signal(), args.shutdown_grace)
        .await?;
    Ok(ExitCode::SUCCESS)
}

async fn health(args: HealthArgs) -> anyhow::Result<ExitCode> {
    let health = client::wait_ready(&args.endpoint, args.wait)
        .await
        .with_context(|| format!("no CSI plugin answered at {}", args.endpoint))?;
    println!("{} {} ready={}", health.name, health.version, health.ready);
    if !health.ready {
        let reason = health.reason.unwrap_or_else(|| "no reason given".into());
        bail!("plugin at {} is not ready: {reason}", args.endpoint);
    }
    Ok(ExitCode::SUCCESS)
}
