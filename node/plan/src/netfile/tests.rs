use super::*;

const GOOD: &str = r#"
initiator = "gw-0"

[[host]]
id = "gw-0"
cpu_millis = 4000
memory_mb = 4096
coord = [0.0, 0.0, 0.5]

[[host]]
id = "srv-0"
cpu_millis = 8000
memory_mb = 16384
free_cpu_millis = 6000
reliability = 0.999
watts_per_core = 12
cost_per_core_hour = 0.05
bandwidth_mbps = 1000
labels = ["gpu"]
coord = [3.0, 4.0, 1]

[[host]]
id = "cam-0"
cpu_millis = 1000
memory_mb = 512
labels = ["camera"]

[[link]]
a = "gw-0"
b = "srv-0"
rtt_ms = 2.5
bandwidth_mbps = 900

[[link]]
a = "cam-0"
b = "gw-0"
rtt_ms = 8
"#;

fn refusal(from: &str, to: &str) -> InputError {
    assert!(
        GOOD.contains(from),
        "test edits text that is not there: {from}"
    );
    match parse("net.toml", &GOOD.replacen(from, to, 1)) {
        Ok(_) => panic!("accepted a network with {from:?} replaced by {to:?}"),
        Err(e) => e,
    }
}

fn line_of(needle: &str) -> usize {
    let at = GOOD
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} not in text"));
    GOOD[..at].matches('\n').count() + 1
}

fn assert_refusal(e: &InputError, line: usize, field: &str, says: &str) {
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("net.toml:{line}: {field}: ")),
        "wanted net.toml:{line}: {field}: ..., got:\n{shown}"
    );
    assert!(shown.contains(says), "wanted {says:?} in:\n{shown}");
}

#[test]
fn a_good_network_parses_with_defaults() {
    let net = parse("net.toml", GOOD).expect("parses");
    assert_eq!(net.len(), 3);
    let gw = net.find("gw-0").expect("gw-0");
    let srv = net.find("srv-0").expect("srv-0");
    let cam = net.find("cam-0").expect("cam-0");
    assert_eq!(net.initiator(), gw);
    let g = net.host(gw);
    assert_eq!((g.free_cpu_millis, g.free_memory_mb), (4000, 4096));
    assert_eq!(g.reliability, DEFAULT_RELIABILITY);
    assert_eq!(g.watts_per_core, DEFAULT_WATTS_PER_CORE);
    assert_eq!(g.cost_per_core_hour, DEFAULT_COST_PER_CORE_HOUR);
    assert_eq!(g.bandwidth_mbps, DEFAULT_BANDWIDTH_MBPS);
    let s = net.host(srv);
    assert_eq!((s.free_cpu_millis, s.free_memory_mb), (6000, 16384));
    assert_eq!(s.reliability, 0.999);
    assert!(s.labels.contains("gpu"));
    assert_eq!(net.rtt(gw, srv), Some(2.5), "the measured link wins");
    assert_eq!(net.bandwidth(gw, srv), 900.0);
    assert_eq!(net.rtt(cam, gw), Some(8.0));
    assert_eq!(
        net.bandwidth(cam, gw),
        DEFAULT_BANDWIDTH_MBPS,
        "an unstated link bandwidth is the smaller uplink"
    );
    assert_eq!(net.rtt(cam, srv), None, "cam-0 has no coordinate");
    assert!(net.host(cam).coord.is_none());
}

#[test]
fn unknown_initiator() {
    let e = refusal("initiator = \"gw-0\"", "initiator = \"gw-9\"");
    assert_refusal(
        &e,
        2,
        "initiator",
        "no host named \"gw-9\" (hosts: gw-0, srv-0, cam-0)",
    );
}

#[test]
fn duplicate_host() {
    let e = refusal("id = \"cam-0\"", "id = \"srv-0\"");
    assert_refusal(&e, line_of("id = \"cam-0\""), "host.id", "declared twice");
}

#[test]
fn unknown_host_in_a_link() {
    let e = refusal("b = \"srv-0\"", "b = \"srv-1\"");
    assert_refusal(
        &e,
        line_of("b = \"srv-0\""),
        "link.b",
        "no host named \"srv-1\"",
    );
}

#[test]
fn self_and_duplicate_links() {
    let e = refusal("a = \"cam-0\"", "a = \"gw-0\"");
    assert_refusal(&e, line_of("b = \"gw-0\""), "link.b", "both ends");
    let e = refusal("a = \"cam-0\"\nb = \"gw-0\"", "a = \"srv-0\"\nb = \"gw-0\"");
    assert_refusal(&e, line_of("b = \"gw-0\""), "link.b", "declared twice");
}

#[test]
fn free_above_total() {
    let e = refusal("free_cpu_millis = 6000", "free_cpu_millis = 9000");
    assert_refusal(
        &e,
        line_of("free_cpu_millis"),
        "host.free_cpu_millis",
        "cpu_millis = 8000",
    );
}

#[test]
fn reliability_out_of_range() {
    let e = refusal("reliability = 0.999", "reliability = 1.5");
    assert_refusal(&e, line_of("reliability"), "host.reliability", "(0, 1]");
}

#[test]
fn negative_numbers() {
    let e = refusal("rtt_ms = 2.5", "rtt_ms = -2.5");
    assert_refusal(&e, line_of("rtt_ms = 2.5"), "link.rtt_ms", "-2.5");
    let e = refusal("watts_per_core = 12", "watts_per_core = -12");
    assert_refusal(&e, line_of("watts_per_core"), "host.watts_per_core", ">= 0");
    let e = refusal("coord = [3.0, 4.0, 1]", "coord = [3.0, 4.0, -1]");
    assert_refusal(&e, line_of("coord = [3.0"), "host.coord", "height >= 0");
}

#[test]
fn syntax_and_type_errors_carry_file_and_line() {
    let e = refusal("coord = [3.0, 4.0, 1]", "coord = [3.0, 4.0]");
    assert_eq!(e.line, Some(line_of("coord = [3.0")), "{e}");
    assert!(e.to_string().starts_with("net.toml:"), "{e}");
    let e = refusal("memory_mb = 512", "memory_mb = 512\nmem = 1");
    assert!(e.to_string().contains("unknown field `mem`"), "{e}");
    assert_eq!(e.line, Some(line_of("memory_mb = 512") + 1));
    let e = refusal("cpu_millis = 1000", "cpu_millis = -1000");
    assert_eq!(e.line, Some(line_of("cpu_millis = 1000")), "{e}");
}

#[test]
fn no_hosts() {
    let e = parse("net.toml", "initiator = \"a\"\n").expect_err("no hosts");
    assert!(
        e.to_string()
            .starts_with("net.toml: the network has no hosts"),
        "{e}"
    );
}
