//! amazon-efs-utils' configuration on the node, and what it means for memory.
//!
//! efs-utils reads its settings from `/etc/amazon/efs` (a path it hard-codes) and keeps the
//! private key of its TLS client certificates there too. On a node that directory is a host
//! path of ours, so the key survives plugin restarts; the image keeps the package's own files
//! (configs, CA bundle) aside, and [`prepare`] lays them into the directory at every start, then
//! applies the chart's settings (INI fragments, one per config file, rendered from values into a
//! ConfigMap) key by key over them. Nothing else in the files changes.
//!
//! Each mount runs an efs-proxy in the node container's cgroup. Its memory is bounded by the
//! `[proxy]` settings: the read-ahead cache (`readahead_cache_max_memory_size_mb`, 1,024 MiB by
//! default, off per mount with `nos3readcache`) and direct S3 reads in flight
//! (`read_bypass_max_in_flight_s3_bytes`, 256 MiB, off per mount with `nodirects3read`).
//! [`ProxyMemory`] reads those from the file efs-utils will read, for the node's budget.

use std::path::{Path, PathBuf};

use ini::{EscapePolicy, Ini, ParseOption};
use tracing::info;

/// efs-utils' settings of S3 Files mounts and their efs-proxy.
pub const S3FILES_CONF: &str = "s3files-utils.conf";
/// efs-utils' settings of EFS mounts and of the watchdog (which serves S3 Files mounts too).
pub const EFS_CONF: &str = "efs-utils.conf";
/// The TLS client key efs-utils generates; never replaced from the image.
pub const PRIVATE_KEY: &str = "privateKey.pem";

const PROXY: &str = "proxy";
const MIB: u64 = 1 << 20;

/// Where the node finds and puts efs-utils' files.
#[derive(Clone, Debug)]
pub struct EfsUtilsPaths {
    /// The directory efs-utils reads (`/etc/amazon/efs` in the container).
    pub config_dir: PathBuf,
    /// The package's files, kept aside in the image.
    pub static_dir: PathBuf,
    /// INI fragments named like the files they apply to.
    pub overrides_dir: Option<PathBuf>,
    /// efs-utils' logs; they name keys and file systems, so the directory is made 0700 when it
    /// exists (a host path is created 0755).
    pub log_dir: Option<PathBuf>,
}

/// Errors preparing the configuration; they stop the plugin at start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{context}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{file}: {reason}")]
    Parse { file: String, reason: String },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ConfigError {
    let context = context.into();
    move |source| ConfigError::Io { context, source }
}

fn options() -> ParseOption {
    // efs-utils reads with Python's configparser, which has no quoting and no escapes.
    ParseOption {
        enabled_quote: false,
        enabled_escape: false,
        ..ParseOption::default()
    }
}

