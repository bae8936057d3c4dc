//! `SeshnSegmentBridge` custom resource types (`integrations.seshn.net/v1alpha1`).
//!
//! No I/O lives here: the operator, the chart tests and the docs all depend on these types,
//! and the CRD YAML in `crds/` is generated from them. Every field carries a doc comment
//! because it becomes the `kubectl explain` text.
//!
//! Validation is expressed with what a 1.20 apiserver enforces (OpenAPI enums, patterns,
//! `required`, `oneOf` of `required`, min/max, defaults); anything the schema cannot say is
//! checked by the operator's `validate` stage and surfaced as a condition.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements as K8sResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the custom resource.
pub const GROUP: &str = "integrations.seshn.net";
/// API version of the custom resource.
pub const VERSION: &str = "v1alpha1";
/// Kind of the custom resource.
pub const KIND: &str = "SeshnSegmentBridge";
/// Default Seshn API base URL.
pub const DEFAULT_SESHN_API_URL: &str = "https://api.seshn.net";
/// Default Segment endpoint.
pub const DEFAULT_SEGMENT_ENDPOINT: &str = "https://api.segment.io";

/// Condition type: summary of the other conditions.
pub const CONDITION_READY: &str = "Ready";
/// Condition type: the forwarder workload reports enough available replicas.
pub const CONDITION_FORWARDER_AVAILABLE: &str = "ForwarderAvailable";
/// Condition type: the Seshn webhook matches the spec.
pub const CONDITION_WEBHOOK_SYNCED: &str = "WebhookSynced";

/// A bridge from one Seshn account's booking webhooks to one Segment source.
///
/// The operator runs a forwarder (Deployment, or StatefulSet for a PVC-backed spool) with a
/// Service (and optionally an Ingress), registers the forwarder's public URL as a webhook at
/// Seshn, keeps both in sync and removes the webhook when the bridge is deleted.
// Several printer columns repeat `type_ = "string"`, which the lint mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "integrations.seshn.net",
    version = "v1alpha1",
    kind = "SeshnSegmentBridge",
    plural = "seshnsegmentbridges",
    singular = "seshnsegmentbridge",
    namespaced,
    shortname = "ssb",
    category = "seshn",
    status = "SeshnSegmentBridgeStatus",
    derive = "PartialEq",
    doc = "A bridge from one Seshn account's booking webhooks to one Segment source: the operator runs a forwarder for it and registers the forwarder's URL as a Seshn webhook.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the forwarder runs and the webhook is registered"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Reason of the Ready condition"
    ),
    printcolumn(
        name = "Webhook",
        type_ = "string",
        json_path = ".status.webhook.id",
        description = "Id of the webhook registered at Seshn"
    ),
    printcolumn(
        name = "URL",
        type_ = "string",
        json_path = ".status.webhook.url",
        description = "URL Seshn delivers events to",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SeshnSegmentBridgeSpec {
    /// Stop calling Seshn and stop changing the children: everything stays as it is until this
    /// is set back to false. Deletion still works (the finalizer still removes the webhook).
    #[serde(default)]
    pub suspend: bool,

    /// What happens to the Seshn webhook when the bridge is deleted: `Delete` removes it at
    /// Seshn, `Orphan` leaves it registered (it keeps delivering to a URL that no longer answers
    /// until someone removes it).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// The Seshn account whose events are bridged.
    pub seshn: SeshnSpec,

    /// The Segment source (or Segment-compatible collector) the events are sent to.
    pub segment: SegmentSpec,

    /// How Seshn events are turned into Segment calls.
    #[serde(default)]
    pub mapping: MappingSpec,

    /// When the forwarder acknowledges an event to Seshn.
    #[serde(default)]
    pub delivery: DeliverySpec,

    /// The forwarder workload.
    #[serde(default)]
    pub forwarder: ForwarderSpec,

    /// How Seshn reaches the forwarder. Exactly one of `publicUrl` and `ingress` is set.
    pub exposure: ExposureSpec,
}

/// What happens to the Seshn webhook when the bridge is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the webhook at Seshn, then let the children be garbage collected.
    #[default]
    Delete,
    /// Leave the webhook registered at Seshn.
    Orphan,
}

/// A key inside a Secret in the bridge's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the bridge's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// The Seshn account whose events are bridged.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeshnSpec {
    /// Base URL of the Seshn API (without `/v1`). Defaults to the operator's `--seshn-api-url`
    /// (itself `https://api.seshn.net` unless changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s/]+(/[^\s]*)?$"))]
    pub api_url: Option<String>,

    /// The Secret key holding the Seshn API key (`sk_live_...` or `sk_test_...`). The operator
    /// reads it to manage the webhook; it never reaches the forwarder pods.
    pub api_key_secret_ref: SecretKeyRef,

    /// Event names to subscribe to, e.g. `booking.created`. Empty means every event. Names are
    /// free strings because Seshn's catalogue is not closed.
    #[serde(default)]
    #[schemars(
        extend("x-kubernetes-list-type" = "set"),
        length(max = 100),
        inner(length(min = 1, max = 100), regex(pattern = r"^[A-Za-z0-9_.:*-]+$"))
    )]
    pub events: Vec<String>,
}

