#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Offline chart tests: `helm lint --strict`, `helm template` for the default values and every
//! `examples/values-*.yaml`, the values schema, and what the rendered objects must contain.

use bridge_api::SeshnSegmentBridge;
use e2e::{Helm, chart_dir, example_values_files, of_kind, one_of_kind, repo_root};
use operator::build::{Workload, build};
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
        // Security contexts list the Kubernetes fields: a typo must not pass silently (here the
        // intended readOnlyRootFilesystem would stay unset).
        (
            &["--set", "securityContext.readOnlyRootFileSystem=true"],
            "readOnlyRootFileSystem",
        ),
        (
            &["--set", "securityContext.capabilities.dorp[0]=ALL"],
            "dorp",
        ),
        (
            &["--set", "securityContext.allowPrivilegeEscalation=no"],
            "/securityContext/allowPrivilegeEscalation",
        ),
        (&["--set", "podSecurityContext.runAsUsr=1000"], "runAsUsr"),
        (
            &["--set", "podSecurityContext.seccompProfile.type=Default"],
            "/podSecurityContext/seccompProfile/type",
        ),
        (&["--set", "affinity.nodeAfinity.x=1"], "nodeAfinity"),
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

/// A PodDisruptionBudget that allows no eviction would block every node drain: the chart refuses
/// it with a message that says what to set instead, and accepts the budgets that allow one.
#[test]
fn pod_disruption_budget_never_blocks_node_drains() {
    let helm = Helm::new();
    let chart = file_arg(&chart_dir());
    let refused = [
        // The defaults with one replica: minAvailable 1 of 1.
        "podDisruptionBudget.enabled=true",
        "podDisruptionBudget.enabled=true,replicaCount=2,leaderElection.enabled=true,\
         podDisruptionBudget.minAvailable=2",
        "podDisruptionBudget.enabled=true,podDisruptionBudget.minAvailable=50%",
        "podDisruptionBudget.enabled=true,podDisruptionBudget.minAvailable=null,\
         podDisruptionBudget.maxUnavailable=0",
        "podDisruptionBudget.enabled=true,podDisruptionBudget.minAvailable=null,\
         podDisruptionBudget.maxUnavailable=0%",
    ];
    for set in refused {
        let out = helm.run(["template", "t", &chart, "--set", set]);
        assert!(
            !out.success,
            "a PDB allowing no eviction was rendered: {set}"
        );
        assert!(
            out.stderr.contains("would block every node drain")
                && out.stderr.contains("maxUnavailable=1"),
            "{set}: unclear refusal: {}",
            out.stderr
        );
    }
    let accepted: [(&str, &str, Value); 3] = [
        (
            "podDisruptionBudget.enabled=true,podDisruptionBudget.minAvailable=null,\
             podDisruptionBudget.maxUnavailable=1",
            "maxUnavailable",
            1.into(),
        ),
        (
            "podDisruptionBudget.enabled=true,replicaCount=2,leaderElection.enabled=true",
            "minAvailable",
            1.into(),
        ),
        (
            "podDisruptionBudget.enabled=true,replicaCount=3,leaderElection.enabled=true,\
             podDisruptionBudget.minAvailable=50%",
            "minAvailable",
            "50%".into(),
        ),
    ];
    for (set, field, value) in accepted {
        let docs = helm.template("t", "seshn-system", &["--set", set]);
        let pdb = one_of_kind(&docs, "PodDisruptionBudget");
        assert_eq!(pdb["spec"][field], value, "{set}");
    }
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
    // Only Leases; get/update only on the operator's own Lease, create (not limitable by name)
    // on its own.
    let rules = role["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2, "{rules:?}");
    for rule in rules {
        assert_eq!(
            rule["apiGroups"],
            serde_json::json!(["coordination.k8s.io"])
        );
        assert_eq!(rule["resources"], serde_json::json!(["leases"]));
    }
    let named = rules
        .iter()
        .find(|r| r["resourceNames"].is_array())
        .expect("a rule limited by resourceNames");
    assert_eq!(
        named["resourceNames"],
        serde_json::json!(["seshn-segment-operator"])
    );
    assert_eq!(named["verbs"], serde_json::json!(["get", "update"]));
    let create = rules.iter().find(|r| r["resourceNames"].is_null()).unwrap();
    assert_eq!(create["verbs"], serde_json::json!(["create"]));
    let pdb = one_of_kind(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    // The Lease name in the Role follows the value the operator is given.
    let docs = Helm::new().template(
        "seshn-segment",
        "seshn-system",
        &[
            "--set",
            "leaderElection.enabled=true,leaderElection.leaseName=my-lease",
        ],
    );
    let role = one_of_kind(&docs, "Role");
    assert!(
        role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resourceNames"] == serde_json::json!(["my-lease"])),
        "{role}"
    );
    let env = container(one_of_kind(&docs, "Deployment"))["env"].clone();
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "LEASE_NAME" && e["value"] == "my-lease"),
        "{env}"
    );
}

