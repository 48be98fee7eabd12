//! The hub's TOML configuration loader (src/hub/config.rs) over arbitrary text.
//!
//! Asserts: loading never panics, whatever the text; a loaded configuration can be validated,
//! and one that validates has the documented minimums and gives codec limits and timeouts
//! without panicking; validation never panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tej_hub::hub::config::HubConfig;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let Ok(config) = HubConfig::from_toml(text) else {
        return;
    };
    // Validating TLS settings reads the files they name: a fuzzer must not read the disk.
    if config.tls_cert.is_some() || config.tls_key.is_some() || config.tls_client_ca.is_some() {
        return;
    }
    if config.validate().is_ok() {
        assert!(config.workers >= 1);
        assert!(config.max_frame_bytes >= 18 && config.cut_through_bytes >= 18);
        assert!(config.max_pending_bytes >= 1);
        assert_eq!(config.limits().max_frame_bytes, config.max_frame_bytes);
        let _ = (config.idle_timeout(), config.stall_timeout());
        let _ = (config.slow_consumer_timeout(), config.min_rate());
    }
});
