//! Build stage (pure): every child object of a bridge, from the validated spec and the
//! checksum of the secret values the pods use. No client, no I/O.

use std::collections::BTreeMap;

use bridge_api::{DeliveryMode, SeshnSegmentBridge};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment, StatefulSet,
    StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction, KeyToPath,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource, SecurityContext,
    Service, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use sha2::{Digest, Sha256};

use crate::config::MANAGED_BY;
use crate::validate::{SIGNING_SECRET_KEY, Validated, WorkloadKind};

/// Pod template annotation carrying the checksum of the secret values the pods read, so the
/// pods roll when one of them changes.
pub const CHECKSUM_ANNOTATION: &str = "integrations.seshn.net/secrets-checksum";
/// Label naming the bridge a child belongs to.
pub const BRIDGE_LABEL: &str = "integrations.seshn.net/bridge";
/// Port the forwarder listens on inside the pod.
pub const FORWARDER_PORT: i32 = 8080;
/// Forwarder binary inside the image.
pub const FORWARDER_COMMAND: &str = "/usr/local/bin/seshn-segment-forwarder";
/// Where the signing secret is mounted.
pub const WEBHOOK_SECRET_DIR: &str = "/etc/seshn-segment/webhook";
/// Where the Segment write key is mounted.
pub const WRITE_KEY_DIR: &str = "/etc/seshn-segment/segment";
/// Where the spool lives.
pub const SPOOL_DIR: &str = "/var/spool/seshn-segment";
/// UID/GID the forwarder runs as (the distroless `nonroot` user).
pub const RUN_AS: i64 = 65532;
/// Share of the spool volume given to the forwarder as `SPOOL_MAX_BYTES`, in percent. The
/// spool's redb file grows to about 1.3x its logical bound during a long outage (pages freed by
/// acknowledged events are reused only after a compaction), so 60% keeps it near 80% of the
/// volume. With a bound close to the volume (the former 90%), kubelet would evict the pod for
/// exceeding the emptyDir `sizeLimit` and delete the emptyDir with the events it had already
/// acknowledged to Seshn; a full PVC would fail the spool's writes instead.
pub const SPOOL_BOUND_PERCENT: u64 = 60;
/// `SHUTDOWN_DELAY` of the forwarder: after SIGTERM it reports not ready and keeps serving this
/// long, so endpoints and ingress controllers stop routing to it before it stops accepting.
pub const SHUTDOWN_DELAY_SECS: i64 = 5;
/// `SHUTDOWN_GRACE` of the forwarder: the time it then has to drain in-flight requests and
/// batches (the forwarder's own default, set explicitly so the pod's grace period below is
/// computed from the value actually used).
pub const SHUTDOWN_GRACE_SECS: i64 = 20;
/// Slack on top of delay + grace before kubelet sends SIGKILL (process exit, a slow node).
pub const TERMINATION_MARGIN_SECS: i64 = 10;

/// The forwarder's spool bound for a spool volume of `volume_bytes`.
pub fn spool_max_bytes(volume_bytes: u64) -> u64 {
    volume_bytes / 100 * SPOOL_BOUND_PERCENT
}

/// The forwarder workload.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    /// Deployment (no spool or emptyDir spool).
    Deployment(Box<Deployment>),
    /// StatefulSet (PVC spool).
    StatefulSet(Box<StatefulSet>),
}

/// Every child except the signing Secret (whose value is generated once, see
/// [`signing_secret`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    /// Forwarder workload.
    pub workload: Workload,
    /// Forwarder Service.
    pub service: Service,
    /// Ingress, when `exposure.ingress` is set.
    pub ingress: Option<Ingress>,
}

/// Checksum over the secret values the forwarder pods read (hex SHA-256; the values cannot be
/// recovered from it).
pub fn secrets_checksum(values: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for v in values {
        h.update((v.len() as u64).to_be_bytes());
        h.update(v);
    }
    hex::encode(h.finalize())
}

/// Labels on every child.
pub fn labels(v: &Validated) -> BTreeMap<String, String> {
    let mut l = selector_labels(v);
    l.insert("app.kubernetes.io/component".into(), "forwarder".into());
    l.insert("app.kubernetes.io/part-of".into(), "seshn-segment".into());
    l.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    l.insert(BRIDGE_LABEL.into(), v.name.clone());
    l
}

fn selector_labels(v: &Validated) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "seshn-segment-forwarder".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), v.name.clone()),
    ])
}

