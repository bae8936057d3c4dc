#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Offline chart tests: `helm lint --strict`, `helm template` for the default values and every
//! `examples/values-*.yaml`, the values schema, and what the rendered objects must contain.

use e2e::{Helm, chart_dir, example_values_files, of_kind, one_of_kind, repo_root};
use serde_json::Value;

fn file_arg(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[test]
fn lint_strict_default_and_every_example_values_file() {
    let helm = Helm::new();
    let chart = file_arg(&chart_dir());
    helm.run(["lint", "--strict", &chart])
        .expect_ok("helm lint --strict (default values)");
    let examples = example_values_files();
    assert!(
        examples.len() >= 2,
        "expected examples/values-*.yaml files, found {examples:?}"
    );
    for values in examples {
        let v = file_arg(&values);
        helm.run(["lint", "--strict", &chart, "-f", &v])
            .expect_ok(&format!("helm lint --strict -f {v}"));
        let docs = helm.template("seshn-segment", "seshn-system", &["-f", &v]);
        assert!(
            !of_kind(&docs, "Deployment").is_empty(),
            "{v}: no Deployment rendered"
        );
    }
}

#[test]
fn schema_rejects_mistyped_and_unknown_values() {
    let helm = Helm::new();
    let chart = file_arg(&chart_dir());
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "replicaCount=two"], "/replicaCount"),
        (&["--set", "unknownTopLevelKey=1"], "unknownTopLevelKey"),
        (&["--set", "operator.concurrecny=4"], "concurrecny"),
        (
            &["--set", "operator.resyncInterval=soon"],
            "/operator/resyncInterval",
        ),
        (&["--set", "operator.logFormat=xml"], "/operator/logFormat"),
        (&["--set", "crds.keep=maybe"], "/crds/keep"),
        (
            &["--set", "image.pullPolicy=Sometimes"],
            "/image/pullPolicy",
        ),
        (
            &["--set", "watchNamespaces[0]=Not_A_Namespace"],
            "/watchNamespaces/0",
        ),
        (&["--set", "metrics.port=70000"], "/metrics/port"),
    ];
    for (args, mentions) in cases {
        let mut full = vec!["template", "t", chart.as_str()];
        full.extend_from_slice(args);
        let out = helm.run(&full);
        assert!(!out.success, "helm accepted {args:?}:\n{}", out.stdout);
        assert!(
            out.stderr
                .contains("values don't meet the specifications of the schema"),
            "{args:?} failed, but not with a schema error: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(mentions),
            "{args:?}: schema error does not name {mentions}: {}",
            out.stderr
        );
    }
    // And the default values pass the same schema.
    helm.run(["template", "t", &chart])
        .expect_ok("helm template (defaults)");
}

#[test]
fn chart_guards_unsafe_combinations() {
    let helm = Helm::new();
    let chart = file_arg(&chart_dir());
    let out = helm.run(["template", "t", &chart, "--set", "replicaCount=2"]);
    assert!(
        !out.success,
        "two replicas without leader election must be refused"
    );
    assert!(out.stderr.contains("leaderElection"), "{}", out.stderr);

    let out = helm.run([
        "template",
        "t",
        &chart,
        "--set",
        "podDisruptionBudget.enabled=true,podDisruptionBudget.maxUnavailable=1",
    ]);
    assert!(
        !out.success,
        "both minAvailable and maxUnavailable must be refused"
    );
    assert!(out.stderr.contains("exactly one"), "{}", out.stderr);
}

fn container(deploy: &Value) -> &Value {
    &deploy["spec"]["template"]["spec"]["containers"][0]
}

#[test]
fn default_render_is_hardened_cluster_mode() {
    let docs = Helm::new().template("seshn-segment", "seshn-system", &[]);
    let deploy = one_of_kind(&docs, "Deployment");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = container(deploy);
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(
        c["livenessProbe"]["httpGet"]["path"].is_string(),
        "liveness probe"
    );
    assert!(
        c["readinessProbe"]["httpGet"]["path"].is_string(),
        "readiness probe"
    );
    assert!(
        c["resources"]["requests"]["memory"].is_string(),
        "resources"
    );
    // One replica, no leader election: never two operators at once.
    assert_eq!(deploy["spec"]["replicas"], 1);
    assert_eq!(deploy["spec"]["strategy"]["type"], "Recreate");
    // The image defaults to the chart's appVersion, and so does the forwarder image.
    let chart_yaml: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap())
            .unwrap();
    let app_version = chart_yaml["appVersion"].as_str().unwrap();
    let expected = format!("ghcr.io/seshn-segment/seshn-segment:{app_version}");
    assert_eq!(c["image"], expected.as_str());
    assert!(
        serde_json::to_string(c).unwrap().contains(&expected),
        "forwarder image"
    );

    // Cluster mode: a ClusterRole bound to the chart's ServiceAccount, no Lease rights.
    let sa = one_of_kind(&docs, "ServiceAccount");
    let binding = one_of_kind(&docs, "ClusterRoleBinding");
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["namespace"], "seshn-system");
    assert!(
        of_kind(&docs, "Role").is_empty(),
        "no Role in cluster mode without leader election"
    );
    let rendered = serde_json::to_string(&docs).unwrap();
    assert!(
        !rendered.contains("leases"),
        "Lease RBAC only with leader election"
    );
    for kind in [
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PodMonitor",
        "NetworkPolicy",
    ] {
        assert!(
            of_kind(&docs, kind).is_empty(),
            "{kind} must be off by default"
        );
    }
    let cms = of_kind(&docs, "ConfigMap");
    assert!(cms.is_empty(), "dashboard ConfigMap must be off by default");
    // The metrics Service selects the operator pod.
    let svc = one_of_kind(&docs, "Service");
    let pod_labels = &deploy["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "Service selector {k}");
    }
}

