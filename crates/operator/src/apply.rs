//! Apply stage: server-side apply of the children with one field manager, skipping children
//! whose last applied form (recorded as a hash annotation) already matches, so a resync of an
//! unchanged bridge writes nothing.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::build::{Children, Workload};
use crate::config::FIELD_MANAGER;
use crate::error::ApplyError;

/// Annotation holding the hash of the form last applied by the operator.
pub const APPLIED_HASH_ANNOTATION: &str = "integrations.seshn.net/applied-hash";

/// Hash of a child's desired form.
pub fn hash_of<K: Serialize>(obj: &K) -> String {
    let bytes = serde_json::to_vec(obj).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..16])
}

/// The hand-editable parts of a pod template we care about: the images and our checksum
/// annotation (other annotations, such as `kubectl rollout restart`'s, are not ours).
fn template_key(
    t: &k8s_openapi::api::core::v1::PodTemplateSpec,
) -> (Vec<Option<String>>, Option<String>) {
    let images = t
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.image.clone()).collect())
        .unwrap_or_default();
    let checksum = t
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(crate::build::CHECKSUM_ANNOTATION).cloned());
    (images, checksum)
}

/// Whether a Deployment still has the desired replicas, images and template annotations.
pub fn same_deployment(desired: &Deployment, current: &Deployment) -> bool {
    match (&desired.spec, &current.spec) {
        (Some(d), Some(c)) => {
            d.replicas == c.replicas && template_key(&d.template) == template_key(&c.template)
        }
        _ => false,
    }
}

/// Whether a StatefulSet still has the desired replicas, images and template annotations.
pub fn same_statefulset(desired: &StatefulSet, current: &StatefulSet) -> bool {
    match (&desired.spec, &current.spec) {
        (Some(d), Some(c)) => {
            d.replicas == c.replicas && template_key(&d.template) == template_key(&c.template)
        }
        _ => false,
    }
}

fn owned_by<K: Resource>(obj: &K, uid: &str) -> bool {
    obj.owner_references().iter().any(|o| o.uid == uid)
}

/// Applies `obj` unless the cached copy carries the same applied hash. Returns whether a
/// write happened.
async fn apply_one<K>(
    client: &Client,
    mut obj: K,
    same: impl Fn(&K, &K) -> bool,
) -> Result<(bool, Option<K>), ApplyError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + k8s_openapi::Resource
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + 'static,
{
    let name = obj.name_any();
    let ns = obj.namespace().unwrap_or_default();
    let hash = hash_of(&obj);
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    let err = |source| ApplyError {
        kind: <K as k8s_openapi::Resource>::KIND,
        name: name.clone(),
        source,
    };
    // A read is cheap; a write wakes every watcher of the object. Skip it when the object
    // still carries the hash of exactly this desired form and the fields people edit by hand
    // (replicas, image, the checksum) were not changed behind our back.
    let current = api.get_opt(&name).await.map_err(err)?;
    if let Some(current) = current
        && current.annotations().get(APPLIED_HASH_ANNOTATION) == Some(&hash)
        && same(&obj, &current)
    {
        return Ok((false, Some(current)));
    }
    obj.annotations_mut()
        .insert(APPLIED_HASH_ANNOTATION.into(), hash);
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await
        .map_err(err)?;
    Ok((true, Some(applied)))
}

async fn delete_if_owned<K>(
    client: &Client,
    ns: &str,
    name: &str,
    uid: &str,
) -> Result<bool, ApplyError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + k8s_openapi::Resource
        + Clone
        + Debug
        + DeserializeOwned
        + 'static,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let err = |source| ApplyError {
        kind: <K as k8s_openapi::Resource>::KIND,
        name: name.to_owned(),
        source,
    };
    let Some(current) = api.get_opt(name).await.map_err(err)? else {
        return Ok(false);
    };
    // Never delete what someone else created under the same name.
    if !owned_by(&current, uid) {
        return Ok(false);
    }
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(source) => Err(err(source)),
    }
}

/// What the apply stage saw of the forwarder workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ForwarderObserved {
    /// At least one pod is available.
    pub available: bool,
    /// Ready pods.
    pub ready_replicas: i32,
}

fn observe_deployment(d: Option<&Deployment>) -> ForwarderObserved {
    let st = d.and_then(|d| d.status.clone()).unwrap_or_default();
    ForwarderObserved {
        available: st.available_replicas.unwrap_or(0) > 0,
        ready_replicas: st.ready_replicas.unwrap_or(0),
    }
}

fn observe_statefulset(s: Option<&StatefulSet>) -> ForwarderObserved {
    let ready = s
        .and_then(|s| s.status.as_ref())
        .and_then(|st| st.ready_replicas)
        .unwrap_or(0);
    ForwarderObserved {
        available: ready > 0,
        ready_replicas: ready,
    }
}

/// Applies every child and, with `check_stale`, removes the ones this spec no longer wants (the
/// other workload kind, a dropped Ingress). Returns the number of writes and the forwarder's
/// state.
pub async fn apply_children(
    client: &Client,
    children: Children,
    uid: &str,
    check_stale: bool,
) -> Result<(usize, ForwarderObserved), ApplyError> {
    let ns = children.service.namespace().unwrap_or_default();
    let name = children.service.name_any();
    let mut writes = 0;
    let observed = match children.workload {
        Workload::Deployment(d) => {
            let (w, current) = apply_one(client, *d, same_deployment).await?;
            writes += usize::from(w);
            if check_stale {
                writes +=
                    usize::from(delete_if_owned::<StatefulSet>(client, &ns, &name, uid).await?);
            }
            observe_deployment(current.as_ref())
        }
        Workload::StatefulSet(s) => {
            let (w, current) = apply_one(client, *s, same_statefulset).await?;
            writes += usize::from(w);
            if check_stale {
                writes +=
                    usize::from(delete_if_owned::<Deployment>(client, &ns, &name, uid).await?);
            }
            observe_statefulset(current.as_ref())
        }
    };
    writes += usize::from(apply_one(client, children.service, |_, _| true).await?.0);
    match children.ingress {
        Some(i) => writes += usize::from(apply_one(client, i, |_, _| true).await?.0),
        None if check_stale => {
            writes += usize::from(delete_if_owned::<Ingress>(client, &ns, &name, uid).await?);
        }
        None => {}
    }
    Ok((writes, observed))
}

/// Applies the signing Secret (only called when it is missing or must change).
pub async fn apply_secret(client: &Client, secret: Secret) -> Result<(), ApplyError> {
    apply_one::<Secret>(client, secret, |_, _| true)
        .await
        .map(|_| ())
}