fn meta(bridge: &SeshnSegmentBridge, v: &Validated, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(v.namespace.clone()),
        labels: Some(labels(v)),
        owner_references: owner_ref(bridge).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn owner_ref(bridge: &SeshnSegmentBridge) -> Option<OwnerReference> {
    bridge.controller_owner_ref(&())
}

/// Annotation on a regenerated signing Secret naming the webhook that was registered with the
/// lost secret, until that webhook has been replaced and deleted at Seshn. It lives on the
/// Secret, written together with the new value, so no crash can separate the two.
pub const REPLACES_WEBHOOK_ANNOTATION: &str = "integrations.seshn.net/replaces-webhook";

/// The signing Secret holding `secret` (generated by the operator, or Seshn's answer);
/// `replaces` is the webhook registered with an earlier secret that still has to be replaced.
pub fn signing_secret(
    bridge: &SeshnSegmentBridge,
    v: &Validated,
    secret: &str,
    replaces: Option<&str>,
) -> Secret {
    let mut metadata = meta(bridge, v, &v.signing_secret_name);
    if let Some(id) = replaces {
        metadata.annotations = Some(BTreeMap::from([(
            REPLACES_WEBHOOK_ANNOTATION.to_owned(),
            id.to_owned(),
        )]));
    }
    Secret {
        metadata,
        data: Some(BTreeMap::from([(
            SIGNING_SECRET_KEY.to_owned(),
            ByteString(secret.as_bytes().to_vec()),
        )])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("50m".into())),
            ("memory".to_owned(), Quantity("32Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("128Mi".into()),
        )])),
        claims: None,
    }
}

fn probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

fn pod_template(bridge: &SeshnSegmentBridge, v: &Validated, checksum: &str) -> PodTemplateSpec {
    let spec = &bridge.spec;
    let spooled = spec.delivery.mode == DeliveryMode::Spooled;
    let mut envs = vec![
        env("FORWARDER_LISTEN", format!("0.0.0.0:{FORWARDER_PORT}")),
        env(
            "SESHN_WEBHOOK_SECRET_FILE",
            format!("{WEBHOOK_SECRET_DIR}/secret"),
        ),
        env(
            "SEGMENT_WRITE_KEY_FILE",
            format!("{WRITE_KEY_DIR}/write-key"),
        ),
        env("SEGMENT_ENDPOINT", spec.segment.endpoint.clone()),
        env("DELIVERY_MODE", spec.delivery.mode.as_str()),
        env("MAPPING_PROFILE", spec.mapping.profile.as_str()),
        env("BRIDGE_ID", v.uid.clone()),
        env("LOG_FORMAT", "json"),
    ];
    // Non-default mapping options only, so a default bridge carries no dead settings.
    if !spec.mapping.identify {
        envs.push(env("MAPPING_IDENTIFY", "false"));
    }
    if !spec.mapping.extra_properties.is_empty() {
        envs.push(env(
            "MAPPING_EXTRA_PROPERTIES",
            serde_json::to_string(&spec.mapping.extra_properties).unwrap_or_default(),
        ));
    }
    if spooled {
        envs.push(env("SPOOL_DIR", SPOOL_DIR));
        // Well below the volume: see SPOOL_BOUND_PERCENT for why not 90%.
        envs.push(env(
            "SPOOL_MAX_BYTES",
            spool_max_bytes(v.spool_bytes).to_string(),
        ));
    }
    envs.push(env("SHUTDOWN_DELAY", format!("{SHUTDOWN_DELAY_SECS}s")));
    envs.push(env("SHUTDOWN_GRACE", format!("{SHUTDOWN_GRACE_SECS}s")));
    let mut mounts = vec![
        VolumeMount {
            name: "webhook-secret".into(),
            mount_path: WEBHOOK_SECRET_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "segment-write-key".into(),
            mount_path: WRITE_KEY_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        },
    ];
    let mut volumes = vec![
        Volume {
            name: "webhook-secret".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(v.signing_secret_name.clone()),
                items: Some(vec![KeyToPath {
                    key: SIGNING_SECRET_KEY.into(),
                    path: "secret".into(),
                    mode: None,
                }]),
                default_mode: Some(0o440),
                optional: Some(false),
            }),
            ..Volume::default()
        },
        Volume {
            name: "segment-write-key".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(spec.segment.write_key_secret_ref.name.clone()),
                items: Some(vec![KeyToPath {
                    key: spec.segment.write_key_secret_ref.key.clone(),
                    path: "write-key".into(),
                    mode: None,
                }]),
                default_mode: Some(0o440),
                optional: Some(false),
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("16Mi".into())),
                medium: None,
            }),
            ..Volume::default()
        },
    ];
    if spooled {
        mounts.push(VolumeMount {
            name: "spool".into(),
            mount_path: SPOOL_DIR.into(),
            ..VolumeMount::default()
        });
        if v.workload == WorkloadKind::Deployment {
            volumes.push(Volume {
                name: "spool".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    size_limit: Some(Quantity(v.spool_bytes.to_string())),
                    medium: None,
                }),
                ..Volume::default()
            });
        }
    }
    let container = Container {
        name: "forwarder".into(),
        image: Some(v.image.clone()),
        command: Some(vec![FORWARDER_COMMAND.into()]),
        env: Some(envs),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: FORWARDER_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(probe("/readyz", 5)),
        liveness_probe: Some(probe("/healthz", 10)),
        resources: Some(
            spec.forwarder
                .resources
                .as_ref()
                .map_or_else(default_resources, Into::into),
        ),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(v)),
            annotations: Some(BTreeMap::from([(
                CHECKSUM_ANNOTATION.to_owned(),
                checksum.to_owned(),
            )])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            // The forwarder never talks to the Kubernetes API.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            // SIGTERM → not ready for SHUTDOWN_DELAY → drain for SHUTDOWN_GRACE: SIGKILL must
            // not come before both are over.
            termination_grace_period_seconds: Some(
                SHUTDOWN_DELAY_SECS + SHUTDOWN_GRACE_SECS + TERMINATION_MARGIN_SECS,
            ),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS),
                run_as_group: Some(RUN_AS),
                fs_group: Some(RUN_AS),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            }),
            ..PodSpec::default()
        }),
    }
}

