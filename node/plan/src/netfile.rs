//! The network file, `net.toml`: hosts, measured links and the initiator, written by hand or
//! dumped from a neighbourhood map, so that placement can run without a live overlay.
//!
//! ```toml
//! initiator = "gw-0"
//!
//! [[host]]
//! id = "gw-0"
//! cpu_millis = 4000
//! memory_mb = 4096
//! labels = ["gateway"]
//! coord = [0.0, 0.0, 0.5]      # Vivaldi x, y, height, in ms
//!
//! [[link]]
//! a = "gw-0"
//! b = "srv-0"
//! rtt_ms = 2.5
//! bandwidth_mbps = 1000
//! ```
//!
//! A host's free resources default to its totals; a link's bandwidth defaults to the smaller of its
//! ends' uplinks. Every refusal names the file, the line and the field.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::Path;

use brume_placement::{Coord, Host, Link, Network, NetworkError};
use serde::Deserialize;
use toml::Spanned;

use crate::input_error::{InputError, Source};

const DEFAULT_RELIABILITY: f64 = 0.99;
const DEFAULT_WATTS_PER_CORE: f64 = 5.0;
const DEFAULT_COST_PER_CORE_HOUR: f64 = 0.01;
const DEFAULT_BANDWIDTH_MBPS: f64 = 100.0;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNet {
    initiator: Spanned<String>,
    #[serde(default)]
    host: Vec<RawHost>,
    #[serde(default)]
    link: Vec<RawLink>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    id: Spanned<String>,
    cpu_millis: u64,
    memory_mb: u64,
    free_cpu_millis: Option<Spanned<u64>>,
    free_memory_mb: Option<Spanned<u64>>,
    reliability: Option<Spanned<f64>>,
    watts_per_core: Option<Spanned<f64>>,
    cost_per_core_hour: Option<Spanned<f64>>,
    bandwidth_mbps: Option<Spanned<f64>>,
    #[serde(default)]
    labels: BTreeSet<String>,
    coord: Option<Spanned<[f64; 3]>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    a: Spanned<String>,
    b: Spanned<String>,
    rtt_ms: Spanned<f64>,
    bandwidth_mbps: Option<Spanned<f64>>,
}

/// Reads and checks the network file at `path`.
pub fn load(path: &Path) -> anyhow::Result<Network> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the network file {}: {e} (pass the path of a net.toml, e.g. examples/networks/edge-lab.toml)",
            path.display()
        )
    })?;
    Ok(parse(&path.display().to_string(), &text)?)
}

/// Parses network text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Network, InputError> {
    let src = Source::new(file, text);
    let raw: RawNet = toml::from_str(text).map_err(|e| src.toml(&e))?;
    if raw.host.is_empty() {
        return Err(src.whole(
            "the network has no hosts: add [[host]] tables with id, cpu_millis and memory_mb",
        ));
    }
    let mut hosts: Vec<Host> = Vec::with_capacity(raw.host.len());
    for h in &raw.host {
        let host = host(&src, h)?;
        if hosts.iter().any(|x| x.id == host.id) {
            return Err(src.at(
                h.id.span(),
                "host.id",
                format!(
                    "host \"{}\" is declared twice: host ids must be unique",
                    host.id
                ),
            ));
        }
        hosts.push(host);
    }
    let ids = || {
        let mut s = hosts
            .iter()
            .take(12)
            .map(|h| h.id.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        if hosts.len() > 12 {
            s.push_str(&format!(", and {} more", hosts.len() - 12));
        }
        s
    };
    let initiator = raw.initiator.get_ref();
    if !hosts.iter().any(|h| &h.id == initiator) {
        return Err(src.at(
            raw.initiator.span(),
            "initiator",
            format!(
                "no host named \"{initiator}\" (hosts: {}): the initiator must be one of the [[host]] ids",
                ids()
            ),
        ));
    }
    let mut links: Vec<(String, String, Link)> = Vec::with_capacity(raw.link.len());
    for l in &raw.link {
        let mut ends = Vec::with_capacity(2);
        for (end, field) in [(&l.a, "link.a"), (&l.b, "link.b")] {
            match hosts.iter().find(|h| &h.id == end.get_ref()) {
                Some(h) => ends.push(h),
                None => {
                    return Err(src.at(
                        end.span(),
                        field,
                        format!("no host named \"{}\" (hosts: {})", end.get_ref(), ids()),
                    ))
                }
            }
        }
        let (a, b) = (ends[0].id.clone(), ends[1].id.clone());
        if a == b {
            return Err(src.at(
                l.b.span(),
                "link.b",
                format!("a link joins two different hosts, but both ends are \"{a}\""),
            ));
        }
        if links
            .iter()
            .any(|(x, y, _)| (x == &a && y == &b) || (x == &b && y == &a))
        {
            return Err(src.at(
                l.b.span(),
                "link.b",
                format!("the link between \"{a}\" and \"{b}\" is declared twice (links are symmetric): keep one"),
            ));
        }
        let rtt_ms = non_negative(&src, &l.rtt_ms, "link.rtt_ms", "milliseconds")?;
        let bandwidth_mbps = match &l.bandwidth_mbps {
            Some(bw) => non_negative(&src, bw, "link.bandwidth_mbps", "Mbit/s")?,
            None => ends[0].bandwidth_mbps.min(ends[1].bandwidth_mbps),
        };
        links.push((
            a,
            b,
            Link {
                rtt_ms,
                bandwidth_mbps,
            },
        ));
    }
    // Everything Network::new refuses was checked above with a line number; this is the backstop.
    Network::new(hosts, initiator, links).map_err(|e: NetworkError| src.whole(e.to_string()))
}

