//! The README and `docs/` held to the code: every map, drop counter and
//! configuration example they name exists, so they cannot drift.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use dataplane_common::Counter;

use crate::config::Config;

/// Upper-case names in backticks that are no map of ours: kernel and CNI
/// names, environment variables, columns.
const NOT_MAPS: &[&str] = &[
    "BPF_F_ADJ_ROOM_DECAP_L3_IPV6",
    "BPF_LINK_UPDATE",
    "BPF_NOEXIST",
    "BPF_PROG_TEST_RUN",
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_IFNAME",
    "CNI_NETNS",
    "DATAPLANE_BIN",
    "DATAPLANE_LOG",
    "DATAPLANE_PREVIOUS_BIN",
    "DATAPLANE_SOCKET",
    // Cilium's drop reason for fragments it has no record of.
    "DROP_FRAG_NOT_FOUND",
    "HANDLED_MAPS",
    "MAC_CHANGES",
    "MAP_LAYOUT_VERSION",
    "NODE_NAME",
    "NTF_EXT_MANAGED",
    "XDP_PASS",
];

fn documents() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut paths = vec![root.join("README.md")];
    let mut directories = vec![root.join("docs")];
    while let Some(directory) = directories.pop() {
        for entry in std::fs::read_dir(&directory).expect("docs/ exists") {
            let path = entry.expect("a readable directory").path();
            if path.is_dir() {
                directories.push(path);
            } else if path.extension().is_some_and(|extension| extension == "md") {
                paths.push(path);
            }
        }
    }
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("a readable document");
            (path, text)
        })
        .collect()
}

/// Every `word` in backticks whose characters all pass `keep`.
fn quoted(text: &str, keep: impl Fn(char) -> bool) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|word| !word.is_empty() && word.chars().all(&keep))
        .map(ToOwned::to_owned)
        .collect()
}

#[test]
fn the_documents_name_only_maps_the_programs_pin() {
    let maps: BTreeSet<String> = crate::loader::pinned_map_names();
    for (path, text) in documents() {
        let unknown: Vec<String> = quoted(&text, |c| {
            c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'
        })
        .into_iter()
        .filter(|word| word.len() > 2 && word.contains(|c: char| c.is_ascii_uppercase()))
        .filter(|word| !maps.contains(word) && !NOT_MAPS.contains(&word.as_str()))
        .collect();
        assert!(
            unknown.is_empty(),
            "{} names maps the programs do not have: {unknown:?}",
            path.display()
        );
    }
}

#[test]
fn the_documents_name_only_drop_reasons_that_are_counted() {
    let counters: BTreeSet<&str> = Counter::ALL.iter().map(|counter| counter.name()).collect();
    for (path, text) in documents() {
        let unknown: Vec<String> = quoted(&text, |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
        })
        .into_iter()
        .filter(|word| word.starts_with("drop_") && !counters.contains(word.as_str()))
        .collect();
        assert!(
            unknown.is_empty(),
            "{} names drop counters that do not exist: {unknown:?}",
            path.display()
        );
    }
}

#[test]
fn every_configuration_example_in_the_documents_parses() {
    let mut examples = 0;
    for (path, text) in documents() {
        for block in text.split("```toml\n").skip(1) {
            let example = block.split("```").next().unwrap_or_default();
            if let Err(error) = Config::parse(example, &path) {
                panic!("an example in {} does not parse: {error}", path.display());
            }
            examples += 1;
        }
    }
    assert!(examples >= 2, "the README's and the reference's examples");
}

/// Every Rust file of the workspace under `directory`.
fn rust_files(directory: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(directory).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() && !path.ends_with("target") && !path.ends_with(".git") {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
}

/// The layout rule: a file read at a glance, or one that says why not.
#[test]
fn files_above_400_lines_say_why_on_their_first_line() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(files.len() > 100, "found only {} files", files.len());
    let long: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let text = std::fs::read_to_string(path).ok()?;
            (text.lines().count() > 400 && !text.starts_with("// Above 400 lines: "))
                .then(|| path.display().to_string())
        })
        .collect();
    assert!(
        long.is_empty(),
        "above 400 lines, no reason given: {long:?}"
    );
}
