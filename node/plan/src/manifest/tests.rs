use super::*;

const GOOD: &str = r#"
[service]
name = "fedavg"
root = "aggregator"

[[task]]
name = "aggregator"
build = "aggregator"
cpu_millis = 500
memory_mb = 256
stateful = true
checkpoint = "app"
ports = [7000]

[[task]]
name = "trainer"
image = "images/trainer.tar"
cpu_millis = 1000
memory_mb = 512
labels = ["gpu"]
replicas = 4
env = { ROUNDS = "10" }

[[task]]
name = "logger"
command = ["./logger", "--quiet"]
cpu_millis = 50
memory_mb = 16
stateful = true

[[call]]
from = "aggregator"
to = "trainer"
latency_ms = 40
traffic_mbps = 5.5

[[call]]
from = "trainer"
to = "logger"
latency_ms = 100
"#;

fn parse(text: &str) -> Result<Manifest, InputError> {
    Manifest::parse("service.toml", text, Path::new("/srv/app"))
}

/// Replaces the first occurrence of `from` in the good manifest and returns the refusal.
fn refusal(from: &str, to: &str) -> InputError {
    assert!(
        GOOD.contains(from),
        "test edits text that is not there: {from}"
    );
    match parse(&GOOD.replacen(from, to, 1)) {
        Ok(_) => panic!("accepted a manifest with {from:?} replaced by {to:?}"),
        Err(e) => e,
    }
}

/// Line of the first occurrence of `needle` in `text`, 1-based.
fn line_of(text: &str, needle: &str) -> usize {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} not in text"));
    text[..at].matches('\n').count() + 1
}

fn assert_refusal(e: &InputError, line: usize, field: &str, says: &str) {
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("service.toml:{line}: {field}: ")),
        "wanted service.toml:{line}: {field}: ..., got:\n{shown}"
    );
    assert!(shown.contains(says), "wanted {says:?} in:\n{shown}");
    assert_eq!(e.line, Some(line));
    assert_eq!(e.field.as_deref(), Some(field));
}

#[test]
fn a_good_manifest_parses_with_defaults_and_resolved_paths() {
    let m = parse(GOOD).expect("the good manifest parses");
    assert_eq!(m.service.name, "fedavg");
    assert_eq!(m.service.root, "aggregator");
    let agg = m.task("aggregator").expect("aggregator");
    assert_eq!(agg.artifact, Artifact::Build("/srv/app/aggregator".into()));
    assert_eq!((agg.replicas, agg.stateful), (1, true));
    assert_eq!(agg.checkpoint, Checkpoint::App);
    assert_eq!(agg.ports, vec![7000]);
    let trainer = m.task("trainer").expect("trainer");
    assert_eq!(
        trainer.artifact,
        Artifact::Image("/srv/app/images/trainer.tar".into())
    );
    assert_eq!(trainer.replicas, 4);
    assert_eq!(trainer.checkpoint, Checkpoint::None);
    assert!(trainer.labels.contains("gpu"));
    assert_eq!(trainer.env.get("ROUNDS").map(String::as_str), Some("10"));
    let logger = m.task("logger").expect("logger");
    assert_eq!(
        logger.artifact,
        Artifact::Command(vec!["./logger".into(), "--quiet".into()])
    );
    assert_eq!(
        logger.checkpoint,
        Checkpoint::Criu,
        "stateful defaults to criu"
    );
    assert_eq!(m.calls[1].traffic_mbps, 0.0);
    assert_eq!(m.calls[0].latency_ms, 40.0);
}

#[test]
fn the_call_graph_is_rooted_at_the_root_task() {
    let m = parse(GOOD).expect("parses");
    let g = m.call_graph();
    g.validate().expect("valid graph");
    assert_eq!(g.task(g.root()).name, "aggregator");
    assert_eq!(g.task_count(), 3);
    assert_eq!(g.call_count(), 2);
    let trainer = g.find("trainer").expect("trainer in graph");
    assert_eq!(g.task(trainer).replicas, 4);
    assert_eq!(g.task(trainer).demand.cpu_millis, 1000);
    let (a, b, c) = g.calls().next().expect("a call");
    assert_eq!((a, b), (g.root(), trainer));
    assert_eq!(c.latency_bound_ms, 40.0);
}

