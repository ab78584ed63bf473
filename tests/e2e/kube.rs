//! The deployment (issue 10). deploy/kube-test.sh starts etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and kwok on loopback and installs, upgrades,
//! tests and uninstalls the Helm chart, and checks that bad values are refused (the
//! control plane is built once by deploy/kube-tools.sh, which deploy/test.sh runs before
//! the tests, and cached outside the repository). deploy/images/test.sh runs every image
//! under podman, and deploy/images/kube-play-test.sh the chart's rendered pods (the images
//! are built by deploy/test.sh before the tests, too).

use baton_tests::workspace;
use std::process::{Command, Output};

/// Runs a script of deploy/ and returns its stdout; panics with all its output if it fails.
fn script(path: &str, env: &[(&str, &str)]) -> String {
    let Output { status, stdout, stderr } = Command::new("bash")
        .arg(workspace().join(path))
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("running {path}: {e}"));
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    assert!(status.success(), "{path} failed ({status}):\n{stdout}\n{}", String::from_utf8_lossy(&stderr));
    stdout
}

#[test]
fn the_chart_installs_upgrades_and_refuses_bad_values_on_a_real_control_plane() {
    let stdout = script("deploy/kube-test.sh", &[]);
    for step in ["bad values are refused", "helm test", "every pool kind", "three coordinators", "kube-test passed"] {
        assert!(stdout.contains(step), "the run skipped '{step}':\n{stdout}");
    }
}

#[test]
fn every_image_runs_its_jobs_and_the_rendered_chart_serves_one_under_podman() {
    let reuse = [("BATON_IMAGES_REUSE", "1")];
    let images = script("deploy/images/test.sh", &reuse);
    for check in ["SERVING", "libtorch_cuda.so loaded", "desktop-login-on-agent-browser", "all checks passed"] {
        assert!(images.contains(check), "deploy/images/test.sh skipped '{check}':\n{images}");
    }
    let played = script("deploy/images/kube-play-test.sh", &reuse);
    assert!(played.contains("kube-play-test passed"), "{played}");
}
