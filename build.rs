//! Generates the CSI gRPC code from `proto/csi.proto` with a vendored `protoc`, so a fresh
//! machine builds without a system protobuf compiler. Does nothing else.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = Path::new("proto/csi.proto");
    println!("cargo:rerun-if-changed={}", proto.display());

    // An explicit PROTOC from the environment wins over the vendored binary.
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => path.into(),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);

    // Messages that carry `secrets` must not derive Debug: src/csi.rs gives them a Debug that
    // redacts those fields, so no log line can ever print a credential.
    let text = std::fs::read_to_string(proto)?;
    let with_secrets: Vec<String> = messages_with_secrets(&text)
        .into_iter()
        .map(|m| format!(".csi.v1.{m}"))
        .collect();
    std::fs::write(
        Path::new(&std::env::var("OUT_DIR")?).join("secret_messages.txt"),
        with_secrets.join("\n"),
    )?;

    tonic_prost_build::configure()
        .skip_debug(with_secrets)
        .compile_with_config(config, &[proto], &[Path::new("proto")])?;
    Ok(())
}

/// Top-level message names whose body has a field marked `(csi_secret) = true`.
fn messages_with_secrets(proto: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut current: Option<String> = None;
    for line in proto.lines() {
        let code = line.split("//").next().unwrap_or("").trim();
        if depth == 0
            && let Some(rest) = code.strip_prefix("message ")
        {
            current = rest.split_whitespace().next().map(str::to_owned);
        }
        if code.contains("(csi_secret) = true")
            && let Some(name) = &current
            && !out.contains(name)
        {
            out.push(name.clone());
        }
        depth += code.matches('{').count();
        depth = depth.saturating_sub(code.matches('}').count());
        if depth == 0 {
            current = None;
        }
    }
    out
}
