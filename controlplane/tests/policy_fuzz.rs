//! Property tests: whatever the policy text, loading answers Ok or errors, never panics, and
//! every error names a file and (for text problems) a position inside it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions may panic: that is how a test fails"
)]

use std::path::{Path, PathBuf};

use controlplane::policy::{Mode, Policy, PolicySources, SourceFile};
use proptest::prelude::*;
use proptest::strategy::ValueTree as _;

fn example(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../configs/policy")
        .join(rel);
    std::fs::read_to_string(path).unwrap()
}

fn sources(gw: String, acme: String, globex: String) -> PolicySources {
    PolicySources {
        gateways: Some(SourceFile {
            path: "gateways.toml".into(),
            text: gw,
        }),
        tenants: Some(vec![
            SourceFile {
                path: PathBuf::from("tenants/acme.toml"),
                text: acme,
            },
            SourceFile {
                path: PathBuf::from("tenants/globex.toml"),
                text: globex,
            },
        ]),
        read_errors: Vec::new(),
    }
}

fn check(src: &PolicySources) {
    for mode in [Mode::Strict, Mode::Lenient] {
        match Policy::from_sources(src, mode) {
            Ok(p) => {
                let _ = p.endpoint_count();
            }
            Err(e) => {
                assert!(!e.errors.is_empty());
                for d in &e.errors {
                    let line = d.to_string();
                    assert!(!line.is_empty());
                    if let Some(pos) = d.position {
                        assert!(pos.line >= 1 && pos.column >= 1);
                        let file = if d.file == Path::new("gateways.toml") {
                            &src.gateways.as_ref().unwrap().text
                        } else {
                            &src.tenants
                                .as_ref()
                                .unwrap()
                                .iter()
                                .find(|f| f.path == d.file)
                                .unwrap()
                                .text
                        };
                        assert!(pos.line <= file.lines().count().max(1) + 1, "{line}");
                    }
                }
            }
        }
    }
}

/// A mutation of a text: at a (relative) position, delete some chars and insert others.
#[derive(Debug, Clone)]
struct Mutation {
    at: f64,
    delete: usize,
    insert: String,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let insert = prop_oneof![
        "[ -~\n]{0,12}",
        prop::sample::select(vec![
            "\"",
            "[",
            "]",
            "{",
            "}",
            "=",
            "\n",
            "[[endpoint]]\n",
            "[[allow]]\n",
            "[[gateway]]\n",
            ",",
            "#",
            "'",
            "\"\"\"",
            "0x",
            "-",
            "/",
            "::",
            "é",
            "\u{0}",
            "ports = [\"1-0\"]\n",
            "name = 1\n",
        ])
        .prop_map(str::to_owned),
    ];
    (0.0..1.0f64, 0usize..8, insert).prop_map(|(at, delete, insert)| Mutation {
        at,
        delete,
        insert,
    })
}

fn apply(text: &str, muts: &[Mutation]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for m in muts {
        let at = ((chars.len() as f64) * m.at) as usize;
        let end = (at + m.delete).min(chars.len());
        chars.splice(at.min(chars.len())..end, m.insert.chars());
    }
    chars.into_iter().collect()
}

/// Replaces the value of the `nth` `key = value` line of a text.
fn replace_value(text: &str, nth: usize, value: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let assignments: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains(" = ") && !l.trim_start().starts_with('#'))
        .map(|(i, _)| i)
        .collect();
    if assignments.is_empty() {
        return text.to_owned();
    }
    let i = assignments[nth % assignments.len()];
    let mut out: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    if let Some((k, _)) = lines[i].split_once(" = ") {
        out[i] = format!("{k} = {value}");
    }
    out.join("\n")
}

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,20}".prop_map(|s| format!("{s:?}")),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        prop::collection::vec("[0-9a-f:./-]{0,18}", 0..4).prop_map(|v| format!("{v:?}")),
        Just("{ }".to_owned()),
        Just("[{ a = 1 }]".to_owned()),
        Just("1979-05-27T07:32:00Z".to_owned()),
        Just("inf".to_owned()),
        Just("[\"65536\", \"0-1\", \"5-\"]".to_owned()),
        Just("\"::/0\"".to_owned()),
        Just("\"0.0.0.0/0\"".to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mutated_texts_never_panic(
        file in 0usize..3,
        muts in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut texts = [example("gateways.toml"), example("tenants/acme.toml"), example("tenants/globex.toml")];
        texts[file] = apply(&texts[file], &muts);
        let [gw, acme, globex] = texts;
        check(&sources(gw, acme, globex));
    }

    #[test]
    fn random_field_values_never_panic(
        file in 0usize..3,
        edits in prop::collection::vec((0usize..64, toml_value()), 1..4),
    ) {
        let mut texts = [example("gateways.toml"), example("tenants/acme.toml"), example("tenants/globex.toml")];
        for (nth, value) in &edits {
            texts[file] = replace_value(&texts[file], *nth, value);
        }
        let [gw, acme, globex] = texts;
        check(&sources(gw, acme, globex));
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        check(&sources(text.clone(), text, example("tenants/globex.toml")));
    }
}

#[test]
fn random_bytes_on_disk_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tenants")).unwrap();
    let mut runner = proptest::test_runner::TestRunner::default();
    let strategy = prop::collection::vec(any::<u8>(), 0..200);
    for _ in 0..64 {
        let bytes = strategy.new_tree(&mut runner).unwrap().current();
        std::fs::write(dir.path().join("gateways.toml"), &bytes).unwrap();
        std::fs::write(dir.path().join("tenants/acme.toml"), &bytes).unwrap();
        assert!(Policy::load(dir.path()).is_err());
    }
}