#[test]
fn the_root_need_not_be_declared_first() {
    let text = r#"
        service = { name = "s", root = "b" }
        task = [
            { name = "a", command = ["a"], cpu_millis = 1, memory_mb = 1 },
            { name = "b", command = ["b"], cpu_millis = 1, memory_mb = 1 },
        ]
        call = [{ from = "b", to = "a", latency_ms = 5 }]
    "#;
    let g = parse(text).expect("parses").call_graph();
    assert_eq!(g.task(g.root()).name, "b");
    g.validate().expect("valid graph");
}

#[test]
fn unknown_task_in_a_call_names_the_line_and_the_tasks() {
    let e = refusal("to = \"trainer\"", "to = \"traner\"");
    let line = line_of(GOOD, "to = \"trainer\"");
    assert_refusal(
        &e,
        line,
        "call.to",
        "no task named \"traner\" (tasks: aggregator, trainer, logger)",
    );
}

#[test]
fn duplicate_task_name() {
    let e = refusal("name = \"logger\"", "name = \"trainer\"");
    assert_refusal(
        &e,
        line_of(GOOD, "name = \"logger\""),
        "task.name",
        "declared twice",
    );
}

#[test]
fn missing_root() {
    let e = refusal("root = \"aggregator\"", "root = \"boss\"");
    assert_refusal(&e, 4, "service.root", "no task named \"boss\"");
}

#[test]
fn zero_replicas() {
    let e = refusal("replicas = 4", "replicas = 0");
    assert_refusal(
        &e,
        line_of(GOOD, "replicas = 4"),
        "task.replicas",
        "0 replicas",
    );
}

#[test]
fn a_replicated_root() {
    let e = refusal("checkpoint = \"app\"", "checkpoint = \"app\"\nreplicas = 2");
    assert_refusal(
        &e,
        line_of(GOOD, "checkpoint") + 1,
        "task.replicas",
        "runs once",
    );
}

#[test]
fn nothing_to_run() {
    let e = refusal("command = [\"./logger\", \"--quiet\"]\n", "");
    assert_refusal(
        &e,
        line_of(GOOD, "name = \"logger\""),
        "task",
        "one of image",
    );
}

#[test]
fn two_things_to_run() {
    let e = refusal("name = \"logger\"", "name = \"logger\"\nbuild = \"logger\"");
    let line = line_of(GOOD, "command = [") + 1;
    assert_refusal(&e, line, "task.command", "both build and command");
}

#[test]
fn bad_checkpoint_mode() {
    let e = refusal("checkpoint = \"app\"", "checkpoint = \"crui\"");
    assert_refusal(
        &e,
        line_of(GOOD, "checkpoint"),
        "task.checkpoint",
        "\"criu\"",
    );
}

#[test]
fn checkpoint_on_a_stateless_task() {
    let e = refusal("replicas = 4", "replicas = 4\ncheckpoint = \"criu\"");
    assert_refusal(
        &e,
        line_of(GOOD, "replicas = 4") + 1,
        "task.checkpoint",
        "stateful = true",
    );
}

#[test]
fn negative_latency_bound() {
    let e = refusal("latency_ms = 40", "latency_ms = -1");
    assert_refusal(
        &e,
        line_of(GOOD, "latency_ms = 40"),
        "call.latency_ms",
        ">= 0",
    );
}

#[test]
fn unreachable_task() {
    let text = GOOD.replacen("from = \"trainer\"", "from = \"logger\"", 1);
    let text = text.replacen("to = \"logger\"", "to = \"trainer\"", 1);
    let e = parse(&text).expect_err("logger is unreachable");
    assert_refusal(
        &e,
        line_of(GOOD, "name = \"logger\""),
        "task.name",
        "not reachable",
    );
}