/// The operator's rules grant exactly the verbs its code uses: it deletes only workloads of the
/// wrong kind and dropped Ingresses (everything else goes by garbage collection), and records
/// Events only through events.k8s.io (kube-runtime's Recorder).
#[test]
fn operator_rules_grant_only_the_verbs_the_operator_uses() {
    let docs = Helm::new().template("seshn-segment", "seshn-system", &[]);
    let cluster_role = of_kind(&docs, "ClusterRole")
        .into_iter()
        .find(|r| {
            r["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-operator"))
        })
        .expect("the operator's ClusterRole");
    let verbs_of = |group: &str, resource: &str| -> Vec<String> {
        let mut verbs: Vec<String> = cluster_role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["apiGroups"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|g| g == group)
                    && r["resources"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|x| x == resource)
            })
            .flat_map(|r| r["verbs"].as_array().unwrap().clone())
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        verbs.sort();
        verbs
    };
    let read_apply = ["create", "get", "list", "patch", "watch"];
    let read_apply_delete = ["create", "delete", "get", "list", "patch", "watch"];
    assert_eq!(verbs_of("", "secrets"), read_apply, "secrets");
    assert_eq!(verbs_of("", "services"), read_apply, "services");
    assert_eq!(verbs_of("apps", "deployments"), read_apply_delete);
    assert_eq!(verbs_of("apps", "statefulsets"), read_apply_delete);
    assert_eq!(
        verbs_of("networking.k8s.io", "ingresses"),
        read_apply_delete
    );
    assert_eq!(verbs_of("events.k8s.io", "events"), ["create", "patch"]);
    assert!(verbs_of("", "events").is_empty(), "no core v1 Events");
    // kube-runtime's Recorder in the locked version really writes events.k8s.io/v1.
    let lock = std::fs::read_to_string(repo_root().join("Cargo.lock")).unwrap();
    assert!(
        lock.contains("name = \"kube-runtime\"\nversion = \"5."),
        "kube-runtime changed major version: re-check which Events API its Recorder writes"
    );
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

/// The forwarder pod template the operator builds for `examples/<file>` (a bridge named as in
/// the file, in namespace `acme`): its labels and its container's named ports.
fn forwarder_pod(file: &str) -> (String, Value, Vec<String>) {
    let text = std::fs::read_to_string(repo_root().join("examples").join(file)).unwrap();
    let doc = e2e::parse_manifests(&text)
        .into_iter()
        .find(|d| d["kind"] == "SeshnSegmentBridge")
        .unwrap_or_else(|| panic!("examples/{file}: no bridge"));
    let mut bridge: SeshnSegmentBridge = serde_json::from_value(doc).unwrap();
    bridge.metadata.namespace = Some("acme".into());
    bridge.metadata.uid = Some("uid-1".into());
    let v = operator::validate::validate(&bridge, &operator::Config::new("img:1")).unwrap();
    let template = match build(&bridge, &v, "checksum").workload {
        Workload::Deployment(d) => d.spec.unwrap().template,
        Workload::StatefulSet(s) => s.spec.unwrap().template,
    };
    let labels = serde_json::to_value(template.metadata.unwrap().labels.unwrap()).unwrap();
    let ports = template.spec.unwrap().containers[0]
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.name)
        .collect();
    (bridge.metadata.name.unwrap(), labels, ports)
}

/// Prometheus' name for a pod label in service discovery (`__meta_kubernetes_pod_label_<name>`,
/// every character outside `[a-zA-Z0-9_]` turned into `_`).
fn pod_label_meta(label: &str) -> String {
    let sanitized: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("__meta_kubernetes_pod_label_{sanitized}")
}