/// Every child but the signing Secret.
pub fn build(bridge: &SeshnSegmentBridge, v: &Validated, checksum: &str) -> Children {
    let template = pod_template(bridge, v, checksum);
    let selector = LabelSelector {
        match_labels: Some(selector_labels(v)),
        match_expressions: None,
    };
    let replicas = Some(bridge.spec.forwarder.replicas);
    let workload = match v.workload {
        WorkloadKind::Deployment => Workload::Deployment(Box::new(Deployment {
            metadata: meta(bridge, v, &v.forwarder_name),
            spec: Some(DeploymentSpec {
                replicas,
                selector,
                template,
                // Never drop below the wanted number of serving pods during a roll.
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(IntOrString::Int(1)),
                        max_unavailable: Some(IntOrString::Int(0)),
                    }),
                }),
                revision_history_limit: Some(3),
                ..DeploymentSpec::default()
            }),
            status: None,
        })),
        WorkloadKind::StatefulSet => {
            let spool = &bridge.spec.delivery.spool;
            Workload::StatefulSet(Box::new(StatefulSet {
                metadata: meta(bridge, v, &v.forwarder_name),
                spec: Some(StatefulSetSpec {
                    replicas,
                    selector,
                    template,
                    service_name: Some(v.forwarder_name.clone()),
                    // Replicas are independent spools; no need to start them one by one.
                    pod_management_policy: Some("Parallel".into()),
                    revision_history_limit: Some(3),
                    volume_claim_templates: Some(vec![PersistentVolumeClaim {
                        metadata: ObjectMeta {
                            name: Some("spool".into()),
                            labels: Some(labels(v)),
                            ..ObjectMeta::default()
                        },
                        spec: Some(PersistentVolumeClaimSpec {
                            access_modes: Some(vec!["ReadWriteOnce".into()]),
                            storage_class_name: spool.storage_class_name.clone(),
                            resources: Some(VolumeResourceRequirements {
                                requests: Some(BTreeMap::from([(
                                    "storage".to_owned(),
                                    Quantity(v.spool_bytes.to_string()),
                                )])),
                                limits: None,
                            }),
                            ..PersistentVolumeClaimSpec::default()
                        }),
                        status: None,
                    }]),
                    ..StatefulSetSpec::default()
                }),
                status: None,
            }))
        }
    };
    let service = Service {
        metadata: meta(bridge, v, &v.forwarder_name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(v)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    let ingress = bridge.spec.exposure.ingress.as_ref().map(|ing| {
        let mut m = meta(bridge, v, &v.forwarder_name);
        if !ing.annotations.is_empty() {
            m.annotations = Some(ing.annotations.clone());
        }
        // Only this bridge's hook path is routed; everything else on the host stays closed.
        let path = format!("{}/hooks/{}", ing.path.trim_end_matches('/'), v.uid);
        Ingress {
            metadata: m,
            spec: Some(IngressSpec {
                ingress_class_name: ing.class_name.clone(),
                tls: ing.tls_secret_name.as_ref().map(|s| {
                    vec![IngressTLS {
                        hosts: Some(vec![ing.host.clone()]),
                        secret_name: Some(s.clone()),
                    }]
                }),
                rules: Some(vec![IngressRule {
                    host: Some(ing.host.clone()),
                    http: Some(HTTPIngressRuleValue {
                        paths: vec![HTTPIngressPath {
                            path: Some(path),
                            path_type: "Exact".into(),
                            backend: IngressBackend {
                                service: Some(IngressServiceBackend {
                                    name: v.forwarder_name.clone(),
                                    port: Some(ServiceBackendPort {
                                        name: Some("http".into()),
                                        number: None,
                                    }),
                                }),
                                resource: None,
                            },
                        }],
                    }),
                }]),
                default_backend: None,
            }),
            status: None,
        }
    });
    Children {
        workload,
        service,
        ingress,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::fixtures::bridge;
    use crate::validate::validate;
    use bridge_api::{IngressSpec as BridgeIngress, SpoolStorage};

    fn pod_spec(w: &Workload) -> PodSpec {
        match w {
            Workload::Deployment(d) => d.spec.clone().unwrap().template.spec.unwrap(),
            Workload::StatefulSet(s) => s.spec.clone().unwrap().template.spec.unwrap(),
        }
    }

    fn env_of(p: &PodSpec, name: &str) -> Option<String> {
        p.containers[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    }

    #[test]
    fn deployment_is_hardened_and_configured() {
        let bridge = bridge();
        let validated = validate(&bridge, &Config::new("img:1")).unwrap();
        let children = build(&bridge, &validated, "abc");
        let Workload::Deployment(deployment) = &children.workload else {
            panic!("expected a Deployment")
        };
        let owner = &deployment.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "SeshnSegmentBridge");
        assert_eq!(owner.uid, "0000-uid");
        assert_eq!(owner.controller, Some(true));
        let tmpl = deployment.spec.as_ref().unwrap().template.clone();
        assert_eq!(
            tmpl.metadata.unwrap().annotations.unwrap()[CHECKSUM_ANNOTATION],
            "abc"
        );
        let pod = pod_spec(&children.workload);
        let psc = pod.security_context.clone().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let sc = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.capabilities.unwrap().drop.unwrap(),
            vec!["ALL".to_string()]
        );
        assert_eq!(
            env_of(&pod, "FORWARDER_LISTEN").as_deref(),
            Some("0.0.0.0:8080")
        );
        assert_eq!(env_of(&pod, "BRIDGE_ID").as_deref(), Some("0000-uid"));
        assert_eq!(env_of(&pod, "DELIVERY_MODE").as_deref(), Some("spooled"));
        assert_eq!(env_of(&pod, "MAPPING_PROFILE").as_deref(), Some("seed"));
        assert_eq!(env_of(&pod, "SPOOL_DIR").as_deref(), Some(SPOOL_DIR));
        assert_eq!(
            env_of(&pod, "SEGMENT_ENDPOINT").as_deref(),
            Some("https://api.segment.io")
        );
        // Secret values never appear in the pod spec: only file paths and Secret names.
        assert!(
            pod.containers[0]
                .env
                .as_ref()
                .unwrap()
                .iter()
                .all(|e| e.value_from.is_none()
                    && !e.name.ends_with("_KEY")
                    && e.name != "SESHN_WEBHOOK_SECRET")
        );
        let vols = pod.volumes.unwrap();
        let wk = vols.iter().find(|v| v.name == "segment-write-key").unwrap();
        assert_eq!(
            wk.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("acme-segment")
        );
        assert!(
            vols.iter()
                .any(|v| v.name == "spool" && v.empty_dir.is_some())
        );
        assert_eq!(children.service.spec.unwrap().ports.unwrap()[0].port, 80);
        assert!(children.ingress.is_none());
    }

    #[test]
    fn spool_bound_leaves_room_for_the_store_and_shutdown_fits_the_grace_period() {
        let bridge = bridge();
        let v = validate(&bridge, &Config::new("img:1")).unwrap();
        let pod = pod_spec(&build(&bridge, &v, "abc").workload);
        let bound: u64 = env_of(&pod, "SPOOL_MAX_BYTES").unwrap().parse().unwrap();
        let volume = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "spool")
            .and_then(|v| v.empty_dir.as_ref()?.size_limit.clone())
            .unwrap();
        let volume: u64 = volume.0.parse().unwrap();
        assert_eq!(volume, v.spool_bytes);
        // The redb file reaches about 1.3x the bound; it must stay clearly inside the volume.
        assert!(bound * 13 / 10 <= volume * 8 / 10, "{bound} of {volume}");
        assert!(bound >= volume / 2, "{bound} of {volume}: needlessly small");
        assert_eq!(env_of(&pod, "SHUTDOWN_DELAY").as_deref(), Some("5s"));
        assert_eq!(env_of(&pod, "SHUTDOWN_GRACE").as_deref(), Some("20s"));
        let grace = pod.termination_grace_period_seconds.unwrap();
        assert!(grace >= 5 + 20 + 5, "{grace}");

        let mut pvc = bridge.clone();
        pvc.spec.delivery.spool.storage = SpoolStorage::PersistentVolumeClaim;
        let v = validate(&pvc, &Config::new("img:1")).unwrap();
        let pod = pod_spec(&build(&pvc, &v, "abc").workload);
        let bound: u64 = env_of(&pod, "SPOOL_MAX_BYTES").unwrap().parse().unwrap();
        assert_eq!(bound, spool_max_bytes(v.spool_bytes));
        assert!(bound * 13 / 10 < v.spool_bytes);
    }

    #[test]
    fn synchronous_has_no_spool() {
        let mut b = bridge();
        b.spec.delivery.mode = DeliveryMode::Synchronous;
        b.spec.delivery.spool.storage = SpoolStorage::PersistentVolumeClaim;
        let v = validate(&b, &Config::new("img:1")).unwrap();
        let c = build(&b, &v, "abc");
        assert!(matches!(c.workload, Workload::Deployment(_)));
        let p = pod_spec(&c.workload);
        assert_eq!(env_of(&p, "SPOOL_DIR"), None);
        assert!(p.volumes.unwrap().iter().all(|v| v.name != "spool"));
    }

    #[test]
    fn pvc_spool_is_a_statefulset_and_ingress_routes_only_the_hook() {
        let mut b = bridge();
        b.spec.delivery.spool.storage = SpoolStorage::PersistentVolumeClaim;
        b.spec.delivery.spool.storage_class_name = Some("fast".into());
        b.spec.exposure.public_url = None;
        b.spec.exposure.ingress = Some(BridgeIngress {
            class_name: Some("nginx".into()),
            host: "hooks.example.com".into(),
            path: "/".into(),
            tls_secret_name: Some("tls".into()),
            annotations: BTreeMap::from([("a".to_owned(), "b".to_owned())]),
        });
        let v = validate(&b, &Config::new("img:1")).unwrap();
        let c = build(&b, &v, "abc");
        let Workload::StatefulSet(s) = &c.workload else {
            panic!("expected a StatefulSet")
        };
        let spec = s.spec.clone().unwrap();
        let claim = &spec.volume_claim_templates.unwrap()[0];
        assert_eq!(
            claim.spec.as_ref().unwrap().storage_class_name.as_deref(),
            Some("fast")
        );
        assert_eq!(spec.service_name.as_deref(), Some("acme-forwarder"));
        let ing = c.ingress.unwrap();
        assert_eq!(ing.metadata.annotations.unwrap()["a"], "b");
        let rule = &ing.spec.as_ref().unwrap().rules.as_ref().unwrap()[0];
        assert_eq!(
            rule.http.as_ref().unwrap().paths[0].path.as_deref(),
            Some("/hooks/0000-uid")
        );
        assert_eq!(
            ing.spec.unwrap().ingress_class_name.as_deref(),
            Some("nginx")
        );
    }

    #[test]
    fn checksum_depends_on_every_value() {
        let a = secrets_checksum(&[b"k1", b"s1"]);
        assert_eq!(a, secrets_checksum(&[b"k1", b"s1"]));
        assert_ne!(a, secrets_checksum(&[b"k2", b"s1"]));
        assert_ne!(a, secrets_checksum(&[b"k1", b"s2"]));
        // Length-prefixed: moving a byte between values changes the checksum.
        assert_ne!(a, secrets_checksum(&[b"k1s", b"1"]));
    }

    #[test]
    fn signing_secret_is_owned() {
        let bridge = bridge();
        let validated = validate(&bridge, &Config::new("img:1")).unwrap();
        let secret = signing_secret(&bridge, &validated, "deadbeef", None);
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some("acme-webhook-signing")
        );
        assert_eq!(secret.data.unwrap()["secret"].0, b"deadbeef");
        assert!(secret.metadata.owner_references.is_some());
        assert!(secret.metadata.annotations.is_none());
        let replacing = signing_secret(&bridge, &validated, "deadbeef", Some("wh_1"));
        assert_eq!(
            replacing.metadata.annotations.unwrap()[REPLACES_WEBHOOK_ANNOTATION],
            "wh_1"
        );
    }
}
