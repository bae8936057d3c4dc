#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The provisioning script's check for a usable `deb-src` entry (`apt-get source kubernetes`
//! needs bookworm's main component), run against apt configurations written here: a wrong
//! answer either skips the entry the build needs or adds a duplicate one.

use std::path::Path;
use std::process::Command;

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/k8s/build-apiserver.sh")
}

/// Whether the script finds a bookworm deb-src entry in an apt directory holding `files`.
fn has_deb_src(files: &[(&str, &str)]) -> bool {
    let dir = std::env::temp_dir().join(format!(
        "apt-fixture-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(dir.join("sources.list.d")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let status = Command::new("bash")
        .arg(script())
        .arg("--has-deb-src")
        .env("APT_ETC", &dir)
        .status()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    match status.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!("the check exited with {other:?}"),
    }
}

#[test]
fn one_line_entries_count_only_for_active_bookworm_main() {
    let list = |text| has_deb_src(&[("sources.list", text)]);
    assert!(list(
        "deb http://deb.debian.org/debian bookworm main\ndeb-src http://deb.debian.org/debian bookworm main\n"
    ));
    assert!(list(
        "deb-src [signed-by=/usr/share/keyrings/k.gpg] http://deb.debian.org/debian bookworm contrib main\n"
    ));
    assert!(has_deb_src(&[(
        "sources.list.d/extra.list",
        "deb-src http://deb.debian.org/debian bookworm main # sources\n"
    )]));
    // Commented out, binary only, another suite, another component.
    assert!(!list(
        "# deb-src http://deb.debian.org/debian bookworm main\n"
    ));
    assert!(!list("deb http://deb.debian.org/debian bookworm main\n"));
    assert!(!list(
        "deb-src http://deb.debian.org/debian bookworm-updates main\n"
    ));
    assert!(!list("deb-src http://deb.debian.org/debian trixie main\n"));
    assert!(!list(
        "deb-src http://deb.debian.org/debian bookworm contrib\n"
    ));
    assert!(!has_deb_src(&[]));
}

#[test]
fn deb822_stanzas_count_only_when_enabled_for_bookworm_main() {
    let sources = |text| has_deb_src(&[("sources.list.d/debian.sources", text)]);
    assert!(sources(
        "Types: deb deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
    ));
    // The second stanza is the one that counts.
    assert!(sources(
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n\nTypes: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main contrib\n"
    ));
    assert!(!sources(
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n"
    ));
    assert!(!sources(
        "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n"
    ));
    assert!(!sources(
        "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm-updates\nComponents: main\n"
    ));
    assert!(!sources(
        "# Types: deb-src\nTypes: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n"
    ));
}