fn load(path: &Path) -> Result<Ini, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(io(format!("reading {}", path.display())))?;
    Ini::load_from_str_opt(&text, options()).map_err(|e| ConfigError::Parse {
        file: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Lays the package's files into the config directory (all but an existing private key), then
/// applies the overrides. Returns what was overridden, for the log. A missing static directory
/// (an image without efs-utils) leaves the config directory as it is.
pub fn prepare(paths: &EfsUtilsPaths) -> Result<Vec<String>, ConfigError> {
    if let Some(logs) = paths.log_dir.as_ref().filter(|d| d.is_dir()) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(logs, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("making {} private", logs.display())))?;
    }
    let dir = &paths.config_dir;
    if paths.static_dir.is_dir() || paths.overrides_dir.is_some() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    if paths.static_dir.is_dir() {
        let entries = std::fs::read_dir(&paths.static_dir)
            .map_err(io(format!("reading {}", paths.static_dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(io(format!("reading {}", paths.static_dir.display())))?;
            let name = entry.file_name();
            let from = entry.path();
            if !from.is_file() || (name == PRIVATE_KEY && dir.join(&name).exists()) {
                continue;
            }
            let to = dir.join(&name);
            std::fs::copy(&from, &to).map_err(io(format!(
                "copying {} to {}",
                from.display(),
                to.display()
            )))?;
        }
    }
    let mut applied = Vec::new();
    let Some(overrides) = &paths.overrides_dir else {
        return Ok(applied);
    };
    for name in [S3FILES_CONF, EFS_CONF] {
        let fragment = overrides.join(name);
        if !fragment.is_file() {
            continue;
        }
        let fragment = load(&fragment)?;
        let target = dir.join(name);
        let mut conf = if target.is_file() {
            load(&target)?
        } else {
            Ini::new()
        };
        for (section, props) in fragment.iter() {
            for (key, value) in props.iter() {
                conf.with_section(section).set(key, value);
                applied.push(format!(
                    "{name} [{}] {key} = {value}",
                    section.unwrap_or("")
                ));
            }
        }
        let tmp = target.with_extension("conf.tmp");
        conf.write_to_file_policy(&tmp, EscapePolicy::Nothing)
            .map_err(io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &target).map_err(io(format!("writing {}", target.display())))?;
    }
    if !applied.is_empty() {
        info!(settings = ?applied, "efs-utils configuration applied");
    }
    Ok(applied)
}

/// What one mount's efs-proxy may hold, from the `[proxy]` settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyMemory {
    /// The proxy itself (buffers, TLS, the NFS session).
    pub base_mib: u64,
    /// The read-ahead cache at its largest; 0 when the cache is off in the config.
    pub cache_mib: u64,
    /// Direct S3 reads in flight at most.
    pub direct_read_mib: u64,
}

impl ProxyMemory {
    /// efs-utils' defaults; the base is a measured-elsewhere figure (the Go EFS CSI driver's
    /// sizing guide gives about 12 MiB per volume), rounded up.
    pub const DEFAULTS: ProxyMemory = ProxyMemory {
        base_mib: 16,
        cache_mib: 1024,
        direct_read_mib: 256,
    };

    /// Reads the settings from `s3files-utils.conf` in `config_dir`; missing keys (or a missing
    /// file) mean efs-proxy's defaults.
    pub fn from_config(config_dir: &Path) -> Result<ProxyMemory, ConfigError> {
        let path = config_dir.join(S3FILES_CONF);
        if !path.is_file() {
            return Ok(ProxyMemory::DEFAULTS);
        }
        let conf = load(&path)?;
        let number = |key: &str, default: u64| -> Result<u64, ConfigError> {
            match conf.get_from(Some(PROXY), key) {
                None => Ok(default),
                Some(v) => v.trim().parse().map_err(|_| ConfigError::Parse {
                    file: path.display().to_string(),
                    reason: format!("[proxy] {key} = {v:?} is not a number"),
                }),
            }
        };
        let enabled = match conf.get_from(Some(PROXY), "readahead_cache_enabled") {
            None => true,
            Some(v) => !matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "false" | "no" | "off" | "0"
            ),
        };
        let cache = number(
            "readahead_cache_max_memory_size_mb",
            ProxyMemory::DEFAULTS.cache_mib,
        )?;
        let in_flight = number(
            "read_bypass_max_in_flight_s3_bytes",
            ProxyMemory::DEFAULTS.direct_read_mib * MIB,
        )?;
        Ok(ProxyMemory {
            base_mib: ProxyMemory::DEFAULTS.base_mib,
            cache_mib: if enabled { cache } else { 0 },
            direct_read_mib: in_flight.div_ceil(MIB),
        })
    }

    /// The most one mount with these options may take.
    pub fn of_mount(&self, options: &[String]) -> u64 {
        let has = |o: &str| options.iter().any(|x| x == o);
        let mut mib = self.base_mib;
        if !has("nos3readcache") {
            mib += self.cache_mib;
        }
        if !has("nodirects3read") {
            mib += self.direct_read_mib;
        }
        mib
    }
}

/// The memory the node container can give efs-proxy processes, and how a new mount is made
/// to fit: as configured if it can; else without the read-ahead cache (`nos3readcache`); else
/// also without direct S3 reads (`nodirects3read`, reads then go through NFS); else refused.
/// Each step is logged, so no mount is degraded or refused silently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    pub per_mount: ProxyMemory,
    pub budget_mib: u64,
}

/// How a mount fits the budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fitted {
    pub options: Vec<String>,
    pub cost_mib: u64,
    /// The options added to make it fit.
    pub added: Vec<&'static str>,
}