#[test]
fn bad_names_and_empty_commands() {
    let e = refusal("name = \"logger\"", "name = \"log ger\"");
    assert_refusal(
        &e,
        line_of(GOOD, "name = \"logger\""),
        "task.name",
        "task name \"log ger\" is not allowed: use 1-63 lowercase letters",
    );
    let e = refusal("command = [\"./logger\", \"--quiet\"]", "command = []");
    assert_refusal(&e, line_of(GOOD, "command = ["), "task.command", "empty");
}

#[test]
fn names_the_deploy_wire_refuses_are_refused_with_the_name_and_the_rule() {
    let line = line_of(GOOD, "name = \"logger\"");
    for bad in ["Logger", "log.ger", "-logger", &"l".repeat(64)] {
        let e = refusal("name = \"logger\"", &format!("name = \"{bad}\""));
        assert_refusal(
            &e,
            line,
            "task.name",
            &format!("task name \"{bad}\" is not allowed"),
        );
        assert!(e.to_string().contains(crate::naming::RULE), "{e}");
    }
    let e = refusal("name = \"fedavg\"", "name = \"FedAvg\"");
    assert_refusal(
        &e,
        line_of(GOOD, "name = \"fedavg\""),
        "service.name",
        "service name \"FedAvg\"",
    );
}

#[test]
fn the_manifest_takes_exactly_the_names_the_naming_rule_takes() {
    for name in [
        "log",
        "log-2",
        "l_2",
        "Log",
        "l.g",
        "",
        "-x",
        "a b",
        "x".repeat(64).as_str(),
    ] {
        let text = GOOD
            .replacen("name = \"logger\"", &format!("name = {name:?}"), 1)
            .replace("to = \"logger\"", &format!("to = {name:?}"));
        let manifest = parse(&text).is_ok();
        let wire = crate::naming::is_valid(name);
        assert_eq!(manifest, wire, "{name:?}: manifest {manifest}, rule {wire}");
    }
}

#[test]
fn task_names_that_share_a_call_variable_are_refused() {
    let text = GOOD
        .replacen("name = \"logger\"", "name = \"train-er\"", 1)
        .replace("to = \"logger\"", "to = \"train-er\"")
        .replacen("name = \"trainer\"", "name = \"train_er\"", 1)
        .replace("\"trainer\"", "\"train_er\"");
    let e = parse(&text).expect_err("train-er and train_er share BRUME_CALL_TRAIN_ER");
    assert!(e.to_string().contains("BRUME_CALL_TRAIN_ER"), "{e}");
}

#[test]
fn syntax_and_type_errors_carry_file_and_line() {
    let e = refusal("cpu_millis = 50\n", "cpu_millis = \"50\"\n");
    let line = line_of(GOOD, "cpu_millis = 50\n");
    assert!(
        e.to_string()
            .starts_with(&format!("service.toml:{line}: invalid type")),
        "{e}"
    );
    let e = refusal("memory_mb = 16", "memory_mb = 16\nmemroy = 3");
    assert!(e.to_string().contains("unknown field `memroy`"), "{e}");
    assert_eq!(e.line, Some(line_of(GOOD, "memory_mb = 16") + 1));
    let e = refusal("env = { ROUNDS = \"10\" }", "env = { ROUNDS = 10 }");
    assert_eq!(e.line, Some(line_of(GOOD, "env =")));
    let e = refusal("[[call]]", "[[call]");
    assert_eq!(e.line, Some(line_of(GOOD, "[[call]]")));
    assert!(e.to_string().starts_with("service.toml:"), "{e}");
}

#[test]
fn an_empty_service_says_what_to_add() {
    let e = parse("[service]\nname = \"x\"\nroot = \"a\"\n").expect_err("no tasks");
    assert!(e.to_string().contains("add a [[task]]"), "{e}");
}

#[test]
fn a_task_user_is_kept_and_a_bad_one_refused() {
    let m = parse(&GOOD.replacen("ports = [7000]", "ports = [7000]\nuser = \"root\"", 1)).unwrap();
    assert_eq!(m.tasks[0].user.as_deref(), Some("root"));
    assert_eq!(
        m.tasks[1].user, None,
        "unset: the engine's unprivileged default"
    );
    let e = refusal("ports = [7000]", "ports = [7000]\nuser = \"a b\"");
    assert_refusal(
        &e,
        line_of(GOOD, "ports = [7000]") + 1,
        "task.user",
        "uid[:gid]",
    );
}