#[test]
fn namespaced_mode_has_no_cluster_wide_grants_for_the_operator() {
    let docs = Helm::new().template(
        "seshn-segment",
        "seshn-system",
        &["--set", "watchNamespaces={tenant-a,tenant-b}"],
    );
    let roles = of_kind(&docs, "Role");
    let mut ns: Vec<&str> = roles
        .iter()
        .map(|r| r["metadata"]["namespace"].as_str().unwrap())
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, ["tenant-a", "tenant-b"]);
    assert_eq!(of_kind(&docs, "RoleBinding").len(), 2);
    assert!(of_kind(&docs, "ClusterRoleBinding").is_empty());
    // The only ClusterRoles left are the aggregated tenant roles, which bind to nobody here.
    for cr in of_kind(&docs, "ClusterRole") {
        let labels = cr["metadata"]["labels"].as_object().unwrap();
        assert!(
            labels
                .keys()
                .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-")),
            "unexpected ClusterRole {}",
            cr["metadata"]["name"]
        );
    }
    let deploy = one_of_kind(&docs, "Deployment");
    let rendered = serde_json::to_string(container(deploy)).unwrap();
    assert!(
        rendered.contains("tenant-a,tenant-b"),
        "watched namespaces reach the operator"
    );
}

#[test]
fn leader_election_adds_lease_rbac_and_rolling_updates() {
    let docs = Helm::new().template(
        "seshn-segment",
        "seshn-system",
        &[
            "--set",
            "leaderElection.enabled=true,replicaCount=2,podDisruptionBudget.enabled=true",
        ],
    );
    let deploy = one_of_kind(&docs, "Deployment");
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert_eq!(deploy["spec"]["strategy"]["type"], "RollingUpdate");
    let role = one_of_kind(&docs, "Role");
    assert_eq!(role["metadata"]["namespace"], "seshn-system");
    assert_eq!(role["rules"][0]["resources"], serde_json::json!(["leases"]));
    let pdb = one_of_kind(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
}

/// Every RBAC rule in the templates is preceded by a comment saying why it exists.
#[test]
fn every_rbac_rule_carries_a_comment() {
    let text = std::fs::read_to_string(chart_dir().join("templates/rbac.yaml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut rules = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("- apiGroups:") {
            rules += 1;
            let prev = lines[..i]
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap();
            assert!(
                prev.trim_start().starts_with('#'),
                "rule on line {} has no comment above it",
                i + 1
            );
        }
    }
    assert!(rules >= 10, "found only {rules} rules");
    assert!(
        text.contains("SENSITIVE: Secrets"),
        "the Secrets grant must be flagged"
    );
}

#[test]
fn production_example_renders_every_optional_object() {
    let values = repo_root().join("examples/values-production.yaml");
    let docs = Helm::new().template("seshn-segment", "seshn-system", &["-f", &file_arg(&values)]);
    for kind in [
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PodMonitor",
        "NetworkPolicy",
        "ConfigMap",
    ] {
        assert_eq!(of_kind(&docs, kind).len(), 1, "{kind}");
    }
    let cm = one_of_kind(&docs, "ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let data = cm["data"].as_object().unwrap();
    assert_eq!(data.len(), 1);
    let dashboard: Value = serde_json::from_str(data.values().next().unwrap().as_str().unwrap())
        .expect("dashboard is JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 6));
}

/// Every forwarder metric the dashboard queries is one the forwarder registers (prefix
/// `seshn_forwarder_`; counters gain `_total`, histograms `_bucket`). The end-to-end test also
/// checks them on a live forwarder's /metrics.
#[test]
fn dashboard_queries_only_metrics_the_forwarder_exports() {
    let dashboard =
        std::fs::read_to_string(chart_dir().join("files/dashboards/booking-health.json")).unwrap();
    let metrics_rs =
        std::fs::read_to_string(repo_root().join("crates/forwarder/src/metrics.rs")).unwrap();
    assert!(metrics_rs.contains("with_prefix(\"seshn_forwarder\")"));
    let names = e2e::dashboard_metric_names(&dashboard);
    assert!(
        names.len() >= 8,
        "dashboard queries too few metrics: {names:?}"
    );
    for name in &names {
        let base = e2e::metric_base_name(name);
        assert!(
            metrics_rs.contains(&format!("\"{base}\"")),
            "dashboard uses {name}, but the forwarder registers no metric {base:?}"
        );
    }
}

/// Every environment variable the chart gives the operator is one the binary reads (clap
/// ignores unknown variables, so a misspelt name would silently do nothing).
#[test]
fn every_operator_env_var_in_the_chart_is_read_by_the_binary() {
    let docs = Helm::new().template(
        "seshn-segment",
        "seshn-system",
        &["--set", "watchNamespaces={a},leaderElection.enabled=true"],
    );
    let deploy = one_of_kind(&docs, "Deployment");
    let main_rs = std::fs::read_to_string(repo_root().join("crates/operator/src/main.rs")).unwrap();
    let env = container(deploy)["env"].as_array().unwrap();
    assert!(env.len() >= 12, "{env:?}");
    for var in env {
        let name = var["name"].as_str().unwrap();
        if name == "RUST_LOG" {
            assert!(
                main_rs.contains("EnvFilter::try_from_default_env"),
                "RUST_LOG unused"
            );
            continue;
        }
        assert!(
            main_rs.contains(&format!("env = \"{name}\"")),
            "the chart sets {name}, which seshn-segment-operator does not read"
        );
    }
    assert_eq!(
        container(deploy)["command"][0],
        "/usr/local/bin/seshn-segment-operator"
    );
    assert_eq!(container(deploy)["args"][0], "run");
}
