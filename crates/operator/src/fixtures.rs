//! Test fixtures.

use bridge_api::{
    ExposureSpec, SecretKeyRef, SegmentSpec, SeshnSegmentBridge, SeshnSegmentBridgeSpec, SeshnSpec,
};

/// A valid bridge `acme` in `tenant-a` with uid `0000-uid`.
pub fn bridge() -> SeshnSegmentBridge {
    let spec: SeshnSegmentBridgeSpec = SeshnSegmentBridgeSpec {
        suspend: false,
        deletion_policy: bridge_api::DeletionPolicy::Delete,
        seshn: SeshnSpec {
            api_url: None,
            api_key_secret_ref: SecretKeyRef {
                name: "acme-seshn".into(),
                key: "apiKey".into(),
            },
            events: vec![],
        },
        segment: SegmentSpec {
            endpoint: bridge_api::DEFAULT_SEGMENT_ENDPOINT.into(),
            write_key_secret_ref: SecretKeyRef {
                name: "acme-segment".into(),
                key: "writeKey".into(),
            },
        },
        mapping: bridge_api::MappingSpec::default(),
        delivery: bridge_api::DeliverySpec::default(),
        forwarder: bridge_api::ForwarderSpec::default(),
        exposure: ExposureSpec {
            public_url: Some("https://hooks.example.com/acme".into()),
            ingress: None,
        },
    };
    let mut b = SeshnSegmentBridge::new("acme", spec);
    b.metadata.namespace = Some("tenant-a".into());
    b.metadata.uid = Some("0000-uid".into());
    b.metadata.generation = Some(1);
    b
}
