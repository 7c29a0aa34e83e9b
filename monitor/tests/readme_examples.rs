//! Every `monitor.toml` example in the README loads, and the full one is the defaults: an
//! example that names a key the daemon refuses, or a value other than the one it uses when the
//! key is left out, is a broken promise to whoever copies it.

use egresswatch_monitor::config::Config;

fn readme() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    std::fs::read_to_string(path).expect("README.md")
}

/// The README's TOML blocks, each with the line it starts on.
fn toml_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match &mut current {
            None if line.trim_start().starts_with("```toml") => {
                current = Some((n + 1, String::new()))
            }
            Some(_) if line.trim_start().starts_with("```") => blocks.extend(current.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn every_readme_config_example_loads_and_the_full_one_is_the_defaults() {
    let text = readme();
    let blocks = toml_blocks(&text);
    assert!(blocks.len() >= 2, "{} TOML blocks", blocks.len());
    let mut full = 0;
    for (line, body) in &blocks {
        let loaded = Config::from_toml(body, &format!("README.md:{line}"))
            .unwrap_or_else(|e| panic!("the example at README.md:{line} does not load: {e}"));
        if body.contains("\n[rules]") {
            full += 1;
            // The example names the outputs file as the quick start writes it; every other
            // value is what the daemon uses when the key is left out.
            let mut expected = Config {
                outputs_file: loaded.outputs_file.clone(),
                ..Config::default()
            };
            expected.path = None;
            assert_eq!(
                format!("{loaded:#?}"),
                format!("{expected:#?}"),
                "the example at README.md:{line} differs from the defaults"
            );
        }
    }
    assert_eq!(full, 1, "one full monitor.toml example");
}