/// The Segment source the events are sent to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SegmentSpec {
    /// Base URL of the Segment HTTP Tracking API, e.g. `https://api.segment.io` (default) or
    /// `https://events.eu1.segmentapis.com` for the EU; any Segment-compatible collector works.
    #[serde(default = "default_segment_endpoint")]
    #[schemars(regex(pattern = r"^https?://[^\s/]+(/[^\s]*)?$"))]
    pub endpoint: String,

    /// The Secret key holding the Segment source's write key. Mounted into the forwarder pods
    /// as a file; pods roll when it changes.
    pub write_key_secret_ref: SecretKeyRef,
}

fn default_segment_endpoint() -> String {
    DEFAULT_SEGMENT_ENDPOINT.to_owned()
}

/// How Seshn events are turned into Segment calls.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MappingSpec {
    /// `seed` reproduces Seshn's documented Segment integration exactly (`Seshn booking.created`);
    /// `spec` follows Segment's naming spec (`Booking Created`, snake_case properties).
    #[serde(default)]
    pub profile: MappingProfile,

    /// Send an `identify` call with the contact's name, email and phone when the payload has a
    /// contact.
    #[serde(default = "default_true")]
    pub identify: bool,

    /// Extra payload values copied into the track call's properties.
    #[serde(default)]
    #[schemars(length(max = 50))]
    pub extra_properties: Vec<ExtraProperty>,
}

impl Default for MappingSpec {
    fn default() -> Self {
        Self {
            profile: MappingProfile::default(),
            identify: true,
            extra_properties: Vec::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// The event naming profile.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MappingProfile {
    /// Identical to the seed handler: event `Seshn <event>`, the seed's property names.
    #[default]
    Seed,
    /// Segment naming spec: Title Case Object-Action names, snake_case properties.
    Spec,
}

impl MappingProfile {
    /// The value the forwarder's `MAPPING_PROFILE` expects.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Seed => "seed",
            Self::Spec => "spec",
        }
    }
}

/// A payload value copied into the track call's properties.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtraProperty {
    /// Property name in the Segment call.
    #[schemars(
        length(min = 1, max = 100),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")
    )]
    pub name: String,
    /// JSON pointer (RFC 6901) into the Seshn payload, e.g. `/location/id`.
    #[schemars(length(min = 1, max = 500), regex(pattern = r"^(/([^~/]|~[01])*)+$"))]
    pub pointer: String,
}

/// When the forwarder acknowledges an event to Seshn.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySpec {
    /// `Spooled`: acknowledge once the event is durably on the pod's disk spool (survives
    /// Segment outages). `Synchronous`: acknowledge only after Segment accepted the event;
    /// stateless, relies on Seshn's retries (about 30 minutes).
    #[serde(default)]
    pub mode: DeliveryMode,

    /// Where the spool lives (only used in `Spooled` mode).
    #[serde(default)]
    pub spool: SpoolSpec,
}

/// Delivery mode of the forwarder.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeliveryMode {
    /// Acknowledge after the event is durable on disk.
    #[default]
    Spooled,
    /// Acknowledge after Segment accepted the event.
    Synchronous,
}

impl DeliveryMode {
    /// The value the forwarder's `DELIVERY_MODE` expects.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spooled => "spooled",
            Self::Synchronous => "synchronous",
        }
    }
}

/// Storage of the forwarder's spool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpoolSpec {
    /// `EmptyDir` survives container restarts but not pod deletion; `PersistentVolumeClaim`
    /// runs the forwarder as a StatefulSet with one claim per replica, surviving pod deletion.
    #[serde(default)]
    pub storage: SpoolStorage,

    /// Size of the spool volume; the forwarder's spool limit is 60% of it (its store file grows
    /// past the limit during a long outage). Default 1Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,

    /// Storage class of the claims (`PersistentVolumeClaim` only); the cluster default when
    /// unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

/// Spool volume kind.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SpoolStorage {
    /// A pod-local emptyDir volume.
    #[default]
    EmptyDir,
    /// A PersistentVolumeClaim per replica (StatefulSet).
    PersistentVolumeClaim,
}

/// The forwarder workload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForwarderSpec {
    /// Number of forwarder pods. 0 stops the forwarder (the bridge is then not Ready).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 50))]
    pub replicas: i32,

    /// Forwarder container image; the operator's `--forwarder-image` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 500))]
    pub image: Option<String>,

    /// Compute resources of the forwarder container; small defaults when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for ForwarderSpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            image: None,
            resources: None,
        }
    }
}

fn default_replicas() -> i32 {
    1
}

/// Compute resources (the subset of the core type that applies to the forwarder container).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRequirements {
    /// Maximum resources, e.g. `{cpu: "1", memory: 128Mi}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Quantity>,
    /// Guaranteed resources, e.g. `{cpu: 50m, memory: 32Mi}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, Quantity>,
}

