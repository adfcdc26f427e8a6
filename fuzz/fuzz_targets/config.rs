//! The configuration loader (`config::from_toml_str`: the key-by-key TOML reading, defaults,
//! then `Config::validate`) on arbitrary text. Asserts: no panic (every problem is a reported
//! issue, with its key); an error always names at least one issue; a configuration that
//! loads and holds nothing redacted prints (`to_toml_redacted`, what `--print-config` shows)
//! to a text that loads back to the same configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgmemo::config::{REDACTED, load::from_toml_str};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match from_toml_str(text, "fuzz.toml") {
        Ok(config) => {
            let printed = config
                .to_toml_redacted()
                .expect("a loaded configuration prints");
            if !printed.contains(REDACTED) {
                let again = from_toml_str(&printed, "printed.toml");
                assert_eq!(
                    again.as_ref().ok(),
                    Some(&config),
                    "printed config reads back differently:\n{printed}\n{again:?}"
                );
            }
        }
        Err(errors) => assert!(!errors.issues.is_empty(), "an error without an issue"),
    }
});
