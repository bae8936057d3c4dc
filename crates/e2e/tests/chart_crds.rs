#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The chart's CRD copy (`charts/seshn-segment/files/crds/`) must equal the generated `crds/`
//! (run `scripts/sync-chart-crds.sh` after regenerating), and the chart must render it behind
//! `crds.enabled`, with `helm.sh/resource-policy: keep` exactly when `crds.keep`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use e2e::{Helm, chart_dir, of_kind, parse_manifests, repo_root};
use serde_json::Value;

fn yaml_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn chart_crd_copy_matches_generated_crds() {
    let source = yaml_files(&repo_root().join("crds"));
    let copy = yaml_files(&chart_dir().join("files/crds"));
    assert!(!source.is_empty(), "crds/ holds no CRD");
    assert_eq!(
        source.keys().collect::<Vec<_>>(),
        copy.keys().collect::<Vec<_>>(),
        "chart CRD files differ from crds/: run scripts/sync-chart-crds.sh"
    );
    for (name, bytes) in &source {
        assert!(
            copy[name] == *bytes,
            "charts/seshn-segment/files/crds/{name} drifted from crds/{name}: run scripts/sync-chart-crds.sh"
        );
    }
    let check = Command::new("bash")
        .arg(repo_root().join("scripts/sync-chart-crds.sh"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "sync-chart-crds.sh --check: {}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// The CRD without the metadata the chart adds, with every number as a float: Helm's
/// YAML round trip writes `50.0` as `50`, which is the same JSON-schema bound.
fn comparable(mut crd: Value) -> Value {
    fn numbers_as_floats(v: &mut Value) {
        match v {
            Value::Number(n) => {
                *v = serde_json::json!(n.as_f64().unwrap());
            }
            Value::Array(items) => items.iter_mut().for_each(numbers_as_floats),
            Value::Object(map) => map.values_mut().for_each(numbers_as_floats),
            _ => {}
        }
    }
    let meta = crd["metadata"].as_object_mut().unwrap();
    meta.remove("labels");
    meta.remove("annotations");
    numbers_as_floats(&mut crd);
    crd
}

#[test]
fn chart_renders_the_crds_with_keep_policy_behind_values() {
    let helm = Helm::new();
    let sources: Vec<Value> = yaml_files(&repo_root().join("crds"))
        .values()
        .flat_map(|b| parse_manifests(std::str::from_utf8(b).unwrap()))
        .collect();
    assert!(!sources.is_empty());

    let docs = helm.template("r", "seshn-system", &[]);
    let rendered = of_kind(&docs, "CustomResourceDefinition");
    assert_eq!(
        rendered.len(),
        sources.len(),
        "crds.enabled renders every CRD"
    );
    for src in &sources {
        let name = &src["metadata"]["name"];
        let crd = rendered
            .iter()
            .find(|c| &c["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("CRD {name} not rendered"));
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "crds.keep defaults to true"
        );
        assert_eq!(
            crd["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "Helm"
        );
        assert!(
            comparable((*crd).clone()) == comparable(src.clone()),
            "rendered CRD {name} differs from crds/"
        );
    }

    let docs = helm.template("r", "seshn-system", &["--set", "crds.keep=false"]);
    for crd in of_kind(&docs, "CustomResourceDefinition") {
        assert!(
            crd["metadata"]["annotations"]
                .get("helm.sh/resource-policy")
                .is_none(),
            "no keep policy with crds.keep=false"
        );
    }

    let docs = helm.template("r", "seshn-system", &["--set", "crds.enabled=false"]);
    assert!(of_kind(&docs, "CustomResourceDefinition").is_empty());
}