impl MemoryBudget {
    /// Fits a mount with `options` next to mounts that may take `used_mib` already.
    pub fn fit(&self, options: &[String], used_mib: u64) -> Result<Fitted, String> {
        let room = self.budget_mib.saturating_sub(used_mib);
        let mut fitted = Fitted {
            options: options.to_vec(),
            cost_mib: self.per_mount.of_mount(options),
            added: Vec::new(),
        };
        for step in ["nos3readcache", "nodirects3read"] {
            if fitted.cost_mib <= room {
                return Ok(fitted);
            }
            if !fitted.options.iter().any(|o| o == step) {
                fitted.options.push(step.to_owned());
                fitted.added.push(step);
                fitted.cost_mib = self.per_mount.of_mount(&fitted.options);
            }
        }
        if fitted.cost_mib <= room {
            return Ok(fitted);
        }
        Err(format!(
            "the node's efs-proxy memory budget is spent: mounts on this node may take {used_mib} MiB of {} MiB, and even without read-ahead cache and direct S3 reads a mount takes {} MiB; raise node.resources.limits.memory with node.efsUtils.memoryBudgetMiB, or lower [proxy] readahead_cache_max_memory_size_mb",
            self.budget_mib, fitted.cost_mib
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of the file efs-utils 3.2.0 installs (sections, comments, regional entries).
    const PACKAGE_CONF: &str = "\
# s3files-utils.conf as packaged
[DEFAULT]
logging_level = INFO
logging_max_bytes = 1048576

[mount]
dns_name_format = {az_id}.{fs_id}.s3files.{region}.{dns_name_suffix}
dns_name_suffix = on.aws
stunnel_cafile = /etc/amazon/efs/efs-utils.crt

[mount.cn-north-1]
dns_name_suffix = on.amazonwebservices.com.cn

[proxy]
proxy_logging_level = INFO
# readahead_cache_max_memory_size_mb = 1024

[client-info]
source=k8s

[cloudwatch-log]
enabled = true
log_group_name = /aws/efs/utils
";

    fn layout() -> (tempfile::TempDir, EfsUtilsPaths) {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = EfsUtilsPaths {
            config_dir: dir.path().join("etc"),
            static_dir: dir.path().join("static"),
            overrides_dir: Some(dir.path().join("overrides")),
            log_dir: Some(dir.path().join("logs")),
        };
        for d in [
            &paths.static_dir,
            paths.overrides_dir.as_ref().expect("set"),
        ] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(paths.static_dir.join(S3FILES_CONF), PACKAGE_CONF).expect("conf");
        std::fs::write(paths.static_dir.join("efs-utils.crt"), "CA").expect("ca");
        std::fs::write(paths.static_dir.join(PRIVATE_KEY), "image key").expect("key");
        (dir, paths)
    }

    #[test]
    fn package_files_are_laid_down_and_overrides_change_only_their_keys() {
        let (_dir, paths) = layout();
        std::fs::create_dir_all(&paths.config_dir).expect("mkdir");
        std::fs::create_dir_all(paths.log_dir.as_ref().expect("set")).expect("mkdir");
        std::fs::write(paths.config_dir.join(PRIVATE_KEY), "node key").expect("key");
        let overrides = paths.overrides_dir.clone().expect("set");
        std::fs::write(
            overrides.join(S3FILES_CONF),
            "[proxy]\nreadahead_cache_max_memory_size_mb = 64\nproxy_logging_level = WARN\n[cloudwatch-log]\nenabled = false\n",
        )
        .expect("fragment");
        let applied = prepare(&paths).expect("prepare");
        assert_eq!(applied.len(), 3, "{applied:?}");
        let conf = load(&paths.config_dir.join(S3FILES_CONF)).expect("written file parses");
        assert_eq!(
            conf.get_from(Some("proxy"), "readahead_cache_max_memory_size_mb"),
            Some("64")
        );
        assert_eq!(
            conf.get_from(Some("proxy"), "proxy_logging_level"),
            Some("WARN")
        );
        assert_eq!(
            conf.get_from(Some("cloudwatch-log"), "enabled"),
            Some("false")
        );
        // Untouched keys survive byte for byte, braces and all.
        assert_eq!(
            conf.get_from(Some("mount"), "dns_name_format"),
            Some("{az_id}.{fs_id}.s3files.{region}.{dns_name_suffix}")
        );
        assert_eq!(
            conf.get_from(Some("mount.cn-north-1"), "dns_name_suffix"),
            Some("on.amazonwebservices.com.cn")
        );
        assert_eq!(conf.get_from(Some("client-info"), "source"), Some("k8s"));
        // The key the node generated is kept; the CA bundle comes from the image.
        let read = |n: &str| std::fs::read_to_string(paths.config_dir.join(n)).expect(n);
        assert_eq!(read(PRIVATE_KEY), "node key");
        assert_eq!(read("efs-utils.crt"), "CA");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(paths.log_dir.as_ref().expect("set"))
            .expect("logs")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        // A second start gives the same files (the package's copy is laid down again first).
        let before = read(S3FILES_CONF);
        prepare(&paths).expect("again");
        assert_eq!(read(S3FILES_CONF), before);
    }

    #[test]
    fn mounts_are_fitted_into_the_budget_step_by_step_then_refused() {
        let budget = MemoryBudget {
            per_mount: ProxyMemory {
                base_mib: 16,
                cache_mib: 64,
                direct_read_mib: 32,
            },
            budget_mib: 250,
        };
        let full = budget.fit(&[], 0).expect("fits");
        assert_eq!((full.cost_mib, full.added.len()), (112, 0));
        let second = budget.fit(&[], 112).expect("fits");
        assert_eq!(second.cost_mib, 112);
        // 26 MiB left: the cache goes (48 MiB is still too much), then direct reads.
        let third = budget.fit(&["noatime".into()], 224).expect("fits degraded");
        assert_eq!(third.added, vec!["nos3readcache", "nodirects3read"]);
        assert_eq!(
            third.options,
            vec!["noatime", "nos3readcache", "nodirects3read"]
        );
        assert_eq!(third.cost_mib, 16);
        // With room for 48 MiB only the cache goes.
        let partial = budget.fit(&[], 200).expect("fits");
        assert_eq!(partial.added, vec!["nos3readcache"]);
        let err = budget.fit(&[], 240).expect_err("spent");
        assert!(err.contains("240 MiB of 250 MiB"), "{err}");
        // A user's own nos3readcache is counted, not added twice.
        let own = budget.fit(&["nos3readcache".into()], 200).expect("fits");
        assert!(own.added.is_empty());
        assert_eq!(own.cost_mib, 48);
    }

    #[test]
    fn proxy_memory_follows_the_config_and_the_mount_options() {
        let (_dir, paths) = layout();
        prepare(&EfsUtilsPaths {
            overrides_dir: None,
            ..paths.clone()
        })
        .expect("prepare");
        // The package's file leaves the limits at efs-proxy's defaults.
        let defaults = ProxyMemory::from_config(&paths.config_dir).expect("read");
        assert_eq!(defaults, ProxyMemory::DEFAULTS);
        assert_eq!(defaults.of_mount(&[]), 16 + 1024 + 256);
        std::fs::write(
            paths.overrides_dir.as_ref().expect("set").join(S3FILES_CONF),
            "[proxy]\nreadahead_cache_max_memory_size_mb = 64\nread_bypass_max_in_flight_s3_bytes = 33554432\n",
        )
        .expect("fragment");
        prepare(&paths).expect("prepare");
        let sized = ProxyMemory::from_config(&paths.config_dir).expect("read");
        assert_eq!(sized.of_mount(&[]), 16 + 64 + 32);
        assert_eq!(sized.of_mount(&["nos3readcache".into()]), 16 + 32);
        assert_eq!(
            sized.of_mount(&["nos3readcache".into(), "nodirects3read".into()]),
            16
        );
        std::fs::write(
            paths
                .overrides_dir
                .as_ref()
                .expect("set")
                .join(S3FILES_CONF),
            "[proxy]\nreadahead_cache_enabled = false\nreadahead_cache_max_memory_size_mb = lots\n",
        )
        .expect("fragment");
        prepare(&paths).expect("prepare");
        let err = ProxyMemory::from_config(&paths.config_dir).expect_err("not a number");
        assert!(err.to_string().contains("not a number"), "{err}");
    }
}