fn host(src: &Source, h: &RawHost) -> Result<Host, InputError> {
    let id = h.id.get_ref();
    if id.trim().is_empty() {
        return Err(src.at(h.id.span(), "host.id", "a host id cannot be empty"));
    }
    let free = |given: &Option<Spanned<u64>>, total: u64, field: &str, total_field: &str| {
        match given {
            None => Ok(total),
            Some(v) if *v.get_ref() <= total => Ok(*v.get_ref()),
            Some(v) => Err(src.at(
                v.span(),
                field,
                format!(
                    "{} is more than the host's {total_field} = {total}: free resources are at most the total",
                    v.get_ref()
                ),
            )),
        }
    };
    let reliability = match &h.reliability {
        None => DEFAULT_RELIABILITY,
        Some(r) if *r.get_ref() > 0.0 && *r.get_ref() <= 1.0 => *r.get_ref(),
        Some(r) => {
            return Err(src.at(
                r.span(),
                "host.reliability",
                "reliability is the probability that the host stays up: use a number in (0, 1], e.g. 0.99",
            ))
        }
    };
    let or = |v: &Option<Spanned<f64>>, field: &str, unit: &str, default: f64| match v {
        None => Ok(default),
        Some(v) => non_negative(src, v, field, unit),
    };
    let coord = match &h.coord {
        None => None,
        Some(c) => {
            let [x, y, height] = *c.get_ref();
            if !(x.is_finite() && y.is_finite() && height.is_finite() && height >= 0.0) {
                return Err(src.at(
                    c.span(),
                    "host.coord",
                    "a coordinate is [x, y, height] in ms, all finite, with height >= 0",
                ));
            }
            Some(Coord { x, y, height })
        }
    };
    Ok(Host {
        id: id.clone(),
        cpu_millis: h.cpu_millis,
        memory_mb: h.memory_mb,
        free_cpu_millis: free(
            &h.free_cpu_millis,
            h.cpu_millis,
            "host.free_cpu_millis",
            "cpu_millis",
        )?,
        free_memory_mb: free(
            &h.free_memory_mb,
            h.memory_mb,
            "host.free_memory_mb",
            "memory_mb",
        )?,
        reliability,
        watts_per_core: or(
            &h.watts_per_core,
            "host.watts_per_core",
            "watts",
            DEFAULT_WATTS_PER_CORE,
        )?,
        cost_per_core_hour: or(
            &h.cost_per_core_hour,
            "host.cost_per_core_hour",
            "currency units",
            DEFAULT_COST_PER_CORE_HOUR,
        )?,
        bandwidth_mbps: or(
            &h.bandwidth_mbps,
            "host.bandwidth_mbps",
            "Mbit/s",
            DEFAULT_BANDWIDTH_MBPS,
        )?,
        labels: h.labels.clone(),
        coord,
    })
}

fn non_negative(
    src: &Source,
    v: &Spanned<f64>,
    field: &str,
    unit: &str,
) -> Result<f64, InputError> {
    let x = *v.get_ref();
    if x.is_finite() && x >= 0.0 {
        Ok(x)
    } else {
        let span: Range<usize> = v.span();
        Err(src.at(
            span,
            field,
            format!("{x} is not a finite number of {unit} >= 0"),
        ))
    }
}

#[cfg(test)]
mod tests;
