//! The test tiers. `cargo test` on a fresh clone runs the hermetic tier: unit tests, the embedded
//! API, the simulator, the binary — nothing but Rust. `OSPROV_TESTS=full` (set by
//! `scripts/test.sh`, which also installs and starts what it needs) adds every test that talks
//! to real third-party software: kube-apiserver on etcd, kubectl, helm, sushy-tools, vcsim, the
//! official Python client. Those tests are compiled only in the full tier (`cfg(osprov_full_tests)`),
//! so a missing tool can never be mistaken for a pass: in the full tier they run and fail
//! loudly, in the hermetic tier they do not exist.
fn main() {
    println!("cargo:rustc-check-cfg=cfg(osprov_full_tests)");
    println!("cargo:rerun-if-env-changed=OSPROV_TESTS");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("OSPROV_TESTS").is_ok_and(|t| t == "full") {
        println!("cargo:rustc-cfg=osprov_full_tests");
    }
}