/// The PodMonitor selects the forwarder pods exactly as the operator labels them (for a
/// Deployment and a StatefulSet bridge), scrapes a port the forwarder container names, and
/// takes the dashboard's `bridge` label from a pod label that holds the bridge's name. It does
/// not select the operator's own pod.
#[test]
fn pod_monitor_selects_the_forwarder_pods_the_operator_builds() {
    let docs = Helm::new().template(
        "seshn-segment",
        "seshn-system",
        &[
            "--set",
            "serviceMonitor.enabled=true,serviceMonitor.forwarders.enabled=true",
        ],
    );
    let pm = one_of_kind(&docs, "PodMonitor");
    let selector = pm["spec"]["selector"]["matchLabels"].as_object().unwrap();
    assert!(!selector.is_empty(), "an empty selector matches every pod");
    let endpoint = &pm["spec"]["podMetricsEndpoints"][0];
    let relabel_source = |target: &str| -> String {
        let r = endpoint["relabelings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["targetLabel"] == target)
            .unwrap_or_else(|| panic!("no relabeling to {target}"));
        assert_eq!(r["sourceLabels"].as_array().unwrap().len(), 1, "{r}");
        r["sourceLabels"][0].as_str().unwrap().to_owned()
    };
    let bridge_source = relabel_source("bridge");
    assert_eq!(relabel_source("namespace"), "__meta_kubernetes_namespace");
    for file in ["bridge.yaml", "pvc-spool.yaml"] {
        let (bridge_name, labels, ports) = forwarder_pod(file);
        for (k, v) in selector {
            assert_eq!(
                &labels[k], v,
                "{file}: PodMonitor selects {k}={v}, the forwarder pod has {labels}"
            );
        }
        let port = endpoint["port"].as_str().unwrap();
        assert!(
            ports.iter().any(|p| p == port),
            "{file}: PodMonitor scrapes port {port:?}, the forwarder names {ports:?}"
        );
        let bridge_label = labels
            .as_object()
            .unwrap()
            .iter()
            .find(|(k, _)| pod_label_meta(k) == bridge_source)
            .unwrap_or_else(|| {
                panic!("{file}: `bridge` comes from {bridge_source}, no such pod label in {labels}")
            });
        assert_eq!(
            bridge_label.1, &bridge_name,
            "{file}: `bridge` must be the bridge's name"
        );
    }
    let deploy = one_of_kind(&docs, "Deployment");
    let operator_labels = &deploy["spec"]["template"]["metadata"]["labels"];
    assert!(
        selector.iter().any(|(k, v)| &operator_labels[k] != v),
        "the PodMonitor must not scrape the operator pod"
    );
}

/// Latency and errors are shown per bridge: every aggregation in those panels and in the
/// per-bridge table keeps `namespace` and `bridge` (a latency quantile of all bridges' summed
/// histograms hides the one slow tenant), and the table has latency and error columns.
#[test]
fn dashboard_latency_and_errors_are_per_bridge() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("files/dashboards/booking-health.json")).unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let panel = |title: &str| {
        panels
            .iter()
            .find(|p| p["title"].as_str().is_some_and(|t| t.starts_with(title)))
            .unwrap_or_else(|| panic!("no panel {title:?}"))
    };
    let exprs = |p: &Value| -> Vec<String> {
        p["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["expr"].as_str().unwrap().to_owned())
            .collect()
    };
    for title in ["Delivery latency", "Delivery errors", "Per bridge"] {
        for expr in exprs(panel(title)) {
            let groups: Vec<&str> = expr
                .match_indices("by (")
                .map(|(i, _)| {
                    let rest = &expr[i + 4..];
                    &rest[..rest.find(')').unwrap()]
                })
                .collect();
            assert!(
                !groups.is_empty(),
                "{title}: {expr} aggregates without `by`"
            );
            for g in groups {
                let labels: Vec<&str> = g.split(',').map(str::trim).collect();
                assert!(
                    labels.contains(&"bridge") && labels.contains(&"namespace"),
                    "{title}: `by ({g})` mixes bridges in {expr}"
                );
                if expr.contains("histogram_quantile") {
                    assert!(labels.contains(&"le"), "{title}: {expr}");
                }
            }
        }
    }
    let table = panel("Per bridge");
    let table_exprs = exprs(table).join("\n");
    for metric in [
        "seshn_forwarder_delivery_latency_seconds_bucket",
        "seshn_forwarder_batches_total",
        "seshn_forwarder_delivery_attempts_failed_total",
    ] {
        assert!(
            table_exprs.contains(metric),
            "the per-bridge table lacks {metric}"
        );
    }
    let columns: Vec<&str> = table["transformations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["options"]["renameByName"].as_object())
        .flat_map(|m| m.values().filter_map(Value::as_str))
        .collect();
    assert!(columns.iter().any(|c| c.contains("latency")), "{columns:?}");
    assert!(columns.iter().any(|c| c.contains("failed")), "{columns:?}");
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
