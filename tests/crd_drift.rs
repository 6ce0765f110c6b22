//! The committed `crds/*.yaml` must equal what the code generates (`osprov crds --dir crds`).
use osprov::api;

#[test]
fn committed_crds_match_generated() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in [root.join("crds"), root.join("charts/osprov/crds")] {
        check_dir(&dir);
    }
}

fn check_dir(dir: &std::path::Path) {
    for crd in api::crds() {
        let path = dir.join(api::crd_file_name(&crd));
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{} is missing ({e}); run `cargo run -- crds --dir crds` and `--dir charts/osprov/crds`",
                path.display()
            )
        });
        let generated = osprov::api::crd_yaml(&crd).expect("CRD serialises");
        assert_eq!(
            committed,
            generated,
            "{} drifted from the code; run `cargo run -- crds --dir crds` and `--dir charts/osprov/crds`",
            path.display()
        );
    }
}

#[test]
fn crds_carry_names_categories_and_validation() {
    let crds = api::crds();
    let short: Vec<_> = crds
        .iter()
        .map(|c| {
            c.spec
                .names
                .short_names
                .clone()
                .unwrap_or_default()
                .join(",")
        })
        .collect();
    assert_eq!(short, ["osd", "mhost", "ospr"]);
    for crd in &crds {
        assert_eq!(crd.spec.group, api::GROUP);
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["osprov".to_string()][..])
        );
        let v = &crd.spec.versions[0];
        assert!(v
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some());
        assert!(v
            .additional_printer_columns
            .as_ref()
            .is_some_and(|c| c.len() >= 4));
    }
    let request = serde_json::to_value(&crds[2]).expect("json");
    let host = &request["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["host"];
    assert_eq!(
        host["x-kubernetes-validations"][0]["rule"],
        "self == oldSelf"
    );
    let dispatcher = serde_json::to_value(&crds[0]).expect("json");
    let provisioner = &dispatcher["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
        ["spec"]["properties"]["provisioner"];
    assert_eq!(provisioner["default"], "osp");
}
