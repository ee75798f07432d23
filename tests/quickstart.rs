//! The README's main job: `s3files-csi quickstart` provisions, mounts, writes, reads and
//! cleans up two volumes on this machine (needs root and /dev/fuse, as the README says).

mod common;

#[test]
fn the_quickstart_runs_end_to_end_and_leaves_nothing_mounted() {
    let out = std::process::Command::new(common::BIN)
        .arg("quickstart")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the quickstart");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "CreateVolume pvc-quickstart-a ... ok",
        "NodePublishVolume pvc-quickstart-b",
        "holds \"hello from pvc-quickstart-a\"",
        "DeleteVolume pvc-quickstart-b ... ok",
        "quickstart finished",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains("s3files-quickstart-"),
        "a quickstart mount was left behind"
    );
}
