//! The checkpoint trace: one row per real CRIU dump, in the order taken, with the features a
//! node read before it and the measured durations (written by `brume trace checkpoints`, read
//! by `brume bench predictor`; docs/predictor.md gives the columns).
//!
//! Why a parser of our own: the format is a plain comma-separated table of numbers and short
//! names (no quoting), and this keeps the crate free of a CSV dependency. Columns are found by
//! header name, so extra columns are allowed; lines that are empty or start with `#` are
//! comments (a hand-written fixture says so there).
//!
//! The machine-load columns (`load1`, `procs_running`, `cpus`, `cpu_busy`, `cpu_pressure`) were
//! appended later: a trace without them, or a row with one empty, reads as "unknown" (`None` in
//! [`MachineLoad`]), never as zero load.

use super::features::Features;
use super::load::MachineLoad;

/// One dump of the trace.
#[derive(Clone, Debug, PartialEq)]
pub struct Dump {
    /// 0-based index in the trace.
    pub dump: u64,
    /// The workload instance.
    pub task: String,
    pub workload: String,
    pub mem_mib: f64,
    pub features: Features,
    /// CRIU's stats-dump times (ms) and page counts, when the image could be read.
    pub stats: Option<CriuStats>,
    /// The label: wall time of the `criu dump` call, seconds.
    pub dump_s: f64,
}

/// CRIU's `stats-dump` fields (what Podman's `--print-stats` shows).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CriuStats {
    pub freezing_ms: f64,
    pub frozen_ms: f64,
    pub memdump_ms: f64,
    pub memwrite_ms: f64,
    pub pages_scanned: f64,
    pub pages_written: f64,
}

/// Why a trace was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TraceError {
    #[error("the trace has no header line")]
    NoHeader,
    #[error("the trace's header has no column {0:?}")]
    MissingColumn(&'static str),
    #[error("line {line}: {count} fields, the header has {expected}")]
    FieldCount {
        line: usize,
        count: usize,
        expected: usize,
    },
    #[error("line {line}: column {column}: {value:?} is not a valid value")]
    Value {
        line: usize,
        column: &'static str,
        value: String,
    },
}

const REQUIRED: [&str; 15] = [
    "dump",
    "task",
    "workload",
    "mem_mib",
    "rss_bytes",
    "dirty_pps",
    "written_pages",
    "processes",
    "threads",
    "open_files",
    "sockets",
    "mappings",
    "age_s",
    "since_last_s",
    "tracked",
];
const STATS: [&str; 6] = [
    "freezing_ms",
    "frozen_ms",
    "memdump_ms",
    "memwrite_ms",
    "pages_scanned",
    "pages_written",
];
/// The machine's load before the dump: optional columns, each field optional too.
const LOAD: [&str; 5] = ["load1", "procs_running", "cpus", "cpu_busy", "cpu_pressure"];

struct Row<'a> {
    line: usize,
    fields: Vec<&'a str>,
    cols: &'a [(&'static str, usize)],
}

impl Row<'_> {
    fn raw(&self, name: &'static str) -> &str {
        let i = self
            .cols
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, i)| *i)
            .unwrap_or(usize::MAX);
        self.fields.get(i).map(|s| s.trim()).unwrap_or("")
    }

    fn bad(&self, column: &'static str) -> TraceError {
        TraceError::Value {
            line: self.line,
            column,
            value: self.raw(column).to_string(),
        }
    }

    fn opt_f64(&self, name: &'static str) -> Result<Option<f64>, TraceError> {
        let s = self.raw(name);
        if s.is_empty() {
            return Ok(None);
        }
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(Some(v)),
            _ => Err(self.bad(name)),
        }
    }

    fn f64(&self, name: &'static str) -> Result<f64, TraceError> {
        self.opt_f64(name)?.ok_or_else(|| self.bad(name))
    }

    fn opt_int<T: std::str::FromStr>(&self, name: &'static str) -> Result<Option<T>, TraceError> {
        let s = self.raw(name);
        if s.is_empty() {
            return Ok(None);
        }
        s.parse().map(Some).map_err(|_| self.bad(name))
    }

    fn int<T: std::str::FromStr>(&self, name: &'static str) -> Result<T, TraceError> {
        self.raw(name).parse().map_err(|_| self.bad(name))
    }
}

