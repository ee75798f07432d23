//! The README's main job: `s3files-csi quickstart` provisions, mounts, writes, reads and
//! cleans up two volumes on this machine (needs root and /dev/fuse, as the README says).

mod common;

#[test]
fn the_quickstart_runs_end_to_end_and_leaves_nothing_mounted() {
    let out = std::process::Command::new(common::BIN)
        .arg("quickstart")
        // As the README runs it: no log settings.
        .env_remove("RUST_LOG")
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
    // Its steps are the output: the plugins inside it do not log each call between them.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains(" INFO "),
        "request logs in the output:\n{stderr}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains("s3files-quickstart-"),
        "a quickstart mount was left behind"
    );
}