#[test]
fn periodic_checkpoints_of_an_app_task() {
    let m = parse(&GOOD.replacen(
        "checkpoint = \"app\"",
        "checkpoint = \"app\"\ncheckpoint_every_s = 5",
        1,
    ))
    .expect("an app task may ask for periodic checkpoints");
    let agg = m.tasks.iter().find(|t| t.name == "aggregator").unwrap();
    assert_eq!(agg.checkpoint_every_s, Some(5));
    let plain = parse(GOOD).unwrap();
    assert!(plain.tasks.iter().all(|t| t.checkpoint_every_s.is_none()));
}

#[test]
fn periodic_checkpoints_need_a_checkpoint_mode_and_a_second() {
    let m = parse(&GOOD.replacen(
        "checkpoint = \"app\"",
        "checkpoint = \"criu\"\ncheckpoint_every_s = 5",
        1,
    ))
    .expect("a criu task may ask for periodic checkpoints");
    let agg = m.tasks.iter().find(|t| t.name == "aggregator").unwrap();
    assert_eq!(
        (agg.checkpoint, agg.checkpoint_every_s),
        (Checkpoint::Criu, Some(5))
    );
    let e = refusal(
        "checkpoint = \"app\"",
        "checkpoint = \"none\"\ncheckpoint_every_s = 5",
    );
    assert_refusal(
        &e,
        line_of(GOOD, "checkpoint") + 1,
        "task.checkpoint_every_s",
        "checkpoint = \"none\"",
    );
    let e = refusal(
        "checkpoint = \"app\"",
        "checkpoint = \"app\"\ncheckpoint_every_s = 0",
    );
    assert_refusal(
        &e,
        line_of(GOOD, "checkpoint") + 1,
        "task.checkpoint_every_s",
        "at least 1",
    );
}

#[test]
fn a_criu_task_may_set_a_downtime_budget() {
    let m = parse(&GOOD.replacen(
        "checkpoint = \"app\"",
        "checkpoint = \"criu\"\ndowntime_budget_ms = 250",
        1,
    ))
    .expect("a criu task may set a downtime budget");
    let agg = m.tasks.iter().find(|t| t.name == "aggregator").unwrap();
    assert_eq!(agg.downtime_budget_ms, Some(250));
    let plain = parse(GOOD).unwrap();
    assert!(plain.tasks.iter().all(|t| t.downtime_budget_ms.is_none()));
}

#[test]
fn a_downtime_budget_needs_criu_mode_and_a_millisecond() {
    let e = refusal(
        "checkpoint = \"app\"",
        "checkpoint = \"app\"\ndowntime_budget_ms = 250",
    );
    assert_refusal(
        &e,
        line_of(GOOD, "checkpoint") + 1,
        "task.downtime_budget_ms",
        "only a live move",
    );
    let e = refusal(
        "checkpoint = \"app\"",
        "checkpoint = \"criu\"\ndowntime_budget_ms = 0",
    );
    assert_refusal(
        &e,
        line_of(GOOD, "checkpoint") + 1,
        "task.downtime_budget_ms",
        "at least 1",
    );
}

#[test]
fn a_max_runtime_is_read_and_zero_refused() {
    let m = parse(&GOOD.replacen(
        "checkpoint = \"app\"",
        "checkpoint = \"app\"\nmax_runtime_s = 3600",
        1,
    ))
    .expect("any task may set a maximum runtime");
    let agg = m.tasks.iter().find(|t| t.name == "aggregator").unwrap();
    assert_eq!(agg.max_runtime_s, Some(3600));
    assert!(parse(GOOD)
        .unwrap()
        .tasks
        .iter()
        .all(|t| t.max_runtime_s.is_none()));
    let e = refusal(
        "checkpoint = \"app\"",
        "checkpoint = \"app\"\nmax_runtime_s = 0",
    );
    assert_refusal(
        &e,
        line_of(GOOD, "checkpoint") + 1,
        "task.max_runtime_s",
        "at least 1",
    );
}
