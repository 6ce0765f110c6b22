//! What the record-loss tests do to an operation's record, for every installer-driven adapter:
//! find it through the request's status (which must vouch for it), make it really gone (strip
//! the finalizer, delete), replace it with a planted Secret of the same name, and wait for the
//! request to end with `OperationRecordLost`.
#![allow(dead_code)]
use crate::harness::{eventually, wait_phase};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use osprov::api::conditions::reason;
use osprov::api::{OSProvisioningRequest, Phase};

/// The name of request `req`'s record, once the request's status vouches for it.
pub async fn record_name(requests: &Api<OSProvisioningRequest>, req: &str) -> String {
    eventually(30, &format!("{req}'s anchored record"), || async {
        let st = requests.get(req).await.ok()?.status?;
        st.operation?.record.map(|r| r.name)
    })
    .await
}

/// Make the record really gone: strip its finalizer, then delete it.
pub async fn lose_record(secrets: &Api<Secret>, name: &str) {
    let strip = serde_json::json!({"metadata": {"finalizers": null}});
    secrets
        .patch(name, &PatchParams::default(), &Patch::Merge(&strip))
        .await
        .expect("strip the finalizer");
    secrets
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete the record");
    eventually(30, "the record gone", || async {
        secrets
            .get_opt(name)
            .await
            .ok()
            .and_then(|s| s.is_none().then_some(()))
    })
    .await;
}

/// Replace the record by another Secret of the same name that claims nothing was sent yet and
/// carries a callback secret the planter knows.
pub async fn replace_record(secrets: &Api<Secret>, name: &str) {
    let old = secrets.get(name).await.expect("record");
    lose_record(secrets, name).await;
    let mut data = old.data.clone().unwrap_or_default();
    data.remove("resetRequestedAt");
    data.remove("resetAt");
    data.remove("copiedAt");
    data.insert(
        "secret".into(),
        k8s_openapi::ByteString(b"planted-secret".to_vec()),
    );
    let planted = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            labels: old.metadata.labels.clone(),
            ..Default::default()
        },
        type_: old.type_.clone(),
        data: Some(data),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &planted)
        .await
        .expect("plant a record");
}

/// Wait until `req` failed with `OperationRecordLost`; returns its message.
pub async fn wait_record_lost(requests: &Api<OSProvisioningRequest>, req: &str) -> String {
    let r = wait_phase(requests, req, Phase::Failed, 90).await;
    let st = r.status.unwrap_or_default();
    assert_eq!(
        st.reason.as_deref(),
        Some(reason::OPERATION_RECORD_LOST),
        "{req}: {st:?}"
    );
    st.message.unwrap_or_default()
}