impl From<&ResourceRequirements> for K8sResourceRequirements {
    fn from(r: &ResourceRequirements) -> Self {
        Self {
            claims: None,
            limits: (!r.limits.is_empty()).then(|| r.limits.clone()),
            requests: (!r.requests.is_empty()).then(|| r.requests.clone()),
        }
    }
}

/// How Seshn reaches the forwarder. Exactly one of `publicUrl` and `ingress` is set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("oneOf" = [{"required": ["publicUrl"]}, {"required": ["ingress"]}]))]
pub struct ExposureSpec {
    /// HTTPS base URL under which something you run (a gateway, an existing Ingress) routes
    /// to the forwarder Service. The webhook is registered as `<publicUrl>/hooks/<bridge uid>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 2000),
        regex(pattern = r"^https://[^\s/?#]+(/[^\s?#]*)?$")
    )]
    pub public_url: Option<String>,

    /// An Ingress the operator creates for the forwarder. The webhook is registered as
    /// `https://<host><path>/hooks/<bridge uid>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
}

/// The Ingress created for the forwarder.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Ingress class, e.g. `nginx`; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub class_name: Option<String>,

    /// Public host name, e.g. `hooks.example.com`.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub host: String,

    /// Path prefix under the host, e.g. `/acme`. Default `/`.
    #[serde(default = "default_path")]
    #[schemars(length(min = 1, max = 1000), regex(pattern = r"^/[A-Za-z0-9._~/-]*$"))]
    pub path: String,

    /// Secret holding the TLS certificate for the host (e.g. issued by cert-manager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub tls_secret_name: Option<String>,

    /// Annotations copied onto the Ingress (e.g. for cert-manager or the ingress controller).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn default_path() -> String {
    "/".to_owned()
}

/// Observed state, written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeshnSegmentBridgeStatus {
    /// The generation of the spec the last completed pass acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `ForwarderAvailable` and `WebhookSynced`, with CamelCase reasons.
    #[serde(default)]
    #[schemars(
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"])
    )]
    pub conditions: Vec<Condition>,

    /// The webhook registered at Seshn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookStatus>,

    /// The forwarder workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarder: Option<ForwarderStatus>,
}

/// The webhook registered at Seshn.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookStatus {
    /// Seshn's id of the webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,

    /// The URL registered at Seshn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// The events registered at Seshn (empty = every event).
    #[serde(default)]
    pub events: Vec<String>,

    /// The Secret key holding the webhook's signing secret (owned by the bridge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,

    /// Set just before a create call and cleared once its answer is recorded. When present
    /// without an id, an earlier create may have succeeded without its answer being stored:
    /// the operator looks the webhook up by the bridge uid in its URL instead of creating
    /// another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_since: Option<Time>,
}

/// The forwarder workload.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForwarderStatus {
    /// Pods of the forwarder that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
}

impl SeshnSegmentBridge {
    /// The condition of the given type, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn a_minimal_spec_gets_the_documented_defaults() {
        let spec: SeshnSegmentBridgeSpec = serde_json::from_value(serde_json::json!({
            "seshn": {"apiKeySecretRef": {"name": "s", "key": "k"}},
            "segment": {"writeKeySecretRef": {"name": "w", "key": "k"}},
            "exposure": {"publicUrl": "https://h.example"}
        }))
        .unwrap();
        assert!(!spec.suspend);
        assert_eq!(spec.deletion_policy, DeletionPolicy::Delete);
        assert_eq!(spec.segment.endpoint, DEFAULT_SEGMENT_ENDPOINT);
        assert_eq!(spec.mapping.profile, MappingProfile::Seed);
        assert!(spec.mapping.identify);
        assert_eq!(spec.delivery.mode, DeliveryMode::Spooled);
        assert_eq!(spec.delivery.spool.storage, SpoolStorage::EmptyDir);
        assert_eq!(spec.forwarder.replicas, 1);
        assert!(spec.seshn.events.is_empty());
        assert_eq!(spec.seshn.api_url, None);
    }

    #[test]
    fn the_schema_carries_what_a_1_20_apiserver_enforces() {
        let crd = SeshnSegmentBridge::crd();
        assert_eq!(crd.spec.names.short_names, Some(vec!["ssb".to_string()]));
        let version = &crd.spec.versions[0];
        let columns: Vec<_> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Ready", "Reason", "Webhook", "URL", "Age"]);
        let schema = serde_json::to_value(&version.schema).unwrap();
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(
            spec["properties"]["exposure"]["oneOf"],
            serde_json::json!([{"required": ["publicUrl"]}, {"required": ["ingress"]}])
        );
        assert_eq!(
            spec["properties"]["deletionPolicy"]["enum"],
            serde_json::json!(["Delete", "Orphan"])
        );
        let status = &schema["openAPIV3Schema"]["properties"]["status"];
        assert_eq!(
            status["properties"]["conditions"]["x-kubernetes-list-type"],
            "map"
        );
        // No CEL: a 1.20 apiserver would silently drop it.
        assert!(!schema.to_string().contains("x-kubernetes-validations"));
    }
}
