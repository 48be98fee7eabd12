//! The build profiles in the workspace's Cargo.toml, as users and the benchmarks rely on them.

/// The build profiles in Cargo.toml: release ships without debug info (it made the binary
/// 90 MB); `profiling`, for perf work, is release with line tables.
#[test]
fn release_has_no_debug_info_and_profiling_has() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .expect("read Cargo.toml");
    let manifest: toml::Table = toml::from_str(&manifest).expect("Cargo.toml parses");
    let profile = |name: &str| manifest.get("profile").and_then(|p| p.get(name)).cloned();
    let debug = |name: &str| profile(name).and_then(|p| p.get("debug").cloned());
    let no_debug = |value: Option<toml::Value>| match value {
        None => true,
        Some(toml::Value::Integer(level)) => level == 0,
        Some(toml::Value::Boolean(on)) => !on,
        Some(toml::Value::String(level)) => level == "none",
        Some(_) => false,
    };
    assert!(
        no_debug(debug("release")),
        "release: {:?}",
        profile("release")
    );
    let profiling = profile("profiling").expect("a [profile.profiling]");
    assert_eq!(
        profiling.get("inherits").and_then(|v| v.as_str()),
        Some("release")
    );
    assert!(!no_debug(debug("profiling")), "profiling: {profiling:?}");
}
