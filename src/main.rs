//! The `s3files-csi` binary: parse the command line, start logging, run the chosen role.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use s3files_csi::cli::{Cli, Command, HealthArgs, ServeArgs};
use s3files_csi::controller::ControllerService;
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
    }
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