/// Parses a whole trace.
pub fn parse(text: &str) -> Result<Vec<Dump>, TraceError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let (_, header) = lines.next().ok_or(TraceError::NoHeader)?;
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    let mut cols = Vec::new();
    for name in REQUIRED
        .iter()
        .chain(&STATS)
        .chain(&["dump_ms"])
        .chain(&LOAD)
    {
        match names.iter().position(|n| n == name) {
            Some(i) => cols.push((*name, i)),
            None if STATS.contains(name) || LOAD.contains(name) => {}
            None => return Err(TraceError::MissingColumn(name)),
        }
    }
    let mut out = Vec::new();
    for (line, text) in lines {
        let fields: Vec<&str> = text.split(',').collect();
        if fields.len() != names.len() {
            return Err(TraceError::FieldCount {
                line,
                count: fields.len(),
                expected: names.len(),
            });
        }
        let r = Row {
            line,
            fields,
            cols: &cols,
        };
        let tracked = match r.raw("tracked") {
            "1" | "true" => true,
            "0" | "false" => false,
            _ => return Err(r.bad("tracked")),
        };
        let features = Features {
            rss_bytes: r.int("rss_bytes")?,
            dirty_pps: r.f64("dirty_pps")?,
            written_pages: r.int("written_pages")?,
            processes: r.int("processes")?,
            threads: r.int("threads")?,
            open_files: r.int("open_files")?,
            sockets: r.int("sockets")?,
            mappings: r.int("mappings")?,
            age_s: r.f64("age_s")?,
            since_last_s: r.opt_f64("since_last_s")?,
            tracked,
            load: MachineLoad {
                load1: r.opt_f64("load1")?,
                procs_running: r.opt_int("procs_running")?,
                cpus: r.opt_int("cpus")?,
                cpu_busy: r.opt_f64("cpu_busy")?,
                cpu_pressure: r.opt_f64("cpu_pressure")?,
            },
        };
        let stats = if STATS.iter().all(|s| !r.raw(s).is_empty()) {
            Some(CriuStats {
                freezing_ms: r.f64("freezing_ms")?,
                frozen_ms: r.f64("frozen_ms")?,
                memdump_ms: r.f64("memdump_ms")?,
                memwrite_ms: r.f64("memwrite_ms")?,
                pages_scanned: r.f64("pages_scanned")?,
                pages_written: r.f64("pages_written")?,
            })
        } else {
            None
        };
        out.push(Dump {
            dump: r.int("dump")?,
            task: r.raw("task").to_string(),
            workload: r.raw("workload").to_string(),
            mem_mib: r.f64("mem_mib")?,
            features,
            stats,
            dump_s: r.f64("dump_ms")? / 1e3,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "dump,task,workload,mem_mib,rss_bytes,dirty_pps,written_pages,processes,threads,open_files,sockets,mappings,age_s,since_last_s,tracked,freezing_ms,frozen_ms,memdump_ms,memwrite_ms,pages_scanned,pages_written,dump_ms";

    #[test]
    fn parses_rows_with_and_without_optional_fields() {
        let text = format!(
            "# fixture\n{HEADER}\n0,t0,dirtier,64,67108864,0,16384,1,1,4,0,30,1.5,,0,1,50,40,30,16384,16384,120\n\
             1,t0,dirtier,64,67108864,2500,5000,1,1,4,0,30,3.0,1.5,1,,,,,,,80.5\n"
        );
        let t = parse(&text).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].features.since_last_s, None);
        assert_eq!(t[0].features.since_checkpoint_s(), 1.5);
        assert!(t[0].stats.is_some() && t[1].stats.is_none());
        assert!((t[1].dump_s - 0.0805).abs() < 1e-12);
        assert!(t[1].features.tracked);
        assert_eq!(t[1].features.dirty_pps, 2500.0);
        // A trace from before the load columns: the load is unknown, not zero.
        assert_eq!(t[0].features.load, MachineLoad::default());
    }

    #[test]
    fn reads_the_appended_load_columns() {
        let text = format!(
            "{HEADER},load1,procs_running,cpus,cpu_busy,cpu_pressure\n\
             0,t0,dirtier,64,67108864,0,16384,1,1,4,0,30,1.5,,0,,,,,,,120,3.03,3,2,0.5,0.0344\n\
             1,t0,dirtier,64,67108864,0,16384,1,1,4,0,30,1.5,,0,,,,,,,120,1.5,,2,,\n"
        );
        let t = parse(&text).unwrap();
        assert_eq!(
            t[0].features.load,
            MachineLoad {
                load1: Some(3.03),
                procs_running: Some(3),
                cpus: Some(2),
                cpu_busy: Some(0.5),
                cpu_pressure: Some(0.0344),
            }
        );
        assert_eq!(t[1].features.load.load1, Some(1.5));
        assert_eq!(t[1].features.load.procs_running, None);
        assert_eq!(t[1].features.load.cpu_pressure, None);
        let bad = text.replace(",3.03,", ",busy,");
        assert!(matches!(
            parse(&bad),
            Err(TraceError::Value {
                column: "load1",
                ..
            })
        ));
    }

    #[test]
    fn refuses_bad_input_with_the_line() {
        assert_eq!(parse("# only\n"), Err(TraceError::NoHeader));
        assert_eq!(
            parse("dump,task\n"),
            Err(TraceError::MissingColumn("workload"))
        );
        let bad = format!("{HEADER}\n0,t0,d,64,x,0,1,1,1,4,0,30,1.5,,0,,,,,,,120\n");
        assert!(matches!(
            parse(&bad),
            Err(TraceError::Value {
                line: 2,
                column: "rss_bytes",
                ..
            })
        ));
        let short = format!("{HEADER}\n0,t0\n");
        assert!(matches!(
            parse(&short),
            Err(TraceError::FieldCount { line: 2, .. })
        ));
        let neg = format!("{HEADER}\n0,t0,d,64,1,0,1,1,1,4,0,30,1.5,,0,,,,,,,-3\n");
        assert!(matches!(
            parse(&neg),
            Err(TraceError::Value {
                column: "dump_ms",
                ..
            })
        ));
    }
}
