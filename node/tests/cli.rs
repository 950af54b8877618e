//! The `brume` command line itself, as a shell sees it: `--version`, `key gen`, and completion
//! scripts that name every subcommand. No node runs here.

use std::process::Command;

/// Every subcommand `brume --help` lists.
const SUBCOMMANDS: [&str; 18] = [
    "place",
    "bench",
    "trace",
    "testnet",
    "node",
    "status",
    "peers",
    "map",
    "deploy",
    "ps",
    "logs",
    "stop",
    "migrate",
    "drain",
    "gc",
    "key",
    "completions",
    "help",
];

fn brume(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_brume"))
        .args(args)
        .output()
        .expect("the brume binary runs");
    assert!(
        out.status.success(),
        "brume {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn version_names_the_package_version() {
    let v = brume(&["--version"]);
    assert!(
        v.starts_with(&format!("brume {}", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
}

#[test]
fn key_gen_prints_a_new_network_key_each_time() {
    let a = brume(&["key", "gen"]);
    let lines: Vec<&str> = a.lines().collect();
    assert_eq!(lines.len(), 3, "{a}");
    assert_eq!(&lines[..2], ["/key/swarm/psk/1.0.0/", "/base16/"], "{a}");
    assert!(
        lines[2].len() == 64 && lines[2].bytes().all(|b| b.is_ascii_hexdigit()),
        "{a}"
    );
    assert_ne!(brume(&["key", "gen"]), a, "every key is new");
}

#[test]
fn help_lists_exactly_the_known_subcommands() {
    // So that the completion tests below cannot miss a subcommand added later.
    let help = brume(&["--help"]);
    let listed: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .and_then(|rest| rest.split("Options:").next())
        .expect("a Commands section")
        .lines()
        .filter_map(|l| l.strip_prefix("  ").filter(|r| !r.starts_with(' ')))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(listed, SUBCOMMANDS, "{help}");
}

#[test]
fn bash_completions_name_every_subcommand() {
    let script = brume(&["completions", "bash"]);
    assert!(script.contains("complete -F _brume"), "{script}");
    for sub in SUBCOMMANDS {
        assert!(
            script.contains(&format!("brume,{sub})")),
            "the bash script does not complete `brume {sub}`"
        );
    }
    // Options of a subcommand are completed too.
    assert!(script.contains("--max-downtime"), "no migrate options");
}

#[test]
fn zsh_and_fish_completions_name_every_subcommand() {
    for shell in ["zsh", "fish"] {
        let script = brume(&["completions", shell]);
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "{shell}: no `{sub}`");
        }
    }
}

#[test]
fn an_unknown_shell_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_brume"))
        .args(["completions", "cmd.exe"])
        .output()
        .expect("the brume binary runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bash"),
        "the error lists the shells"
    );
}
