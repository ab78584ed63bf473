//! The Helm chart on a real Kubernetes control plane (issue 10): deploy/kube-test.sh
//! starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on
//! loopback and installs, upgrades, tests and uninstalls the chart, and checks that bad
//! values are refused. The control plane is built once by deploy/kube-tools.sh (which
//! deploy/test.sh runs before the tests) and cached outside the repository.

use baton_tests::workspace;
use std::process::Command;

#[test]
fn the_chart_installs_upgrades_and_refuses_bad_values_on_a_real_control_plane() {
    let out = Command::new("bash")
        .arg(workspace().join("deploy/kube-test.sh"))
        .output()
        .expect("running deploy/kube-test.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "deploy/kube-test.sh failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for step in ["bad values are refused", "helm test", "every pool kind", "three coordinators", "kube-test passed"] {
        assert!(stdout.contains(step), "the run skipped '{step}':\n{stdout}");
    }
}
