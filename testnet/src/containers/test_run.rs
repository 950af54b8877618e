//! How the suite names the testnets it makes, so that scripts/sweep-test-leftovers.sh finds
//! what a killed run left: the testnet `t<run>-<pid>` (its state under `/run/brume-testnet/nets/`)
//! and the label `brume.test=<run>` on its containers, `<run>` being `BRUME_TEST_RUN`
//! (scripts/test.sh sets it).

/// A testnet name unique to this test process.
pub fn net_name() -> String {
    let run: String = std::env::var("BRUME_TEST_RUN")
        .unwrap_or_default()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect();
    format!("t{run}-{}", std::process::id())
}

/// The label for this run's containers.
pub fn label() -> String {
    format!(
        "brume.test={}",
        std::env::var("BRUME_TEST_RUN").unwrap_or_else(|_| "manual".into())
    )
}
